package gateway

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"

	"postern.dev/postern/internal/policy"
)

// route is a compiled Route.
type route struct {
	Route
	index    int
	hostRank int            // 3 exact, 2 wildcard, 1 any
	suffix   string         // ".example.com" for "*.example.com"
	engine   *policy.Engine // nil: no when/condition
	scopeHdr string         // the WWW-Authenticate scope parameter
}

// routeTable finds the route of a request. It is immutable.
type routeTable struct {
	routes []*route // in match order: most specific first
}

// compileRoutes checks and compiles routes for the gateway whose SPIFFE ID
// is self: each route with when or condition becomes a one-policy engine
// (ALLOW, selecting self, one rule with those conditions restricted to the
// route's paths), decided by the policy package's evaluator.
func compileRoutes(routes []Route, self string) (*routeTable, error) {
	t := &routeTable{}
	var errs []error
	for i, r := range routes {
		cr := &route{Route: r, index: i}
		switch {
		case r.Host == "*":
			cr.hostRank = 1
		case strings.HasPrefix(r.Host, "*."):
			cr.hostRank, cr.suffix = 2, r.Host[1:]
		default:
			cr.hostRank = 3
		}
		if len(r.When) > 0 || r.Condition != "" {
			e, err := routeEngine(&r, self)
			if err != nil {
				errs = append(errs, fmt.Errorf("routes[%d] (%s): %w", i, r.Name, err))
				continue
			}
			cr.engine = e
		}
		cr.scopeHdr = strings.Join(r.RequiredScopes, " ")
		t.routes = append(t.routes, cr)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	slices.SortStableFunc(t.routes, func(a, b *route) int {
		if d := len(b.PathPrefix) - len(a.PathPrefix); d != 0 {
			return d
		}
		if d := b.hostRank - a.hostRank; d != 0 {
			return d
		}
		return len(b.suffix) - len(a.suffix)
	})
	return t, nil
}

// routePaths are the AuthorizationPolicy path patterns equivalent to a
// segment-wise prefix.
func routePaths(prefix string) []string {
	switch {
	case prefix == "/":
		return []string{"/*"}
	case strings.HasSuffix(prefix, "/"):
		return []string{prefix + "*"}
	default:
		return []string{prefix, prefix + "/*"}
	}
}

// routeEngine compiles the route's conditions into a policy engine.
func routeEngine(r *Route, self string) (*policy.Engine, error) {
	ap := policy.AuthorizationPolicy{
		Name:     "gateway-route",
		Origin:   policy.Origin{File: "gateway route " + r.Name},
		Selector: &policy.WorkloadSelector{SPIFFEIDs: []string{self}},
		Action:   policy.ActionAllow,
		Rules: []policy.Rule{{
			To:        []policy.To{{Operation: policy.Operation{Paths: routePaths(r.PathPrefix)}}},
			When:      r.When,
			Condition: r.Condition,
		}},
	}
	e, err := policy.Compile(&policy.Set{AuthorizationPolicies: []policy.AuthorizationPolicy{ap}}, policy.CompileOptions{})
	if err != nil {
		var probs policy.Problems
		if errors.As(err, &probs) {
			msgs := make([]string, len(probs))
			for i, p := range probs {
				msgs[i] = p.Message
			}
			return nil, errors.New(strings.Join(msgs, "; "))
		}
		return nil, err
	}
	return e, nil
}

// match returns the route for host (a Host header, port allowed) and a
// cleaned path, or nil.
func (t *routeTable) match(host, path string) *route {
	h := normHost(host)
	for _, r := range t.routes {
		if r.matchHost(h) && prefixMatch(r.PathPrefix, path) {
			return r
		}
	}
	return nil
}

func (r *route) matchHost(h string) bool {
	switch r.hostRank {
	case 1:
		return true
	case 2:
		return len(h) > len(r.suffix) && strings.HasSuffix(h, r.suffix)
	default:
		return h == r.Host
	}
}

// prefixMatch reports whether path is prefix or lies below it, segment-wise.
func prefixMatch(prefix, path string) bool {
	if !strings.HasPrefix(path, prefix) {
		return false
	}
	return len(path) == len(prefix) || strings.HasSuffix(prefix, "/") || path[len(prefix)] == '/'
}

// normHost lower-cases host and removes a port and a trailing dot. An
// unusable host becomes "" (matched only by "*" routes).
func normHost(host string) string {
	if len(host) > 300 {
		return ""
	}
	h := host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	} else if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		h = h[1 : len(h)-1]
	}
	h = strings.TrimSuffix(strings.ToLower(h), ".")
	return h
}

// checkHostPattern validates a route's host: "*", "*.<dns name>" or a DNS
// name or IP literal (lower case).
func checkHostPattern(h string) error {
	if h == "*" {
		return nil
	}
	name := strings.TrimPrefix(h, "*.")
	if strings.Contains(name, "*") {
		return fmt.Errorf("%q: '*' is allowed only as \"*\" or a leading \"*.\"", h)
	}
	if !validHostName(name) {
		return fmt.Errorf("%q is not a host name", h)
	}
	if name != h && net.ParseIP(name) != nil {
		return fmt.Errorf("%q: a wildcard needs a DNS name", h)
	}
	return nil
}

// validHostName accepts lower-case DNS names and IP literals.
func validHostName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	if net.ParseIP(s) != nil {
		return true
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			b := label[i]
			if !(b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '-' || b == '_') {
				return false
			}
		}
	}
	return true
}

// checkPrefix validates a path prefix: it starts with "/", and holds no
// pattern characters, escapes, empty or dot segments.
func checkPrefix(p string) error {
	switch {
	case p == "":
		return errors.New("required")
	case len(p) > maxPrefixBytes:
		return fmt.Errorf("longer than %d bytes", maxPrefixBytes)
	case p[0] != '/':
		return fmt.Errorf("%q must start with /", p)
	case strings.ContainsAny(p, "*{}?#%\\ "):
		return fmt.Errorf("%q: no *, {, }, ?, #, %%, backslash or space", p)
	case !printableASCII(p):
		return fmt.Errorf("%q: printable ASCII only", p)
	case strings.Contains(p, "//"):
		return fmt.Errorf("%q has an empty segment", p)
	}
	for seg := range strings.SplitSeq(strings.Trim(p, "/"), "/") {
		if seg == "." || seg == ".." {
			return fmt.Errorf("%q has a dot segment", p)
		}
	}
	return nil
}
