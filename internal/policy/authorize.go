package policy

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// Request is the input of an authorization decision, built by the proxies
// from the connection and the verified token.
type Request struct {
	// Workload is the SPIFFE ID of the workload being called; it selects
	// the policies.
	Workload string
	// Labels of that workload; if nil, its Workload resource's labels.
	Labels map[string]string
	// Peer is the caller's SPIFFE ID from mutual TLS ("" if none).
	Peer string
	// HasToken says a token was presented and verified.
	HasToken bool
	// Issuer and Subject are the verified token's iss and sub.
	Issuer, Subject string
	// Claims are the verified token's claims.
	Claims map[string]any
	// Actors are the act chain subjects, newest first: Actors[0] is the
	// immediate previous actor, Actors[len-1] the first (often the gateway).
	Actors []string
	// Method, Path, Host and Port describe the request. Path should be
	// normalized by the proxy; a query string is ignored.
	Method, Path, Host string
	Port               int
	// Headers with lower-case names: the value of each header sent once.
	Headers map[string]string
	// RepeatedHeaders names (lower-case) the headers sent more than once.
	// They are not in Headers: which of their values counts depends on the
	// application, so a condition on one cannot be evaluated (an ALLOW
	// rule does not match, a DENY rule applies).
	RepeatedHeaders map[string]bool
}

// Decision is the outcome of Authorize: what proxies put in audit lines and
// 403 bodies.
type Decision struct {
	// Allow is true only when an enforced ALLOW rule matched and no enforced
	// DENY rule did.
	Allow bool
	// DecisionID identifies this decision.
	DecisionID DecisionID
	// Policy is the policy that decided ("" when no rule matched).
	Policy string
	// Rule is the index of the deciding rule in Policy, -1 for none.
	Rule int
	// Reason says why, in one line.
	Reason string
	// Audit is set when an AUDIT policy matched: log this request.
	Audit bool
	// DryRun lists what DryRun policies would have decided.
	DryRun []string
}

// Reasons for decisions that no rule made.
const (
	ReasonNoAllowPolicy = "no ALLOW policy selects the workload: deny by default"
	ReasonNoRuleMatched = "no ALLOW rule matched"
)

type tri uint8

const (
	tFalse tri = iota
	tTrue
	tUnknown
)

// tracer collects the reasoning of Explain; a nil tracer records nothing.
type tracer struct{ lines []string }

func (t *tracer) add(format string, args ...any) {
	t.lines = append(t.lines, fmt.Sprintf(format, args...))
}

// Authorize decides a request. It never allocates on the common path
// (a workload known to the Engine, no CEL condition, no dry-run policy).
func (e *Engine) Authorize(req *Request) Decision {
	return e.decide(req, nil)
}

// Explain decides a request like Authorize and returns the chain of
// reasoning: which policies selected the workload, which rules were tried,
// which matched and why the others did not.
func (e *Engine) Explain(req *Request) (Decision, []string) {
	tr := &tracer{}
	tr.add("request: workload=%q peer=%q token=%v issuer=%q subject=%q actors=%q %s %s host=%q port=%d",
		req.Workload, req.Peer, req.HasToken, req.Issuer, req.Subject, req.Actors, req.Method, req.Path, req.Host, req.Port)
	d := e.decide(req, tr)
	verdict := "deny"
	if d.Allow {
		verdict = "allow"
	}
	tr.add("decision %s: %s (policy %q, rule %d, audit %v, id %s)", verdict, d.Reason, d.Policy, d.Rule, d.Audit, d.DecisionID)
	return d, tr.lines
}

func (e *Engine) decide(req *Request, tr *tracer) Decision {
	d := Decision{DecisionID: e.newID(), Rule: -1}
	sel, labels, filter := e.selectionOf(req)
	if tr != nil {
		e.traceSelection(req, labels, tr)
	}
	v := e.verdict(req, sel, labels, filter, false, tr)
	d.Allow, d.Policy, d.Rule, d.Reason = v.allow, v.policy, v.rule, v.reason

	// AUDIT policies: a match (or a condition that cannot be evaluated) marks the decision.
	for _, p := range sel.audit {
		if p.dryRun || filter && !p.selects(req.Workload, labels) {
			continue
		}
		ri, res := p.eval(req, tr)
		if res != tFalse {
			d.Audit = true
			if tr != nil {
				tr.add("AUDIT policy %q rule %d matched: the request is marked for audit", p.name, ri)
			}
			break
		}
	}

	hasDry := sel.dryRun > 0
	if filter {
		hasDry = e.anyDryRun(req.Workload, labels)
	}
	if hasDry {
		d.DryRun = e.dryRun(req, sel, labels, filter, tr)
	}
	return d
}

// selectionOf returns the policies to consider. filter is true on the slow
// path (unknown workload or labels that differ from its resource), where
// every policy's selector is checked against the request.
func (e *Engine) selectionOf(req *Request) (sel *selection, labels map[string]string, filter bool) {
	if s, ok := e.index[req.Workload]; ok {
		wl := e.workloads[e.bySPIFFEID[req.Workload]].Labels
		if req.Labels == nil || maps.Equal(req.Labels, wl) {
			return s, wl, false
		}
	}
	return e.all, req.Labels, true
}

type verdict struct {
	allow  bool
	policy string
	rule   int
	reason string
}

// verdict runs the DENY then ALLOW passes. With dry set, DryRun policies
// count as enforced (the shadow decision reported for dry-run).
func (e *Engine) verdict(req *Request, sel *selection, labels map[string]string, filter, dry bool, tr *tracer) verdict {
	for _, p := range sel.deny {
		if p.dryRun && !dry || filter && !p.selects(req.Workload, labels) {
			continue
		}
		ri, res := p.eval(req, tr)
		switch res {
		case tTrue:
			return verdict{policy: p.name, rule: ri, reason: p.rules[ri].matched}
		case tUnknown:
			return verdict{policy: p.name, rule: ri, reason: p.rules[ri].unknown}
		}
	}
	anyAllow := false
	unknownReason := ""
	for _, p := range sel.allow {
		if p.dryRun && !dry || filter && !p.selects(req.Workload, labels) {
			continue
		}
		anyAllow = true
		for ri := range p.rules {
			r := &p.rules[ri]
			res := r.eval(req, true, tr, p, ri)
			if res == tTrue {
				return verdict{allow: true, policy: p.name, rule: ri, reason: r.matched}
			}
			if res == tUnknown && unknownReason == "" {
				unknownReason = r.unknown
			}
		}
		if tr != nil && len(p.rules) == 0 {
			tr.add("ALLOW policy %q has no rules: it allows nothing", p.name)
		}
	}
	switch {
	case !anyAllow:
		return verdict{rule: -1, reason: ReasonNoAllowPolicy}
	case unknownReason != "":
		return verdict{rule: -1, reason: ReasonNoRuleMatched + " (" + unknownReason + ")"}
	}
	return verdict{rule: -1, reason: ReasonNoRuleMatched}
}

func (e *Engine) anyDryRun(id string, labels map[string]string) bool {
	for _, ps := range [][]*cpolicy{e.deny, e.audit, e.allow} {
		for _, p := range ps {
			if p.dryRun && p.selects(id, labels) {
				return true
			}
		}
	}
	return false
}

// dryRun reports what every selecting DryRun policy would have decided, and
// the decision with all of them enforced.
func (e *Engine) dryRun(req *Request, sel *selection, labels map[string]string, filter bool, tr *tracer) []string {
	var out []string
	for _, ps := range [][]*cpolicy{sel.deny, sel.audit, sel.allow} {
		for _, p := range ps {
			if !p.dryRun || filter && !p.selects(req.Workload, labels) {
				continue
			}
			var res tri
			ri := -1
			if p.action == actAllow {
				for i := range p.rules {
					if p.rules[i].eval(req, true, nil, p, i) == tTrue {
						ri, res = i, tTrue
						break
					}
				}
			} else {
				ri, res = p.eval(req, nil)
			}
			if res == tFalse {
				out = append(out, p.noMatch)
			} else {
				out = append(out, p.rules[ri].dry)
			}
		}
	}
	v := e.verdict(req, sel, labels, filter, true, nil)
	word := "deny"
	if v.allow {
		word = "allow"
	}
	out = append(out, "dry-run: with DryRun policies enforced the decision would be "+word+": "+v.reason)
	if tr != nil {
		for _, l := range out {
			tr.add("%s", l)
		}
	}
	return out
}

func (e *Engine) traceSelection(req *Request, labels map[string]string, tr *tracer) {
	if _, ok := e.index[req.Workload]; !ok {
		tr.add("workload %q is not a known Workload: selectors are checked against labels %v", req.Workload, labels)
	} else {
		tr.add("workload %q (labels %v)", req.Workload, labels)
	}
	var names []string
	not := 0
	for _, ps := range [][]*cpolicy{e.deny, e.audit, e.allow} {
		for _, p := range ps {
			if p.selects(req.Workload, labels) {
				n := p.action.String() + " " + strconv.Quote(p.name)
				if p.dryRun {
					n += " (dry-run)"
				}
				names = append(names, n)
			} else {
				not++
			}
		}
	}
	if len(names) == 0 {
		tr.add("no policy selects the workload (%d do not)", not)
		return
	}
	tr.add("policies selecting the workload: %s (%d others do not)", strings.Join(names, ", "), not)
}

// eval evaluates a DENY or AUDIT policy: the first rule that matches or
// cannot be evaluated.
func (p *cpolicy) eval(req *Request, tr *tracer) (int, tri) {
	for ri := range p.rules {
		if res := p.rules[ri].eval(req, false, tr, p, ri); res != tFalse {
			return ri, res
		}
	}
	if tr != nil && len(p.rules) == 0 {
		tr.add("%s policy %q has no rules: it matches nothing", p.action, p.name)
	}
	return -1, tFalse
}

// eval evaluates one rule in three-valued logic: false if any part is false,
// else unknown if any condition could not be evaluated, else true.
func (r *crule) eval(req *Request, allowSide bool, tr *tracer, p *cpolicy, ri int) tri {
	var why string
	var whyp *string
	if tr != nil {
		whyp = &why
	}
	fail := func() tri {
		if tr != nil {
			tr.add("%s policy %q rule %d: no match: %s", p.action, p.name, ri, why)
		}
		return tFalse
	}
	if allowSide && !r.allowWithoutToken && !req.HasToken {
		if tr != nil {
			why = "the request carries no token (the rule does not set allowWithoutToken)"
		}
		return fail()
	}
	if len(r.from) > 0 {
		ok := false
		for i := range r.from {
			if r.from[i].match(req, whyp) {
				ok = true
				break
			}
		}
		if !ok {
			return fail()
		}
	}
	if len(r.to) > 0 {
		ok := false
		for i := range r.to {
			if r.to[i].match(req, whyp) {
				ok = true
				break
			}
		}
		if !ok {
			return fail()
		}
	}
	res := tTrue
	for i := range r.when {
		switch r.when[i].eval(req, whyp) {
		case tFalse:
			return fail()
		case tUnknown:
			res = tUnknown
			if tr != nil {
				tr.add("%s policy %q rule %d: cannot evaluate: %s", p.action, p.name, ri, why)
			}
		}
	}
	if r.prg != nil {
		v, err := evalBool(r.prg, authzActivation{req})
		switch {
		case err != nil:
			res = tUnknown
			if tr != nil {
				tr.add("%s policy %q rule %d: cannot evaluate condition %q: %v", p.action, p.name, ri, r.cond, err)
			}
		case !v:
			if tr != nil {
				why = fmt.Sprintf("condition %q is false", r.cond)
			}
			return fail()
		}
	}
	if tr != nil {
		if res == tTrue {
			tr.add("%s policy %q rule %d: matched", p.action, p.name, ri)
		} else if allowSide {
			tr.add("%s policy %q rule %d: not matched because a condition could not be evaluated", p.action, p.name, ri)
		} else {
			tr.add("%s policy %q rule %d: matched because a condition could not be evaluated (fail closed)", p.action, p.name, ri)
		}
	}
	return res
}

func (s *csource) match(req *Request, why *string) bool {
	peer := req.Peer
	if len(s.principals) > 0 && !matchAny(s.principals, peer) {
		if why != nil {
			*why = fmt.Sprintf("peer %q matches none of principals %s", peer, patterns(s.principals))
		}
		return false
	}
	if len(s.notPrincipals) > 0 && matchAny(s.notPrincipals, peer) {
		if why != nil {
			*why = fmt.Sprintf("peer %q matches notPrincipals %s", peer, patterns(s.notPrincipals))
		}
		return false
	}
	if len(s.reqPrincipals) > 0 && !(req.HasToken && matchAnyJoined(s.reqPrincipals, req.Issuer, req.Subject)) {
		if why != nil {
			*why = fmt.Sprintf("request principal %q matches none of requestPrincipals %s", reqPrincipal(req), patterns(s.reqPrincipals))
		}
		return false
	}
	if len(s.notReqPrinc) > 0 && req.HasToken && matchAnyJoined(s.notReqPrinc, req.Issuer, req.Subject) {
		if why != nil {
			*why = fmt.Sprintf("request principal %q matches notRequestPrincipals %s", reqPrincipal(req), patterns(s.notReqPrinc))
		}
		return false
	}
	if len(s.namespaces)+len(s.notNamespaces) > 0 {
		ns := namespaceOf(peer)
		if len(s.namespaces) > 0 && !matchAny(s.namespaces, ns) {
			if why != nil {
				*why = fmt.Sprintf("peer namespace %q matches none of namespaces %s", ns, patterns(s.namespaces))
			}
			return false
		}
		if len(s.notNamespaces) > 0 && matchAny(s.notNamespaces, ns) {
			if why != nil {
				*why = fmt.Sprintf("peer namespace %q matches notNamespaces %s", ns, patterns(s.notNamespaces))
			}
			return false
		}
	}
	return true
}

func reqPrincipal(req *Request) string {
	if !req.HasToken {
		return ""
	}
	return req.Issuer + "/" + req.Subject
}

func stripQuery(p string) string {
	if i := strings.IndexByte(p, '?'); i >= 0 {
		return p[:i]
	}
	return p
}

func stripPort(h string) string {
	if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.Contains(h[i:], "]") {
		return h[:i]
	}
	return h
}

func (o *coperation) match(req *Request, why *string) bool {
	if len(o.methods) > 0 && !slices.Contains(o.methods, req.Method) {
		if why != nil {
			*why = fmt.Sprintf("method %q is not in methods %q", req.Method, o.methods)
		}
		return false
	}
	if len(o.notMethods) > 0 && slices.Contains(o.notMethods, req.Method) {
		if why != nil {
			*why = fmt.Sprintf("method %q is in notMethods %q", req.Method, o.notMethods)
		}
		return false
	}
	if len(o.paths)+len(o.notPaths) > 0 {
		path := stripQuery(req.Path)
		if len(o.paths) > 0 && !matchAny(o.paths, path) {
			if why != nil {
				*why = fmt.Sprintf("path %q matches none of paths %s", path, patterns(o.paths))
			}
			return false
		}
		if len(o.notPaths) > 0 && matchAny(o.notPaths, path) {
			if why != nil {
				*why = fmt.Sprintf("path %q matches notPaths %s", path, patterns(o.notPaths))
			}
			return false
		}
	}
	if len(o.ports) > 0 && !slices.Contains(o.ports, req.Port) {
		if why != nil {
			*why = fmt.Sprintf("port %d is not in ports %v", req.Port, o.ports)
		}
		return false
	}
	if len(o.notPorts) > 0 && slices.Contains(o.notPorts, req.Port) {
		if why != nil {
			*why = fmt.Sprintf("port %d is in notPorts %v", req.Port, o.notPorts)
		}
		return false
	}
	if len(o.hosts)+len(o.notHosts) > 0 {
		// One trailing dot names the same host (a fully qualified name):
		// "admin.internal." must meet the rules for "admin.internal".
		host := strings.TrimSuffix(stripPort(req.Host), ".")
		if len(o.hosts) > 0 && !matchAny(o.hosts, host) {
			if why != nil {
				*why = fmt.Sprintf("host %q matches none of hosts %s", host, patterns(o.hosts))
			}
			return false
		}
		if len(o.notHosts) > 0 && matchAny(o.notHosts, host) {
			if why != nil {
				*why = fmt.Sprintf("host %q matches notHosts %s", host, patterns(o.notHosts))
			}
			return false
		}
	}
	return true
}

// single tests one value against values/notValues.
func (c *ccond) single(v string) bool {
	if len(c.values) > 0 && !matchAny(c.values, v) {
		return false
	}
	return len(c.notValues) == 0 || !matchAny(c.notValues, v)
}

func (c *ccond) eval(req *Request, why *string) tri {
	unknown := func(msg string) tri {
		if why != nil {
			*why = fmt.Sprintf("when %q: %s", c.key, msg)
		}
		return tUnknown
	}
	res := false
	var got string
	switch c.kind {
	case kPrincipal:
		if !req.HasToken {
			return unknown("the request carries no token")
		}
		res = (len(c.values) == 0 || matchAnyJoined(c.values, req.Issuer, req.Subject)) &&
			(len(c.notValues) == 0 || !matchAnyJoined(c.notValues, req.Issuer, req.Subject))
		if why != nil {
			got = reqPrincipal(req)
		}
	case kHeader:
		if req.RepeatedHeaders[c.header] {
			return unknown("header is sent more than once")
		}
		v, ok := req.Headers[c.header]
		if !ok {
			return unknown("header is missing")
		}
		res, got = c.single(v), v
	case kSourcePrincipal:
		if req.Peer == "" {
			return unknown("no peer identity (no mutual TLS)")
		}
		res, got = c.single(req.Peer), req.Peer
	case kSourceNamespace:
		ns := namespaceOf(req.Peer)
		if ns == "" {
			return unknown("the peer's SPIFFE ID has no namespace")
		}
		res, got = c.single(ns), ns
	case kActorAt:
		i := c.actor
		if i < 0 {
			i += len(req.Actors)
		}
		if i < 0 || i >= len(req.Actors) {
			return unknown(fmt.Sprintf("the act chain has %d actors", len(req.Actors)))
		}
		res, got = c.single(req.Actors[i]), req.Actors[i]
	case kActorsAny:
		res = (len(c.values) == 0 || anyActor(c.values, req.Actors)) &&
			(len(c.notValues) == 0 || !anyActor(c.notValues, req.Actors))
		if why != nil {
			got = fmt.Sprint(req.Actors)
		}
	case kClaim:
		if !req.HasToken {
			return unknown("the request carries no token")
		}
		v, ok := lookupClaim(req.Claims, c.claim)
		if !ok {
			return unknown("claim is missing")
		}
		in, ok := claimMatches(v, c.split, c.values)
		if !ok {
			return unknown("claim is not a string, number, bool or list of them")
		}
		out := false
		if len(c.notValues) > 0 {
			if out, ok = claimMatches(v, c.split, c.notValues); !ok {
				return unknown("claim is not a string, number, bool or list of them")
			}
		}
		res = (len(c.values) == 0 || in) && !out
		if why != nil {
			got = fmt.Sprint(v)
		}
	}
	if res {
		return tTrue
	}
	if why != nil {
		*why = fmt.Sprintf("when %q: value %q does not satisfy values %s notValues %s", c.key, got, patterns(c.values), patterns(c.notValues))
	}
	return tFalse
}

func anyActor(ms []matcher, actors []string) bool {
	for _, a := range actors {
		if matchAny(ms, a) {
			return true
		}
	}
	return false
}

func lookupClaim(claims map[string]any, path []string) (any, bool) {
	var cur any = claims
	for _, k := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[k]; !ok || cur == nil {
			return nil, false
		}
	}
	return cur, true
}

// claimMatches reports whether any element of a claim value matches any of
// ms; ok is false for values that are not strings, numbers, bools or lists.
func claimMatches(v any, split bool, ms []matcher) (matched, ok bool) {
	switch x := v.(type) {
	case string:
		if !split {
			return matchAny(ms, x), true
		}
		for f := range strings.FieldsSeq(x) {
			if matchAny(ms, f) {
				return true, true
			}
		}
		return false, true
	case []string:
		for _, s := range x {
			if matchAny(ms, s) {
				return true, true
			}
		}
		return false, true
	case []any:
		// Every element is looked at, whatever matched before it: a list
		// holding anything but scalars cannot be judged (and where it sits
		// in the list must not decide whether notValues are checked).
		found := false
		for _, el := range x {
			m, ok := claimMatches(el, false, ms)
			if !ok {
				return false, false
			}
			found = found || m
		}
		return found, true
	case bool:
		return matchAny(ms, strconv.FormatBool(x)), true
	case float64:
		return matchAny(ms, strconv.FormatFloat(x, 'f', -1, 64)), true
	case int:
		return matchAny(ms, strconv.Itoa(x)), true
	case int64:
		return matchAny(ms, strconv.FormatInt(x, 10)), true
	}
	return false, false
}
