package policy

import (
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"time"

	"postern.dev/postern/internal/strictyaml"
)

// RequestSpec is the YAML form of a Request, used in PolicyTest files and by
// `postern policy explain --request FILE`.
type RequestSpec struct {
	Workload string            `json:"workload"`
	Labels   map[string]string `json:"labels,omitempty"`
	Peer     string            `json:"peer,omitempty"`
	// Token is the verified token; absent means the request carries none.
	Token   *TokenSpec        `json:"token,omitempty"`
	Method  string            `json:"method,omitempty"`
	Path    string            `json:"path,omitempty"`
	Host    string            `json:"host,omitempty"`
	Port    int               `json:"port,omitempty"`
	Headers map[string]string `json:"headers,omitempty"`
}

// TokenSpec describes a verified token by its claims. iss and sub give the
// request principal; the nested act claim gives the act chain unless Actors
// is set.
type TokenSpec struct {
	Claims map[string]any `json:"claims,omitempty"`
	Actors []string       `json:"actors,omitempty"`
}

// ExchangeSpec is the YAML form of an ExchangeRequest in PolicyTest files.
type ExchangeSpec struct {
	GrantType     string         `json:"grantType,omitempty"`
	Client        string         `json:"client"`
	SubjectIssuer string         `json:"subjectIssuer,omitempty"`
	Subject       map[string]any `json:"subject,omitempty"`
	Actors        []string       `json:"actors,omitempty"`
	Audience      string         `json:"audience,omitempty"`
	Scopes        []string       `json:"scopes,omitempty"`
}

// Expect is the expected decision of a test case; unset fields are not checked.
type Expect struct {
	Allow    *bool    `json:"allow"`
	Policy   *string  `json:"policy,omitempty"`
	Rule     *int     `json:"rule,omitempty"`
	Audit    *bool    `json:"audit,omitempty"`
	Audience *string  `json:"audience,omitempty"`
	Scopes   []string `json:"scopes,omitempty"`
}

type testCase struct {
	Name     string        `json:"name"`
	Request  *RequestSpec  `json:"request,omitempty"`
	Exchange *ExchangeSpec `json:"exchange,omitempty"`
	Expect   Expect        `json:"expect"`
}

type testSpec struct {
	Cases []testCase `json:"cases"`
}

type testDoc struct {
	name  string
	file  string
	cases []testCase
	lines []int
}

func (l *loader) testDoc(f *fileCtx, d *document[testSpec]) {
	if len(d.Spec.Cases) == 0 {
		f.report("spec.cases", "cases: at least one case is required")
		return
	}
	td := &testDoc{name: d.Metadata.Name, file: f.file, cases: d.Spec.Cases}
	for i, c := range d.Spec.Cases {
		p := fmt.Sprintf("spec.cases[%d]", i)
		td.lines = append(td.lines, f.line(p))
		if c.Name == "" {
			f.report(p, "cases: name is required")
		}
		if (c.Request == nil) == (c.Exchange == nil) {
			f.report(p, "cases: exactly one of request and exchange is required")
		}
		if c.Expect.Allow == nil {
			f.report(p+".expect", "expect.allow: required")
		}
	}
	l.tests = append(l.tests, td)
}

// ToRequest builds the Request the spec describes.
func (s *RequestSpec) ToRequest() *Request {
	r := &Request{
		Workload: s.Workload, Labels: s.Labels, Peer: s.Peer,
		Method: s.Method, Path: s.Path, Host: s.Host, Port: s.Port, Headers: lowerKeys(s.Headers),
	}
	if s.Token != nil {
		r.HasToken = true
		r.Claims = s.Token.Claims
		if r.Claims == nil {
			r.Claims = map[string]any{}
		}
		r.Issuer, _ = r.Claims["iss"].(string)
		r.Subject, _ = r.Claims["sub"].(string)
		r.Actors = s.Token.Actors
		if r.Actors == nil {
			r.Actors = ActChain(r.Claims)
		}
	}
	return r
}

func lowerKeys(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[strings.ToLower(k)] = v
	}
	return out
}

// ActChain returns the subjects of the nested act claims (RFC 8693 §4.1),
// newest first, at most 32 deep.
func ActChain(claims map[string]any) []string {
	var out []string
	cur := claims
	for range 32 {
		act, ok := cur["act"].(map[string]any)
		if !ok {
			break
		}
		sub, _ := act["sub"].(string)
		out = append(out, sub)
		cur = act
	}
	return out
}

// ToRequest builds the ExchangeRequest the spec describes.
func (s *ExchangeSpec) ToRequest() *ExchangeRequest {
	r := &ExchangeRequest{
		GrantType: s.GrantType, Client: s.Client, SubjectIssuer: s.SubjectIssuer,
		Subject: s.Subject, Actors: s.Actors, Audience: s.Audience, Scopes: s.Scopes,
	}
	if r.GrantType == "" {
		r.GrantType = GrantTokenExchange
	}
	if r.Actors == nil && r.Subject != nil {
		r.Actors = ActChain(r.Subject)
	}
	if r.SubjectIssuer == "" && r.Subject != nil {
		r.SubjectIssuer, _ = r.Subject["iss"].(string)
	}
	return r
}

// ParseRequest parses a YAML RequestSpec (unknown fields are rejected). The
// error, when not nil, is a Problems value.
func ParseRequest(name string, data []byte) (*Request, error) {
	if len(data) > MaxFileSize {
		return nil, Problems{{File: name, Message: fmt.Sprintf("file is larger than %d bytes", MaxFileSize)}}
	}
	var spec RequestSpec
	if err := strictyaml.Unmarshal(name, data, &spec); err != nil {
		var se *strictyaml.Error
		if !errors.As(err, &se) {
			return nil, err
		}
		var ps Problems
		for _, p := range se.Problems {
			ps = append(ps, Problem{File: name, Line: p.Line, Message: strings.ReplaceAll(p.Message, "policy: ", "")})
		}
		return nil, ps.sorted()
	}
	if reflect.ValueOf(spec).IsZero() {
		return nil, Problems{{File: name, Message: "empty request"}}
	}
	return spec.ToRequest(), nil
}

func loadForTool(dir string, opts CompileOptions, tests bool) (*loader, *Engine, Problems, error) {
	l, err := newLoader()
	if err != nil {
		return nil, nil, nil, err
	}
	l.wantTests = tests
	files, err := l.readDir(dir)
	if err != nil {
		return nil, nil, nil, err
	}
	for _, f := range files {
		l.parse(f.name, f.data)
	}
	e, probs := compile(&l.set, opts, l.envs)
	all := append(slices.Clone(l.problems), probs...).sorted()
	return l, e, all, nil
}

// Lint checks every resource (and PolicyTest) file in dir and writes every
// problem to w, one "file:line: reason" per line. It returns the Problems
// (nil when the directory is clean) or an error if dir cannot be read.
func Lint(w io.Writer, dir string, opts CompileOptions) error {
	l, _, probs, err := loadForTool(dir, opts, true)
	if err != nil {
		return err
	}
	for _, p := range probs {
		fmt.Fprintln(w, p.String())
	}
	if len(probs) > 0 {
		fmt.Fprintf(w, "%d problem(s)\n", len(probs))
		return probs
	}
	if l.set.Len() == 0 && len(l.tests) == 0 {
		// An empty or mistaken directory is not a clean bill of health.
		fmt.Fprintf(w, "no resources in %s (files ending in .yaml or .yml)\n", dir)
		return ErrNoResources
	}
	selfNote(w, &l.set, opts)
	fmt.Fprintf(w, "ok: %d resources, %d test files in %s\n", l.set.Len(), len(l.tests), dir)
	return nil
}

// selfNote tells the user, when no SelfIssuer is set, which exchange
// policies name "self" among their subject issuers: without it those
// entries match no token, which would otherwise surface only as tests that
// unexpectedly deny.
func selfNote(w io.Writer, set *Set, opts CompileOptions) {
	if opts.SelfIssuer != "" {
		return
	}
	for _, p := range set.ExchangePolicies {
		if slices.Contains(p.SubjectIssuers, "self") {
			fmt.Fprintf(w, "note: %s:%d: ExchangePolicy %q names \"self\" in subjectIssuers, which matches no token without --self-issuer (the token service's issuer URL)\n", p.Origin.File, p.Origin.Line, p.Name)
		}
	}
}

// TestSummary counts the results of RunTests.
type TestSummary struct {
	Passed, Failed int
}

// ErrNoResources is returned by Lint when dir holds no resource at all.
var ErrNoResources = errors.New("policy: no resources found")

// ErrNoTests is returned by RunTests when dir holds no PolicyTest case.
var ErrNoTests = errors.New("policy: no PolicyTest cases found")

// RunTests loads the policies and PolicyTest files of dir and runs every
// case, writing one line per case to w like go test. The error is a Problems
// value when the directory does not load, ErrNoTests when there is nothing
// to run, and nil otherwise (check Failed).
func RunTests(w io.Writer, dir string, opts CompileOptions) (TestSummary, error) {
	var sum TestSummary
	l, e, probs, err := loadForTool(dir, opts, true)
	if err != nil {
		return sum, err
	}
	if len(probs) > 0 {
		for _, p := range probs {
			fmt.Fprintln(w, p.String())
		}
		return sum, probs
	}
	if len(l.tests) == 0 {
		fmt.Fprintf(w, "no PolicyTest cases in %s\n", dir)
		return sum, ErrNoTests
	}
	selfNote(w, &l.set, opts)
	for _, td := range l.tests {
		for i, c := range td.cases {
			start := time.Now()
			failures := runCase(e, &c)
			name := td.name + "/" + c.Name
			dur := time.Since(start)
			if len(failures) == 0 {
				sum.Passed++
				fmt.Fprintf(w, "--- PASS: %s (%s)\n", name, dur.Round(time.Microsecond))
				continue
			}
			sum.Failed++
			fmt.Fprintf(w, "--- FAIL: %s (%s)\n", name, dur.Round(time.Microsecond))
			for _, f := range failures {
				fmt.Fprintf(w, "    %s:%d: %s\n", td.file, td.lines[i], f)
			}
		}
	}
	if sum.Failed > 0 {
		fmt.Fprintf(w, "FAIL: %d passed, %d failed\n", sum.Passed, sum.Failed)
	} else {
		fmt.Fprintf(w, "PASS: %d passed\n", sum.Passed)
	}
	return sum, nil
}

func word(allow bool) string {
	if allow {
		return "allow"
	}
	return "deny"
}

// runCase returns what did not go as expected.
func runCase(e *Engine, c *testCase) []string {
	var got struct {
		allow    bool
		policy   string
		rule     int
		audit    bool
		audience string
		scopes   []string
		reason   string
	}
	if c.Request != nil {
		d := e.Authorize(c.Request.ToRequest())
		got.allow, got.policy, got.rule, got.audit, got.reason = d.Allow, d.Policy, d.Rule, d.Audit, d.Reason
	} else {
		d := e.Exchange(c.Exchange.ToRequest())
		got.allow, got.policy, got.audience, got.scopes, got.reason = d.Allow, d.Policy, d.Audience, d.Scopes, d.Reason
	}
	var out []string
	x := c.Expect
	if x.Allow != nil && *x.Allow != got.allow {
		out = append(out, fmt.Sprintf("got %s, want %s (%s)", word(got.allow), word(*x.Allow), got.reason))
	}
	if x.Policy != nil && *x.Policy != got.policy {
		out = append(out, fmt.Sprintf("got policy %q, want %q (%s)", got.policy, *x.Policy, got.reason))
	}
	if x.Rule != nil && c.Request != nil && *x.Rule != got.rule {
		out = append(out, fmt.Sprintf("got rule %d, want %d", got.rule, *x.Rule))
	}
	if x.Audit != nil && c.Request != nil && *x.Audit != got.audit {
		out = append(out, fmt.Sprintf("got audit %v, want %v", got.audit, *x.Audit))
	}
	if x.Audience != nil && *x.Audience != got.audience {
		out = append(out, fmt.Sprintf("got audience %q, want %q", got.audience, *x.Audience))
	}
	if x.Scopes != nil && !slices.Equal(x.Scopes, got.scopes) {
		out = append(out, fmt.Sprintf("got scopes %q, want %q", got.scopes, x.Scopes))
	}
	return out
}

// Explain loads and compiles the policies of dir, decides req and writes the
// chain of reasoning to w.
func Explain(w io.Writer, dir string, req *Request, opts CompileOptions) (Decision, error) {
	set, err := LoadDir(dir)
	if err != nil {
		return Decision{}, err
	}
	e, err := Compile(set, opts)
	if err != nil {
		return Decision{}, err
	}
	d, lines := e.Explain(req)
	for _, l := range lines {
		fmt.Fprintln(w, l)
	}
	fmt.Fprintf(w, "%s (decision %s)\n", strings.ToUpper(word(d.Allow)), d.DecisionID)
	return d, nil
}
