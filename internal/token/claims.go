package token

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// Registered and Postern claim names that Claims models as fields. Every
// other claim lands in Claims.Extra.
var knownClaims = map[string]bool{
	"iss": true, "sub": true, "aud": true, "exp": true, "nbf": true, "iat": true,
	"jti": true, "client_id": true, "scope": true, "act": true, "may_act": true,
	"cnf": true, "sid": true,
}

// IsRegistered reports whether name is a claim that Claims models as a field
// (and that therefore can never be carried over as a user claim).
func IsRegistered(name string) bool { return knownClaims[name] }

// Actor is one party in a delegation chain (RFC 8693 §4.1 "act", §4.4
// "may_act"). Actor.Actor is the party that acted before it.
type Actor struct {
	Subject string `json:"sub"`
	Issuer  string `json:"iss,omitempty"`
	Actor   *Actor `json:"act,omitempty"`
}

// Chain returns the subjects of the actor chain starting at a, newest first.
// A nil chain returns nil.
func (a *Actor) Chain() []string {
	var out []string
	for cur := a; cur != nil; cur = cur.Actor {
		out = append(out, cur.Subject)
	}
	return out
}

// Depth returns the number of actors in the chain starting at a.
func (a *Actor) Depth() int {
	n := 0
	for cur := a; cur != nil; cur = cur.Actor {
		n++
	}
	return n
}

// Confirmation is the "cnf" claim (RFC 7800). Postern binds tokens to the
// caller's certificate with the RFC 8705 §3 SHA-256 thumbprint.
type Confirmation struct {
	X5tS256 string `json:"x5t#S256,omitempty"`
}

// Claims is the claim set of a JWT as Postern understands it.
type Claims struct {
	Issuer    string
	Subject   string
	Audience  []string
	Expiry    time.Time
	NotBefore time.Time
	IssuedAt  time.Time
	ID        string        // jti
	ClientID  string        // client_id (RFC 9068)
	Scope     string        // space-separated scopes
	Act       *Actor        // the current actor and, nested, earlier ones
	MayAct    *Actor        // who may act for the subject (RFC 8693 §4.4)
	Cnf       *Confirmation // certificate binding
	SessionID string        // sid: id of the first token of this delegation chain
	// Extra holds every other claim, as decoded by encoding/json.
	Extra map[string]any

	// cnfOther is set when the decoded cnf claim had confirmation members
	// other than x5t#S256 (such as a DPoP "jkt"): a binding Postern cannot
	// check, so CheckBinding refuses the token.
	cnfOther bool
}

// clone returns a copy of c that shares no memory with it.
func (c *Claims) clone() *Claims {
	cp := *c
	cp.Audience = slices.Clone(c.Audience)
	cp.Act, cp.MayAct = c.Act.clone(), c.MayAct.clone()
	if c.Cnf != nil {
		cnf := *c.Cnf
		cp.Cnf = &cnf
	}
	if c.Extra != nil {
		cp.Extra = make(map[string]any, len(c.Extra))
		for k, v := range c.Extra {
			cp.Extra[k] = cloneJSON(v)
		}
	}
	return &cp
}

// clone copies an actor chain.
func (a *Actor) clone() *Actor {
	if a == nil {
		return nil
	}
	cp := *a
	cp.Actor = a.Actor.clone()
	return &cp
}

// cloneJSON copies a value decoded by encoding/json (maps and slices deep;
// the rest are immutable).
func cloneJSON(v any) any {
	switch v := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			out[k] = cloneJSON(e)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = cloneJSON(e)
		}
		return out
	}
	return v
}

// Scopes returns the space-separated scope claim as a slice.
func (c *Claims) Scopes() []string { return strings.Fields(c.Scope) }

// HasAudience reports whether aud is one of the token's audiences.
func (c *Claims) HasAudience(aud string) bool {
	for _, a := range c.Audience {
		if a == aud {
			return true
		}
	}
	return false
}

// Map returns every claim as a map of JSON-compatible values, the form policy
// conditions see.
func (c *Claims) Map() map[string]any {
	m := make(map[string]any, len(c.Extra)+13)
	for k, v := range c.Extra {
		if !knownClaims[k] {
			m[k] = v
		}
	}
	put := func(k, v string) {
		if v != "" {
			m[k] = v
		}
	}
	date := func(k string, t time.Time) {
		if !t.IsZero() {
			m[k] = float64(t.Unix())
		}
	}
	put("iss", c.Issuer)
	put("sub", c.Subject)
	put("jti", c.ID)
	put("client_id", c.ClientID)
	put("scope", c.Scope)
	put("sid", c.SessionID)
	date("exp", c.Expiry)
	date("nbf", c.NotBefore)
	date("iat", c.IssuedAt)
	switch len(c.Audience) {
	case 0:
	case 1:
		m["aud"] = c.Audience[0]
	default:
		aud := make([]any, len(c.Audience))
		for i, a := range c.Audience {
			aud[i] = a
		}
		m["aud"] = aud
	}
	if c.Act != nil {
		m["act"] = c.Act.toMap()
	}
	if c.MayAct != nil {
		m["may_act"] = c.MayAct.toMap()
	}
	if c.Cnf != nil {
		cnf := map[string]any{}
		if c.Cnf.X5tS256 != "" {
			cnf["x5t#S256"] = c.Cnf.X5tS256
		}
		m["cnf"] = cnf
	}
	return m
}

func (a *Actor) toMap() map[string]any {
	m := map[string]any{"sub": a.Subject}
	if a.Issuer != "" {
		m["iss"] = a.Issuer
	}
	if a.Actor != nil {
		m["act"] = a.Actor.toMap()
	}
	return m
}

type wireClaims struct {
	Issuer    string        `json:"iss,omitempty"`
	Subject   string        `json:"sub,omitempty"`
	Audience  any           `json:"aud,omitempty"`
	Expiry    int64         `json:"exp,omitempty"`
	NotBefore int64         `json:"nbf,omitempty"`
	IssuedAt  int64         `json:"iat,omitempty"`
	ID        string        `json:"jti,omitempty"`
	ClientID  string        `json:"client_id,omitempty"`
	Scope     string        `json:"scope,omitempty"`
	Act       *Actor        `json:"act,omitempty"`
	MayAct    *Actor        `json:"may_act,omitempty"`
	Cnf       *Confirmation `json:"cnf,omitempty"`
	SessionID string        `json:"sid,omitempty"`
}

func unix(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

// MarshalJSON encodes the claims as a JWT claim set. A single audience is
// encoded as a string, several as an array. Extra claims never override the
// modelled ones.
func (c *Claims) MarshalJSON() ([]byte, error) {
	b, err := appendClaims(make([]byte, 0, 512), c)
	if err != nil {
		return nil, fmt.Errorf("token: encode claims: %w", err)
	}
	return b, nil
}

// marshalGeneric is the encoding/json form of MarshalJSON, kept as the
// reference the fast encoder is tested against.
func (c *Claims) marshalGeneric() ([]byte, error) {
	w := wireClaims{
		Issuer: c.Issuer, Subject: c.Subject,
		Expiry: unix(c.Expiry), NotBefore: unix(c.NotBefore), IssuedAt: unix(c.IssuedAt),
		ID: c.ID, ClientID: c.ClientID, Scope: c.Scope,
		Act: c.Act, MayAct: c.MayAct, Cnf: c.Cnf, SessionID: c.SessionID,
	}
	switch len(c.Audience) {
	case 0:
	case 1:
		w.Audience = c.Audience[0]
	default:
		w.Audience = c.Audience
	}
	known, err := json.Marshal(&w)
	if err != nil {
		return nil, err
	}
	extra := make(map[string]any, len(c.Extra))
	for k, v := range c.Extra {
		if !knownClaims[k] {
			extra[k] = v
		}
	}
	if len(extra) == 0 {
		return known, nil
	}
	eb, err := json.Marshal(extra)
	if err != nil {
		return nil, fmt.Errorf("token: encode claims: %w", err)
	}
	if len(known) == 2 { // "{}"
		return eb, nil
	}
	out := make([]byte, 0, len(known)+len(eb))
	out = append(out, known[:len(known)-1]...)
	out = append(out, ',')
	out = append(out, eb[1:]...)
	return out, nil
}

// maxJSONDepth bounds the nesting of a claim set; act chains are capped far
// below it by the token service.
const maxJSONDepth = 32

// UnmarshalJSON decodes a JWT claim set strictly: registered claims must have
// their registered types, and nesting is bounded.
func (c *Claims) UnmarshalJSON(b []byte) error {
	if err := checkDepth(b, maxJSONDepth); err != nil {
		return err
	}
	var fast Claims
	if decodeClaimsFast(b, &fast) {
		*c = fast
		return nil
	}
	return c.unmarshalGeneric(b)
}

// repeatedMember reports a member name that appears twice in the JSON
// object b (top level only; b is known to be a valid object).
func repeatedMember(b []byte) (string, bool) {
	dec := json.NewDecoder(bytes.NewReader(b))
	if _, err := dec.Token(); err != nil { // {
		return "", false
	}
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return "", false
		}
		name, _ := t.(string)
		if seen[name] {
			return name, true
		}
		seen[name] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return "", false
		}
	}
	return "", false
}

func clipName(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// unmarshalGeneric is UnmarshalJSON for every input, through encoding/json.
func (c *Claims) unmarshalGeneric(b []byte) error {
	// One pass into generic values, then strict conversion of the
	// registered claims: decoding each claim again would parse the payload
	// twice on the hot path of every exchange.
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil || raw == nil {
		return fmt.Errorf("claims are not a JSON object")
	}
	// RFC 7519 §4: claim names are unique. encoding/json keeps the last of
	// repeated names where other parsers keep the first, so two parsers
	// could read a different exp or aud from the same token: refused.
	if name, dup := repeatedMember(b); dup {
		return fmt.Errorf("claim %q appears more than once", clipName(name))
	}
	*c = Claims{}
	for k, v := range raw {
		if !knownClaims[k] {
			if c.Extra == nil {
				c.Extra = make(map[string]any, len(raw))
			}
			c.Extra[k] = v
			continue
		}
		if v == nil {
			return fmt.Errorf("claim %q is null", k)
		}
		var err error
		switch k {
		case "iss":
			c.Issuer, err = claimString(k, v)
		case "sub":
			c.Subject, err = claimString(k, v)
		case "jti":
			c.ID, err = claimString(k, v)
		case "client_id":
			c.ClientID, err = claimString(k, v)
		case "scope":
			c.Scope, err = claimString(k, v)
		case "sid":
			c.SessionID, err = claimString(k, v)
		case "exp":
			c.Expiry, err = claimDate(k, v)
		case "nbf":
			c.NotBefore, err = claimDate(k, v)
		case "iat":
			c.IssuedAt, err = claimDate(k, v)
		case "act":
			c.Act, err = claimActor(k, v)
		case "may_act":
			c.MayAct, err = claimActor(k, v)
		case "aud":
			c.Audience, err = claimAudience(v)
		case "cnf":
			m, ok := v.(map[string]any)
			if !ok {
				return errors.New(`claim "cnf" must be an object`)
			}
			c.Cnf = &Confirmation{}
			for name, mv := range m {
				if name != "x5t#S256" {
					c.cnfOther = true
					continue
				}
				tp, ok := mv.(string)
				if !ok {
					return errors.New(`claim "cnf" must be an object`)
				}
				c.Cnf.X5tS256 = tp
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func claimString(name string, v any) (string, error) {
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("claim %q must be a string", name)
	}
	return s, nil
}

func claimDate(name string, v any) (time.Time, error) {
	f, ok := v.(float64)
	if !ok || math.IsNaN(f) || f < 0 || f > 1e11 {
		return time.Time{}, fmt.Errorf("claim %q must be a NumericDate", name)
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)).UTC(), nil
}

func claimAudience(v any) ([]string, error) {
	switch a := v.(type) {
	case string:
		return []string{a}, nil
	case []any:
		out := make([]string, len(a))
		for i, x := range a {
			s, ok := x.(string)
			if !ok {
				return nil, errors.New(`claim "aud" must be a string or an array of strings`)
			}
			out[i] = s
		}
		return out, nil
	}
	return nil, errors.New(`claim "aud" must be a string or an array of strings`)
}

// claimActor converts a decoded act or may_act object. Members other than
// sub, iss and act are ignored (RFC 8693 §4.1 lets them be); every actor
// in the chain needs a sub.
func claimActor(name string, v any) (*Actor, error) {
	var head *Actor
	next := &head
	for v != nil {
		m, ok := v.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("claim %q must be an actor object", name)
		}
		a := &Actor{}
		if sub, ok := m["sub"]; ok {
			if a.Subject, ok = sub.(string); !ok {
				return nil, fmt.Errorf("claim %q must be an actor object", name)
			}
		}
		if iss, ok := m["iss"]; ok {
			if a.Issuer, ok = iss.(string); !ok {
				return nil, fmt.Errorf("claim %q must be an actor object", name)
			}
		}
		if a.Subject == "" {
			return nil, fmt.Errorf("claim %q has an actor without \"sub\"", name)
		}
		*next = a
		next = &a.Actor
		v = m["act"]
	}
	return head, nil
}

// checkDepth returns an error when the JSON in b nests deeper than max.
// It does not validate the JSON; the decoder does that.
func checkDepth(b []byte, max int) error {
	depth := 0
	inString, escaped := false, false
	for _, ch := range b {
		if inString {
			switch {
			case escaped:
				escaped = false
			case ch == '\\':
				escaped = true
			case ch == '"':
				inString = false
			}
			continue
		}
		switch ch {
		case '"':
			inString = true
		case '{', '[':
			depth++
			if depth > max {
				return fmt.Errorf("claims nest deeper than %d levels", max)
			}
		case '}', ']':
			depth--
		}
	}
	return nil
}

// decodeClaims decodes a verified payload.
func decodeClaims(payload []byte) (*Claims, error) {
	// UnmarshalJSON directly: through json.Unmarshal the payload would be
	// scanned once for validity and then decoded again inside it.
	var c Claims
	// Only JSON's own whitespace: bytes.TrimSpace would also take \v, \f
	// and Unicode spaces, which make the payload something other than a
	// JSON object.
	if err := c.UnmarshalJSON(bytes.Trim(payload, " \t\r\n")); err != nil {
		return nil, err
	}
	return &c, nil
}
