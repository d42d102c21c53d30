package policy

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/cel-go/cel"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// CompileOptions are the deployment facts a policy set is compiled against.
// The zero value is valid.
type CompileOptions struct {
	// SelfIssuer is the STS's own issuer, what "self" means in an
	// ExchangePolicy's subjectIssuers. When empty, "self" matches nothing.
	SelfIssuer string
	// TrustDomain, when set, is the trust domain every Workload must belong to.
	TrustDomain string
}

// Engine is a compiled policy set. It is immutable after Compile and safe for
// concurrent use; replace it as a whole (see Watcher) to change policies.
type Engine struct {
	opts CompileOptions

	workloads   []Workload
	bySPIFFEID  map[string]int
	byAudience  map[string]int
	issuers     []TrustedIssuer
	byIssuer    map[string]int
	federations []Federation
	authzCount  int
	exchangeCnt int

	// Authorization: every policy by action (enforced and dry-run, name
	// order), and the per-workload index of those that select it.
	deny, audit, allow []*cpolicy
	index              map[string]*selection
	all                *selection // every policy, for the slow path

	// Exchange: DENY policies then ALLOW policies, each in name order.
	exchDeny, exchAllow []*cexch

	idPrefix [8]byte
	idSeq    atomic.Uint64
}

// selection is the precomputed list of policies selecting one workload.
type selection struct {
	deny, audit, allow []*cpolicy
	enforcedAllow      int
	dryRun             int
}

// DecisionID identifies one decision in audit lines, 403 bodies and
// `postern policy explain`. It is a random 64-bit prefix chosen per Engine
// followed by a 64-bit sequence number, so producing one costs an atomic add
// and no allocation; String formats it as 32 hex digits only when needed.
// It is a correlation id, not a secret.
type DecisionID [16]byte

// String returns the id as 32 lowercase hex digits.
func (id DecisionID) String() string { return hex.EncodeToString(id[:]) }

// MarshalText implements encoding.TextMarshaler (used by slog and JSON).
func (id DecisionID) MarshalText() ([]byte, error) {
	b := make([]byte, 32)
	hex.Encode(b, id[:])
	return b, nil
}

// IsZero reports whether id was never set.
func (id DecisionID) IsZero() bool { return id == DecisionID{} }

func (e *Engine) newID() DecisionID {
	var id DecisionID
	copy(id[:8], e.idPrefix[:])
	n := e.idSeq.Add(1)
	for i := 15; i >= 8; i-- {
		id[i] = byte(n)
		n >>= 8
	}
	return id
}

// Workloads returns the known workloads in name order.
func (e *Engine) Workloads() []Workload { return slices.Clone(e.workloads) }

// WorkloadBySPIFFEID finds a workload by its SPIFFE ID.
func (e *Engine) WorkloadBySPIFFEID(id string) (*Workload, bool) {
	i, ok := e.bySPIFFEID[id]
	if !ok {
		return nil, false
	}
	w := e.workloads[i]
	return &w, true
}

// WorkloadByAudience finds a workload by the audience of its tokens.
func (e *Engine) WorkloadByAudience(aud string) (*Workload, bool) {
	i, ok := e.byAudience[aud]
	if !ok {
		return nil, false
	}
	w := e.workloads[i]
	return &w, true
}

// TrustedIssuers returns the trusted external issuers in name order.
func (e *Engine) TrustedIssuers() []TrustedIssuer { return slices.Clone(e.issuers) }

// TrustedIssuer finds a trusted issuer by its exact iss value.
func (e *Engine) TrustedIssuer(iss string) (*TrustedIssuer, bool) {
	i, ok := e.byIssuer[iss]
	if !ok {
		return nil, false
	}
	t := e.issuers[i]
	return &t, true
}

// Federations returns the federated trust domains in name order. Their
// bundles and certificates are shared: do not modify them.
func (e *Engine) Federations() []Federation { return slices.Clone(e.federations) }

// Stats describes the size of the compiled set.
type Stats struct {
	Workloads, TrustedIssuers, ExchangePolicies, AuthorizationPolicies, Federations int
}

// Stats returns the number of resources of each kind.
func (e *Engine) Stats() Stats {
	return Stats{len(e.workloads), len(e.issuers), e.exchangeCnt, e.authzCount, len(e.federations)}
}

// reportFn receives a problem at a field path such as
// "spec.rules[0].from[1].source.principals[2]".
type reportFn func(path, msg string)

// Compile checks the cross-resource constraints of set and builds an Engine.
// The error, when not nil, is a Problems value.
func Compile(set *Set, opts CompileOptions) (*Engine, error) {
	envs, err := newCELEnvs()
	if err != nil {
		return nil, err
	}
	e, probs := compile(set, opts, envs)
	if len(probs) > 0 {
		return nil, probs.sorted()
	}
	return e, nil
}

func compile(set *Set, opts CompileOptions, envs *celEnvs) (*Engine, Problems) {
	var probs Problems
	at := func(o Origin) reportFn {
		return func(path, msg string) {
			probs = append(probs, Problem{File: o.File, Line: o.Line, Message: msg})
		}
	}
	e := &Engine{
		opts:       opts,
		bySPIFFEID: map[string]int{},
		byAudience: map[string]int{},
		byIssuer:   map[string]int{},
		index:      map[string]*selection{},
	}
	if _, err := rand.Read(e.idPrefix[:]); err != nil {
		return nil, Problems{{File: "", Message: "cannot read randomness: " + err.Error()}}
	}
	var td spiffeid.TrustDomain
	if opts.TrustDomain != "" {
		var err error
		if td, err = spiffeid.TrustDomainFromString(opts.TrustDomain); err != nil {
			return nil, Problems{{Message: fmt.Sprintf("invalid trust domain %q: %v", opts.TrustDomain, err)}}
		}
	}

	e.workloads = slices.Clone(set.Workloads)
	slices.SortFunc(e.workloads, func(a, b Workload) int { return strings.Compare(a.Name, b.Name) })
	for i, w := range e.workloads {
		rep := at(w.Origin)
		if j, dup := e.bySPIFFEID[w.SPIFFEID]; dup {
			rep("spec.spiffeID", fmt.Sprintf("Workload %q has the same spiffeID as Workload %q", w.Name, e.workloads[j].Name))
		} else {
			e.bySPIFFEID[w.SPIFFEID] = i
		}
		aud := w.Audience
		if aud == "" {
			aud = w.SPIFFEID
		}
		if j, dup := e.byAudience[aud]; dup {
			rep("spec.audience", fmt.Sprintf("Workload %q has the same audience %q as Workload %q", w.Name, aud, e.workloads[j].Name))
		} else {
			e.byAudience[aud] = i
		}
		if !td.IsZero() {
			id, err := spiffeid.FromString(w.SPIFFEID)
			if err == nil && id.TrustDomain() != td {
				rep("spec.spiffeID", fmt.Sprintf("spiffeID %q is not in trust domain %q", w.SPIFFEID, td.Name()))
			}
		}
	}
	e.issuers = slices.Clone(set.TrustedIssuers)
	slices.SortFunc(e.issuers, func(a, b TrustedIssuer) int { return strings.Compare(a.Name, b.Name) })
	for i, t := range e.issuers {
		if j, dup := e.byIssuer[t.Issuer]; dup {
			at(t.Origin)("spec.issuer", fmt.Sprintf("TrustedIssuer %q has the same issuer as TrustedIssuer %q", t.Name, e.issuers[j].Name))
			continue
		}
		e.byIssuer[t.Issuer] = i
	}
	// An opaque token says nothing about its issuer: with several issuers
	// to ask, each needs a prefix that picks out its own tokens, or every
	// IdP would be shown every other IdP's live tokens.
	var introspecting []TrustedIssuer
	for _, t := range e.issuers {
		if t.Introspection != nil {
			introspecting = append(introspecting, t)
		}
	}
	if len(introspecting) > 1 {
		for i, t := range introspecting {
			p := t.Introspection.TokenPrefix
			if p == "" {
				at(t.Origin)("spec.introspection", fmt.Sprintf("introspection.tokenPrefix: required when more than one TrustedIssuer introspects (%d do), so that each opaque token goes to its own issuer only", len(introspecting)))
				continue
			}
			for _, o := range introspecting[:i] {
				if q := o.Introspection.TokenPrefix; q != "" && (strings.HasPrefix(p, q) || strings.HasPrefix(q, p)) {
					at(t.Origin)("spec.introspection", fmt.Sprintf("introspection.tokenPrefix %q overlaps TrustedIssuer %q's %q", p, o.Name, q))
				}
			}
		}
	}

	e.federations = slices.Clone(set.Federations)
	slices.SortFunc(e.federations, func(a, b Federation) int { return strings.Compare(a.Name, b.Name) })
	byTD := map[spiffeid.TrustDomain]string{}
	for _, f := range e.federations {
		rep := at(f.Origin)
		if !td.IsZero() && f.TrustDomain == td {
			rep("spec.trustDomain", fmt.Sprintf("Federation %q names our own trust domain %q", f.Name, td.Name()))
		}
		if other, dup := byTD[f.TrustDomain]; dup {
			rep("spec.trustDomain", fmt.Sprintf("Federation %q has the same trustDomain %q as Federation %q", f.Name, f.TrustDomain.Name(), other))
			continue
		}
		byTD[f.TrustDomain] = f.Name
	}

	// Exchange policies.
	eps := slices.Clone(set.ExchangePolicies)
	slices.SortFunc(eps, func(a, b ExchangePolicy) int { return strings.Compare(a.Name, b.Name) })
	for i := range eps {
		p := &eps[i]
		rep := at(p.Origin)
		cp := compileExchange(p, envs, rep)
		for _, iss := range p.SubjectIssuers {
			if iss == "self" {
				continue
			}
			if _, ok := e.byIssuer[iss]; !ok {
				rep("spec.subjectIssuers", fmt.Sprintf("subjectIssuers: %q is neither \"self\" nor the issuer of a TrustedIssuer", iss))
			}
		}
		if cp == nil {
			continue
		}
		cp.issuers = cp.issuers[:0]
		for _, iss := range p.SubjectIssuers {
			if iss == "self" {
				if opts.SelfIssuer == "" {
					continue // "self" matches nothing without a SelfIssuer
				}
				iss = opts.SelfIssuer
			}
			cp.issuers = append(cp.issuers, iss)
		}
		e.exchangeCnt++
		if cp.deny {
			e.exchDeny = append(e.exchDeny, cp)
		} else {
			e.exchAllow = append(e.exchAllow, cp)
		}
	}

	// Authorization policies.
	aps := slices.Clone(set.AuthorizationPolicies)
	slices.SortFunc(aps, func(a, b AuthorizationPolicy) int { return strings.Compare(a.Name, b.Name) })
	for i := range aps {
		cp := compileAuthz(&aps[i], envs, at(aps[i].Origin))
		if cp == nil {
			continue
		}
		e.authzCount++
		switch cp.action {
		case actDeny:
			e.deny = append(e.deny, cp)
		case actAudit:
			e.audit = append(e.audit, cp)
		default:
			e.allow = append(e.allow, cp)
		}
	}
	e.all = &selection{deny: e.deny, audit: e.audit, allow: e.allow}
	for _, w := range e.workloads {
		if _, done := e.index[w.SPIFFEID]; done {
			continue
		}
		e.index[w.SPIFFEID] = e.selectFor(w.SPIFFEID, w.Labels)
	}
	return e, probs
}

// selectFor computes the policies selecting a workload.
func (e *Engine) selectFor(id string, labels map[string]string) *selection {
	s := &selection{}
	pick := func(ps []*cpolicy) []*cpolicy {
		var out []*cpolicy
		for _, p := range ps {
			if p.selects(id, labels) {
				out = append(out, p)
				if p.dryRun {
					s.dryRun++
				}
			}
		}
		return out
	}
	s.deny = pick(e.deny)
	s.audit = pick(e.audit)
	s.allow = pick(e.allow)
	for _, p := range s.allow {
		if !p.dryRun {
			s.enforcedAllow++
		}
	}
	return s
}

type action uint8

const (
	actAllow action = iota
	actDeny
	actAudit
)

func (a action) String() string {
	switch a {
	case actDeny:
		return ActionDeny
	case actAudit:
		return ActionAudit
	}
	return ActionAllow
}

// cpolicy is a compiled AuthorizationPolicy.
type cpolicy struct {
	name      string
	action    action
	dryRun    bool
	selAll    bool
	selLabels map[string]string
	selIDs    []matcher
	rules     []crule

	noMatch string // reason/dry-run line when no rule matched
}

func (p *cpolicy) selects(id string, labels map[string]string) bool {
	if p.selAll {
		return true
	}
	if len(p.selIDs) > 0 && !matchAny(p.selIDs, id) {
		return false
	}
	for k, v := range p.selLabels {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

type crule struct {
	from              []csource
	to                []coperation
	when              []ccond
	prg               cel.Program
	cond              string
	allowWithoutToken bool

	matched string // reason: the rule matched
	unknown string // reason: a condition could not be evaluated
	dry     string // dry-run line: the rule matched
}

type csource struct {
	principals, notPrincipals  []matcher
	reqPrincipals, notReqPrinc []matcher
	namespaces, notNamespaces  []matcher
}

type coperation struct {
	methods, notMethods []string
	paths, notPaths     []matcher
	ports, notPorts     []int
	hosts, notHosts     []matcher
}

type condKind uint8

const (
	kClaim condKind = iota
	kPrincipal
	kHeader
	kSourcePrincipal
	kSourceNamespace
	kActorAt
	kActorsAny
)

type ccond struct {
	key       string
	kind      condKind
	claim     []string // claim path
	split     bool     // space-delimited claim (scope, scp)
	header    string
	actor     int
	values    []matcher
	notValues []matcher
}

// parseCondKey parses a `when` key.
func parseCondKey(key string) (ccond, error) {
	c := ccond{key: key}
	switch {
	case key == "request.auth.principal":
		c.kind = kPrincipal
	case key == "request.auth.audiences":
		c.kind, c.claim = kClaim, []string{"aud"}
	case key == "request.auth.presenter":
		c.kind, c.claim = kClaim, []string{"azp"}
	case strings.HasPrefix(key, "request.auth.claims["):
		rest := strings.TrimPrefix(key, "request.auth.claims")
		for rest != "" {
			if rest[0] != '[' {
				return c, fmt.Errorf("invalid claim key %q (want request.auth.claims[name][nested])", key)
			}
			end := strings.IndexByte(rest, ']')
			if end < 2 {
				return c, fmt.Errorf("invalid claim key %q (want request.auth.claims[name][nested])", key)
			}
			c.claim = append(c.claim, rest[1:end])
			rest = rest[end+1:]
		}
		c.kind = kClaim
		c.split = len(c.claim) == 1 && (c.claim[0] == "scope" || c.claim[0] == "scp")
	case strings.HasPrefix(key, "request.headers[") && strings.HasSuffix(key, "]"):
		h := key[len("request.headers[") : len(key)-1]
		if h == "" || strings.ContainsAny(h, "[] ") {
			return c, fmt.Errorf("invalid header key %q", key)
		}
		c.kind, c.header = kHeader, strings.ToLower(h)
	case key == "source.principal":
		c.kind = kSourcePrincipal
	case key == "source.namespace":
		c.kind = kSourceNamespace
	case key == "actors":
		c.kind = kActorsAny
	case strings.HasPrefix(key, "actors[") && strings.HasSuffix(key, "]"):
		n, err := strconv.Atoi(key[len("actors[") : len(key)-1])
		if err != nil || n > 64 || n < -64 {
			return c, fmt.Errorf("invalid actor index in %q (want actors[0] for the immediate previous actor, actors[-1] for the first)", key)
		}
		c.kind, c.actor = kActorAt, n
	default:
		return c, fmt.Errorf("unsupported key %q (supported: request.auth.claims[...], request.auth.principal, request.auth.audiences, request.auth.presenter, request.headers[...], source.principal, source.namespace, actors, actors[N])", key)
	}
	return c, nil
}

func (c *ccond) usesToken() bool {
	return c.kind == kClaim || c.kind == kPrincipal || c.kind == kActorAt || c.kind == kActorsAny
}

func compileMatchers(vals []string, path string, field string, parse func(string) (matcher, error), rep reportFn) []matcher {
	out := make([]matcher, 0, len(vals))
	for i, v := range vals {
		m, err := parse(v)
		if err != nil {
			rep(fmt.Sprintf("%s[%d]", path, i), fmt.Sprintf("%s: %q: %v", field, v, err))
			continue
		}
		out = append(out, m)
	}
	return out
}

// compileAuthz validates and compiles one AuthorizationPolicy; it returns nil
// if anything was reported.
func compileAuthz(p *AuthorizationPolicy, envs *celEnvs, rep reportFn) *cpolicy {
	bad := false
	report := func(path, msg string) { bad = true; rep(path, msg) }
	cp := &cpolicy{name: p.Name}
	switch p.Action {
	case "", ActionAllow:
		cp.action = actAllow
	case ActionDeny:
		cp.action = actDeny
	case ActionAudit:
		cp.action = actAudit
	default:
		report("spec.action", fmt.Sprintf("action: %q is not ALLOW, DENY or AUDIT", p.Action))
	}
	switch p.Mode {
	case "", ModeEnforce:
	case ModeDryRun:
		cp.dryRun = true
	default:
		report("spec.mode", fmt.Sprintf("mode: %q is not Enforce or DryRun", p.Mode))
	}
	if p.Selector == nil {
		cp.selAll = true
	} else {
		if len(p.Selector.MatchLabels) == 0 && len(p.Selector.SPIFFEIDs) == 0 {
			report("spec.selector", "selector: empty selector (omit it to select every workload)")
		}
		for k := range p.Selector.MatchLabels {
			if k == "" {
				report("spec.selector.matchLabels", "selector.matchLabels: empty label name")
			}
		}
		cp.selLabels = maps.Clone(p.Selector.MatchLabels)
		cp.selIDs = compileMatchers(p.Selector.SPIFFEIDs, "spec.selector.spiffeIDs", "selector.spiffeIDs", parseSPIFFEGlob, report)
	}
	kind := cp.action.String()
	mode := ""
	if cp.dryRun {
		mode = " (dry-run)"
	}
	for i := range p.Rules {
		r := &p.Rules[i]
		rp := fmt.Sprintf("spec.rules[%d]", i)
		cr := crule{cond: r.Condition, allowWithoutToken: r.AllowWithoutToken}
		for j, f := range r.From {
			sp := fmt.Sprintf("%s.from[%d].source", rp, j)
			s := f.Source
			if len(s.Principals)+len(s.NotPrincipals)+len(s.RequestPrincipals)+len(s.NotRequestPrincipals)+len(s.Namespaces)+len(s.NotNamespaces) == 0 {
				report(sp, "from.source: at least one field is required")
			}
			cr.from = append(cr.from, csource{
				principals:    compileMatchers(s.Principals, sp+".principals", "principals", parseSPIFFEGlob, report),
				notPrincipals: compileMatchers(s.NotPrincipals, sp+".notPrincipals", "notPrincipals", parseSPIFFEGlob, report),
				reqPrincipals: compileMatchers(s.RequestPrincipals, sp+".requestPrincipals", "requestPrincipals", parseIstio, report),
				notReqPrinc:   compileMatchers(s.NotRequestPrincipals, sp+".notRequestPrincipals", "notRequestPrincipals", parseIstio, report),
				namespaces:    compileMatchers(s.Namespaces, sp+".namespaces", "namespaces", parseIstio, report),
				notNamespaces: compileMatchers(s.NotNamespaces, sp+".notNamespaces", "notNamespaces", parseIstio, report),
			})
			if r.AllowWithoutToken && len(s.RequestPrincipals)+len(s.NotRequestPrincipals) > 0 {
				report(sp, "conflicting fields: requestPrincipals need a token, allowWithoutToken says there is none")
			}
		}
		for j, t := range r.To {
			op := fmt.Sprintf("%s.to[%d].operation", rp, j)
			o := t.Operation
			if len(o.Methods)+len(o.NotMethods)+len(o.Paths)+len(o.NotPaths)+len(o.Ports)+len(o.NotPorts)+len(o.Hosts)+len(o.NotHosts) == 0 {
				report(op, "to.operation: at least one field is required")
			}
			for _, m := range slices.Concat(o.Methods, o.NotMethods) {
				if m == "" || strings.ToUpper(m) != m {
					report(op+".methods", fmt.Sprintf("methods: %q: methods are upper case, like GET", m))
				}
			}
			co := coperation{
				methods: o.Methods, notMethods: o.NotMethods,
				paths:    compileMatchers(o.Paths, op+".paths", "paths", parsePath, report),
				notPaths: compileMatchers(o.NotPaths, op+".notPaths", "notPaths", parsePath, report),
				hosts:    compileMatchers(o.Hosts, op+".hosts", "hosts", parseHost, report),
				notHosts: compileMatchers(o.NotHosts, op+".notHosts", "notHosts", parseHost, report),
			}
			for _, pt := range o.Ports {
				co.ports = append(co.ports, int(pt))
			}
			for _, pt := range o.NotPorts {
				co.notPorts = append(co.notPorts, int(pt))
			}
			cr.to = append(cr.to, co)
			if r.AllowWithoutToken {
				if len(o.Paths) == 0 {
					report(op, "allowWithoutToken: every operation must list the exact paths it exempts")
				}
				for k, m := range co.paths {
					if m.kind != mExact {
						report(fmt.Sprintf("%s.paths[%d]", op, k), fmt.Sprintf("allowWithoutToken: path %q must be exact, not a pattern", m.raw))
					}
				}
			}
		}
		for j, w := range r.When {
			wp := fmt.Sprintf("%s.when[%d]", rp, j)
			c, err := parseCondKey(w.Key)
			if err != nil {
				report(wp+".key", "when: "+err.Error())
				continue
			}
			if len(w.Values) == 0 && len(w.NotValues) == 0 {
				report(wp, fmt.Sprintf("when: %q needs values or notValues", w.Key))
			}
			parse := parseIstio
			if c.kind == kSourcePrincipal || c.kind == kActorAt || c.kind == kActorsAny {
				parse = parseSPIFFEGlob
			}
			c.values = compileMatchers(w.Values, wp+".values", "values", parse, report)
			c.notValues = compileMatchers(w.NotValues, wp+".notValues", "notValues", parse, report)
			if r.AllowWithoutToken && c.usesToken() {
				report(wp+".key", fmt.Sprintf("conflicting fields: %q needs a token, allowWithoutToken says there is none", w.Key))
			}
			cr.when = append(cr.when, c)
		}
		if r.Condition != "" {
			chk, err := checkCEL(envs.authz, r.Condition)
			if err != nil {
				report(rp+".condition", "condition: "+err.Error())
			} else if prg, err := program(envs.authz, chk); err != nil {
				report(rp+".condition", "condition: "+err.Error())
			} else {
				cr.prg = prg
			}
			if r.AllowWithoutToken {
				report(rp+".condition", "conflicting fields: allowWithoutToken rules cannot have a condition")
			}
		}
		if r.AllowWithoutToken {
			if cp.action != actAllow {
				report(rp+".allowWithoutToken", "allowWithoutToken is only valid in ALLOW policies")
			}
			if len(r.To) == 0 {
				report(rp+".allowWithoutToken", "allowWithoutToken: the rule must list the exact paths it exempts under to")
			}
		}
		cr.matched = fmt.Sprintf("%s policy %q%s rule %d matched", kind, p.Name, mode, i)
		cr.unknown = fmt.Sprintf("%s policy %q%s rule %d: a condition could not be evaluated, so the rule matches (fail closed)", kind, p.Name, mode, i)
		if cp.action == actAllow {
			cr.unknown = fmt.Sprintf("ALLOW policy %q%s rule %d: a condition could not be evaluated, so the rule does not match", p.Name, mode, i)
		}
		cr.dry = fmt.Sprintf("dry-run %s policy %q rule %d matched: would %s", kind, p.Name, i, strings.ToLower(map[action]string{actAllow: "allow", actDeny: "deny", actAudit: "audit"}[cp.action]))
		cp.rules = append(cp.rules, cr)
	}
	cp.noMatch = fmt.Sprintf("dry-run %s policy %q: no rule matched", kind, p.Name)
	if bad {
		return nil
	}
	return cp
}

// cexch is a compiled ExchangePolicy.
type cexch struct {
	name        string
	deny        bool
	dryRun      bool
	grants      []string
	clients     []matcher
	issuers     []string
	audiences   []matcher
	prg         cel.Program
	scopes      []string
	claims      []string
	maxLifetime time.Duration
}

// MaxMaxLifetime is the longest lifetime a policy may allow. A policy
// without maxLifetime leaves the lifetime to the token service's default.
const MaxMaxLifetime = 24 * time.Hour

func compileExchange(p *ExchangePolicy, envs *celEnvs, rep reportFn) *cexch {
	bad := false
	report := func(path, msg string) { bad = true; rep(path, msg) }
	cp := &cexch{name: p.Name}
	switch p.Action {
	case "", ActionAllow:
	case ActionDeny:
		cp.deny = true
	default:
		report("spec.action", fmt.Sprintf("action: %q is not ALLOW or DENY", p.Action))
	}
	switch p.Mode {
	case "", ModeEnforce:
	case ModeDryRun:
		cp.dryRun = true
	default:
		report("spec.mode", fmt.Sprintf("mode: %q is not Enforce or DryRun", p.Mode))
	}
	cp.grants = p.GrantTypes
	if len(cp.grants) == 0 {
		cp.grants = []string{GrantTokenExchange}
	}
	needIssuer := false
	for i, g := range cp.grants {
		switch g {
		case GrantTokenExchange, GrantJWTBearer:
			needIssuer = true
		case GrantClientCredentials:
		default:
			report(fmt.Sprintf("spec.grantTypes[%d]", i), fmt.Sprintf("grantTypes: %q is not token-exchange, jwt-bearer or client-credentials", g))
		}
	}
	if len(p.Clients) == 0 {
		report("spec.clients", "clients: required")
	}
	cp.clients = compileMatchers(p.Clients, "spec.clients", "clients", parseSPIFFEGlob, report)
	if needIssuer && len(p.SubjectIssuers) == 0 {
		report("spec.subjectIssuers", "subjectIssuers: required for token-exchange and jwt-bearer")
	}
	for i, iss := range p.SubjectIssuers {
		switch {
		case iss == "":
			report(fmt.Sprintf("spec.subjectIssuers[%d]", i), "subjectIssuers: empty value")
		case strings.Contains(iss, "*"):
			report(fmt.Sprintf("spec.subjectIssuers[%d]", i), fmt.Sprintf("subjectIssuers: %q: globs are not allowed here", iss))
		}
		cp.issuers = append(cp.issuers, iss)
	}
	if len(p.Audiences) == 0 {
		report("spec.audiences", "audiences: required")
	}
	cp.audiences = compileMatchers(p.Audiences, "spec.audiences", "audiences", parseAudience, report)
	if cp.deny {
		if p.Scopes != nil {
			report("spec.scopes", "conflicting fields: scopes is not valid in a DENY policy")
		}
		if p.Claims != nil {
			report("spec.claims", "conflicting fields: claims is not valid in a DENY policy")
		}
		if p.MaxLifetime != 0 {
			report("spec.maxLifetime", "conflicting fields: maxLifetime is not valid in a DENY policy")
		}
	}
	for i, s := range p.Scopes {
		if s == "" || strings.ContainsAny(s, " \t\"\\") {
			report(fmt.Sprintf("spec.scopes[%d]", i), fmt.Sprintf("scopes: %q is not a valid scope", s))
		}
	}
	for i, c := range p.Claims {
		if c == "" {
			report(fmt.Sprintf("spec.claims[%d]", i), "claims: empty claim name")
		}
	}
	if p.Scopes != nil {
		cp.scopes = slices.Clip(slices.Clone(p.Scopes))
	}
	cp.claims = slices.Clip(slices.Clone(p.Claims))
	cp.maxLifetime = time.Duration(p.MaxLifetime)
	switch {
	case cp.maxLifetime == 0:
		// The token service's default (tokens.defaultLifetime) applies.
	case cp.maxLifetime < time.Second:
		report("spec.maxLifetime", fmt.Sprintf("maxLifetime: %v is too short (at least 1s)", cp.maxLifetime))
	case cp.maxLifetime > MaxMaxLifetime:
		report("spec.maxLifetime", fmt.Sprintf("maxLifetime: %v is longer than 24h", cp.maxLifetime))
	}
	if p.When != "" {
		chk, err := checkCEL(envs.exchange, p.When)
		if err != nil {
			report("spec.when", "when: "+err.Error())
		} else if prg, err := program(envs.exchange, chk); err != nil {
			report("spec.when", "when: "+err.Error())
		} else {
			cp.prg = prg
		}
	}
	if bad {
		return nil
	}
	return cp
}
