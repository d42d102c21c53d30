package token

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// This file holds the claim-set codec of the hot path: every exchange
// decodes one claim set and encodes another. Both handle the plain shape
// that tokens actually have and leave everything else to encoding/json:
//
//   - decodeClaimsFast accepts only what it can decode exactly as
//     UnmarshalJSON's general path would (strings without escapes, no
//     nulls, no repeated names, ...); for anything else it reports false and
//     the general path decides, errors included. FuzzClaimsFastDecode holds
//     the two to the same result.
//   - appendClaims writes the modelled claims directly and leaves the
//     extra claims to encoding/json; FuzzClaimsAppend checks that what it
//     writes decodes to what encoding/json's encoding decodes to.

// claimsDecoder walks one JSON text.
type claimsDecoder struct {
	b []byte
	i int
}

func (d *claimsDecoder) ws() {
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

// peek returns the next byte after white space, or 0 at the end.
func (d *claimsDecoder) peek() byte {
	d.ws()
	if d.i >= len(d.b) {
		return 0
	}
	return d.b[d.i]
}

// eat consumes c (after white space) and reports whether it was there.
func (d *claimsDecoder) eat(c byte) bool {
	if d.peek() != c {
		return false
	}
	d.i++
	return true
}

// rawString returns the bytes of a string without escapes, or ok=false.
// The bytes alias the input.
func (d *claimsDecoder) rawString() ([]byte, bool) {
	if !d.eat('"') {
		return nil, false
	}
	start := d.i
	ascii := true
	for d.i < len(d.b) {
		c := d.b[d.i]
		switch {
		case c == '"':
			s := d.b[start:d.i]
			d.i++
			if !ascii && !utf8.Valid(s) {
				return nil, false // encoding/json would substitute U+FFFD
			}
			return s, true
		case c == '\\' || c < 0x20:
			return nil, false
		case c >= utf8.RuneSelf:
			ascii = false
		}
		d.i++
	}
	return nil, false
}

func (d *claimsDecoder) str() (string, bool) {
	s, ok := d.rawString()
	return string(s), ok
}

// number returns a JSON number as encoding/json decodes it into an any.
func (d *claimsDecoder) number() (float64, bool) {
	d.ws()
	start := d.i
	b := d.b
	i := d.i
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	default:
		return 0, false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return 0, false
		}
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return 0, false
		}
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	}
	f, err := strconv.ParseFloat(string(b[start:i]), 64)
	if err != nil {
		return 0, false
	}
	d.i = i
	return f, true
}

// literal consumes lit when the input continues with it.
func (d *claimsDecoder) literal(lit string) bool {
	if len(d.b)-d.i < len(lit) || string(d.b[d.i:d.i+len(lit)]) != lit {
		return false
	}
	d.i += len(lit)
	return true
}

// skip moves past one value of any kind and returns its bytes. It only
// finds the value's end; the caller has encoding/json decode (and so
// validate) the bytes.
func (d *claimsDecoder) skip() ([]byte, bool) {
	d.ws()
	start := d.i
	depth := 0
	for d.i < len(d.b) {
		c := d.b[d.i]
		switch c {
		case '"':
			d.i++
			for d.i < len(d.b) && d.b[d.i] != '"' {
				if d.b[d.i] == '\\' {
					d.i++
				}
				d.i++
			}
			if d.i >= len(d.b) {
				return nil, false
			}
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 {
				return d.b[start:d.i], d.i > start
			}
			depth--
		case ',':
			if depth == 0 {
				return d.b[start:d.i], d.i > start
			}
		}
		d.i++
	}
	if depth != 0 {
		return nil, false
	}
	return d.b[start:d.i], d.i > start
}

// members calls fn for each member of an object, after its name and colon;
// fn decodes the value. It stops at the first false.
func (d *claimsDecoder) members(fn func(name []byte) bool) bool {
	if !d.eat('{') {
		return false
	}
	if d.eat('}') {
		return true
	}
	for {
		name, ok := d.rawString()
		if !ok || !d.eat(':') || !fn(name) {
			return false
		}
		if d.eat('}') {
			return true
		}
		if !d.eat(',') {
			return false
		}
	}
}

func (d *claimsDecoder) date() (time.Time, bool) {
	f, ok := d.number()
	if !ok {
		return time.Time{}, false
	}
	t, err := claimDate("", f)
	return t, err == nil
}

// actor decodes an act or may_act chain whose objects have only sub, iss
// and act members, each once.
func (d *claimsDecoder) actor() (*Actor, bool) {
	a := &Actor{}
	var seen uint8
	ok := d.members(func(name []byte) bool {
		var bit uint8
		var ok bool
		switch string(name) {
		case "sub":
			bit = 1
			a.Subject, ok = d.str()
		case "iss":
			bit = 2
			a.Issuer, ok = d.str()
		case "act":
			bit = 4
			a.Actor, ok = d.actor()
		}
		if !ok || seen&bit != 0 {
			return false
		}
		seen |= bit
		return true
	})
	return a, ok && a.Subject != ""
}

// Bits of decodeClaimsFast's record of the claim names it has seen.
const (
	seenIss = 1 << iota
	seenSub
	seenAud
	seenExp
	seenNbf
	seenIat
	seenJti
	seenClientID
	seenScope
	seenAct
	seenMayAct
	seenCnf
	seenSid
)

// decodeClaimsFast decodes b into c when b has the plain shape of a token's
// claim set, and reports false (leaving c in any state) otherwise.
func decodeClaimsFast(b []byte, c *Claims) bool {
	d := &claimsDecoder{b: b}
	var seen uint16
	ok := d.members(func(name []byte) bool {
		var bit uint16
		var ok bool
		switch string(name) {
		case "iss":
			bit = seenIss
			c.Issuer, ok = d.str()
		case "sub":
			bit = seenSub
			c.Subject, ok = d.str()
		case "jti":
			bit = seenJti
			c.ID, ok = d.str()
		case "client_id":
			bit = seenClientID
			c.ClientID, ok = d.str()
		case "scope":
			bit = seenScope
			c.Scope, ok = d.str()
		case "sid":
			bit = seenSid
			c.SessionID, ok = d.str()
		case "exp":
			bit = seenExp
			c.Expiry, ok = d.date()
		case "nbf":
			bit = seenNbf
			c.NotBefore, ok = d.date()
		case "iat":
			bit = seenIat
			c.IssuedAt, ok = d.date()
		case "act":
			bit = seenAct
			c.Act, ok = d.actor()
		case "may_act":
			bit = seenMayAct
			c.MayAct, ok = d.actor()
		case "aud":
			bit = seenAud
			c.Audience, ok = d.audience()
		case "cnf":
			bit = seenCnf
			c.Cnf, ok = d.cnf()
		default:
			return d.extra(c, string(name))
		}
		if !ok || seen&bit != 0 {
			return false
		}
		seen |= bit
		return true
	})
	d.ws()
	return ok && d.i == len(d.b)
}

func (d *claimsDecoder) audience() ([]string, bool) {
	if d.peek() != '[' {
		s, ok := d.str()
		return []string{s}, ok
	}
	d.i++
	out := []string{}
	if d.eat(']') {
		return out, true
	}
	for {
		s, ok := d.str()
		if !ok {
			return nil, false
		}
		out = append(out, s)
		if d.eat(']') {
			return out, true
		}
		if !d.eat(',') {
			return nil, false
		}
	}
}

// cnf decodes a confirmation with only an x5t#S256 member.
func (d *claimsDecoder) cnf() (*Confirmation, bool) {
	cnf := &Confirmation{}
	n := 0
	ok := d.members(func(name []byte) bool {
		n++
		if string(name) != "x5t#S256" || n > 1 {
			return false
		}
		var ok bool
		cnf.X5tS256, ok = d.str()
		return ok
	})
	return cnf, ok
}

// extra decodes a claim Claims does not model, with encoding/json.
func (d *claimsDecoder) extra(c *Claims, name string) bool {
	if _, dup := c.Extra[name]; dup {
		return false
	}
	var v any
	switch d.peek() {
	case '"':
		s, ok := d.str()
		if !ok {
			return false
		}
		v = s
	case 't', 'f':
		switch {
		case d.literal("true"):
			v = true
		case d.literal("false"):
			v = false
		default:
			return false
		}
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		f, ok := d.number()
		if !ok {
			return false
		}
		v = f
	default:
		raw, ok := d.skip()
		if !ok {
			return false
		}
		if err := json.Unmarshal(raw, &v); err != nil || v == nil {
			return false
		}
	}
	if c.Extra == nil {
		c.Extra = make(map[string]any, 4)
	}
	c.Extra[name] = v
	return true
}

// appendClaims appends the JSON claim set of c: the modelled claims in a
// fixed order, then the extra ones (never overriding a modelled one) in
// encoding/json's order.
func appendClaims(dst []byte, c *Claims) ([]byte, error) {
	dst = append(dst, '{')
	first := true
	name := func(n string) {
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = append(dst, '"')
		dst = append(dst, n...)
		dst = append(dst, '"', ':')
	}
	str := func(n, v string) {
		if v != "" {
			name(n)
			dst = appendJSONString(dst, v)
		}
	}
	date := func(n string, t time.Time) {
		if u := unix(t); u != 0 {
			name(n)
			dst = strconv.AppendInt(dst, u, 10)
		}
	}
	str("iss", c.Issuer)
	str("sub", c.Subject)
	switch len(c.Audience) {
	case 0:
	case 1:
		name("aud")
		dst = appendJSONString(dst, c.Audience[0])
	default:
		name("aud")
		for i, a := range c.Audience {
			if i == 0 {
				dst = append(dst, '[')
			} else {
				dst = append(dst, ',')
			}
			dst = appendJSONString(dst, a)
		}
		dst = append(dst, ']')
	}
	date("exp", c.Expiry)
	date("nbf", c.NotBefore)
	date("iat", c.IssuedAt)
	str("jti", c.ID)
	str("client_id", c.ClientID)
	str("scope", c.Scope)
	var err error
	if c.Act != nil {
		name("act")
		if dst, err = appendActor(dst, c.Act); err != nil {
			return nil, err
		}
	}
	if c.MayAct != nil {
		name("may_act")
		if dst, err = appendActor(dst, c.MayAct); err != nil {
			return nil, err
		}
	}
	if c.Cnf != nil {
		name("cnf")
		if c.Cnf.X5tS256 == "" {
			dst = append(dst, '{', '}')
		} else {
			dst = append(dst, `{"x5t#S256":`...)
			dst = appendJSONString(dst, c.Cnf.X5tS256)
			dst = append(dst, '}')
		}
	}
	str("sid", c.SessionID)
	n := 0
	for k := range c.Extra {
		if !knownClaims[k] {
			n++
		}
	}
	if n == 0 {
		return append(dst, '}'), nil
	}
	names := make([]string, 0, n)
	for k := range c.Extra {
		if !knownClaims[k] {
			names = append(names, k)
		}
	}
	slices.Sort(names) // encoding/json's order for map keys
	for _, k := range names {
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = appendJSONString(dst, k)
		dst = append(dst, ':')
		switch v := c.Extra[k].(type) {
		case string:
			dst = appendJSONString(dst, v)
		case bool:
			dst = strconv.AppendBool(dst, v)
		default:
			b, err := json.Marshal(v)
			if err != nil {
				return nil, err
			}
			dst = append(dst, b...)
		}
	}
	return append(dst, '}'), nil
}

// appendActor writes an actor chain as encoding/json did for Actor. A
// chain deeper than a claim set may nest (or a cycle) is an error.
func appendActor(dst []byte, a *Actor) ([]byte, error) {
	depth := 0
	for cur := a; cur != nil; cur = cur.Actor {
		if depth == maxJSONDepth {
			return nil, fmt.Errorf("actor chain deeper than %d", maxJSONDepth)
		}
		dst = append(dst, `{"sub":`...)
		dst = appendJSONString(dst, cur.Subject)
		if cur.Issuer != "" {
			dst = append(dst, `,"iss":`...)
			dst = appendJSONString(dst, cur.Issuer)
		}
		if cur.Actor != nil {
			dst = append(dst, `,"act":`...)
		}
		depth++
	}
	for ; depth > 0; depth-- {
		dst = append(dst, '}')
	}
	return dst, nil
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string: quotes, backslashes and
// control characters escaped (\n, \r, \t, else \u00XX), U+2028 and U+2029
// escaped, invalid UTF-8 replaced by U+FFFD. Unlike encoding/json it does
// not escape <, > and & (a token is not HTML), so claims holding them still
// take the fast decoder. Decoded, the result equals encoding/json's.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
