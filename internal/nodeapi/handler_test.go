package nodeapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"postern.dev/postern/internal/ca"
	"postern.dev/postern/internal/policy"
	"postern.dev/postern/internal/store"
	"postern.dev/postern/internal/testca"
	"postern.dev/postern/internal/token"
)

// wantErr asserts that err is an *Error with status and code.
func wantErr(t *testing.T, err error, status int, code string) *Error {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error = %v, want *Error %d %s", err, status, code)
	}
	if e.Status != status || e.Code != code {
		t.Fatalf("error = %d %s (%s), want %d %s", e.Status, e.Code, e.Description, status, code)
	}
	return e
}

// checkSVID asserts an SVID for id that verifies against the CA's bundle and
// carries exactly the expected SANs.
func (e *env) checkSVID(t *testing.T, s *SVIDResponse, id string, dns []string, ttl time.Duration) {
	t.Helper()
	if s.SPIFFEID != id {
		t.Fatalf("spiffe_id = %s, want %s", s.SPIFFEID, id)
	}
	got, _, err := x509svid.Verify(s.Certificates, e.ca.X509Bundle())
	if err != nil || got.String() != id {
		t.Fatalf("SVID does not verify as %s: %v %v", id, got, err)
	}
	leaf := s.Certificates[0]
	if len(leaf.URIs) != 1 || !slices.Equal(leaf.DNSNames, dns) || leaf.Subject.CommonName != "" {
		t.Errorf("SANs = %v %v CN=%q, want only %s and DNS %v", leaf.URIs, leaf.DNSNames, leaf.Subject.CommonName, id, dns)
	}
	if !leaf.NotAfter.Equal(s.ExpiresAt) {
		t.Errorf("expires_at %s != NotAfter %s", s.ExpiresAt, leaf.NotAfter)
	}
	if life := time.Until(leaf.NotAfter); life > ttl || life < ttl-time.Minute {
		t.Errorf("lifetime %s, want about %s", life, ttl)
	}
}

func TestAttest(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	agentTok := e.joinToken(t, agentA)
	tests := []struct {
		name    string
		method  string
		token   func() string
		role    string
		csr     func() []byte
		status  int
		code    string
		id      string
		dns     []string
		ttl     time.Duration
		setup   func()
		cleanup func()
	}{
		{name: "join token agent", method: MethodJoinToken, token: func() string { return agentTok }, role: RoleAgent, id: agentA, ttl: time.Hour},
		{name: "join token replayed", method: MethodJoinToken, token: func() string { return agentTok }, role: RoleAgent, status: 401, code: CodeAttestationFailed},
		{name: "join token workload", method: MethodJoinToken, token: func() string { return e.joinToken(t, directID) }, role: RoleWorkload, id: directID, dns: []string{"direct.shop.svc"}, ttl: 10 * time.Minute},
		// A Workload with only unix selectors is served through agents:
		// an agent checks the process; a join token cannot.
		{name: "join token for an agent-only workload", method: MethodJoinToken, token: func() string { return e.joinToken(t, webID) }, role: RoleWorkload, status: 403, code: CodeForbidden},
		{name: "join token unknown", method: MethodJoinToken, token: func() string { return strings.Repeat("A", 43) }, role: RoleAgent, status: 401, code: CodeAttestationFailed},
		{name: "join token garbage", method: MethodJoinToken, token: func() string { return "not a token" }, role: RoleAgent, status: 401, code: CodeAttestationFailed},
		{name: "agent token as workload", method: MethodJoinToken, token: func() string { return e.joinToken(t, agentB) }, role: RoleWorkload, status: 403, code: CodeForbidden},
		{name: "workload token as agent", method: MethodJoinToken, token: func() string { return e.joinToken(t, webID) }, role: RoleAgent, status: 403, code: CodeForbidden},
		{name: "join token unknown workload", method: MethodJoinToken, token: func() string { return e.joinToken(t, "spiffe://example.org/ns/shop/sa/ghost") }, role: RoleWorkload, status: 403, code: CodeForbidden},
		{name: "join token server id", method: MethodJoinToken, token: func() string { return e.joinToken(t, "spiffe://example.org/postern/server") }, role: RoleWorkload, status: 403, code: CodeForbidden},
		{name: "join token other trust domain", method: MethodJoinToken, token: func() string { return e.joinToken(t, "spiffe://other.org/postern/agent/x") }, role: RoleAgent, status: 403, code: CodeForbidden},
		{
			name: "join token store down", method: MethodJoinToken, token: func() string { return e.joinToken(t, agentA) }, role: RoleAgent, status: 503, code: CodeUnavailable,
			setup:   func() { e.joins.mu.Lock(); e.joins.fail = errors.New("database is locked"); e.joins.mu.Unlock() },
			cleanup: func() { e.joins.mu.Lock(); e.joins.fail = nil; e.joins.mu.Unlock() },
		},
		{name: "k8s agent", method: MethodK8sPSAT, token: func() string { return "pod-agent" }, role: RoleAgent, id: "spiffe://example.org/postern/agent/k8s/postern/agent/node-7", ttl: time.Hour},
		// Any pod can get a token for the server's audience: only the
		// listed service accounts become agents.
		{name: "k8s pod not listed as an agent", method: MethodK8sPSAT, token: func() string { return "pod-shop-other" }, role: RoleAgent, status: 403, code: CodeForbidden},
		{name: "k8s agent without node", method: MethodK8sPSAT, token: func() string { return "pod-no-node" }, role: RoleAgent, status: 401, code: CodeAttestationFailed},
		{name: "k8s workload mapped by selectors", method: MethodK8sPSAT, token: func() string { return "pod-prod-api" }, role: RoleWorkload, id: mappedID, ttl: time.Hour},
		// db is at ns/shop/sa/db but asks for unix selectors: the
		// ns/sa default is only for Workloads without selectors.
		{name: "k8s workload ns/sa of a Workload with selectors", method: MethodK8sPSAT, token: func() string { return "pod-shop-db" }, role: RoleWorkload, status: 403, code: CodeForbidden},
		{name: "k8s workload ns/sa", method: MethodK8sPSAT, token: func() string { return "pod-shop-bare" }, role: RoleWorkload, id: "spiffe://example.org/ns/shop/sa/bare", ttl: time.Hour},
		{name: "k8s workload unknown", method: MethodK8sPSAT, token: func() string { return "pod-shop-other" }, role: RoleWorkload, status: 403, code: CodeForbidden},
		{name: "k8s token refused", method: MethodK8sPSAT, token: func() string { return "forged" }, role: RoleWorkload, status: 401, code: CodeAttestationFailed},
		{name: "k8s issuer down", method: MethodK8sPSAT, token: func() string { return "down" }, role: RoleWorkload, status: 503, code: CodeUnavailable},
		{name: "csr bad signature", method: MethodJoinToken, token: func() string { return e.joinToken(t, agentA) }, role: RoleAgent, csr: func() []byte { return badSigCSR(t) }, status: 400, code: CodeInvalidRequest},
		{name: "csr missing", method: MethodJoinToken, token: func() string { return e.joinToken(t, agentA) }, role: RoleAgent, csr: func() []byte { return nil }, status: 400, code: CodeInvalidRequest},
		{name: "csr garbage", method: MethodJoinToken, token: func() string { return e.joinToken(t, agentA) }, role: RoleAgent, csr: func() []byte { return []byte("garbage") }, status: 400, code: CodeInvalidRequest},
		{name: "unknown method", method: "tpm", token: func() string { return "x" }, role: RoleAgent, status: 400, code: CodeInvalidRequest},
		{name: "no role", method: MethodJoinToken, token: func() string { return e.joinToken(t, agentA) }, role: "", status: 400, code: CodeInvalidRequest},
		{name: "no token", method: MethodJoinToken, token: func() string { return "" }, role: RoleAgent, status: 400, code: CodeInvalidRequest},
		{name: "token too long", method: MethodK8sPSAT, token: func() string { return strings.Repeat("a", maxTokenBytes+1) }, role: RoleAgent, status: 400, code: CodeInvalidRequest},
	}
	c := e.client(t, nil)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				tc.setup()
			}
			if tc.cleanup != nil {
				defer tc.cleanup()
			}
			key := newKey(t)
			csr := csrFor(t, key)
			if tc.csr != nil {
				csr = tc.csr()
			}
			s, err := c.Attest(ctx, tc.method, tc.token(), tc.role, csr)
			if tc.status != 0 {
				wantErr(t, err, tc.status, tc.code)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			e.checkSVID(t, s, tc.id, tc.dns, tc.ttl)
			if !key.PublicKey.Equal(s.Certificates[0].PublicKey) {
				t.Error("the SVID does not carry the CSR's key")
			}
		})
	}
}

// A CSR that fails does not burn the join token; a role mismatch does.
func TestAttestTokenKeptOnBadInput(t *testing.T) {
	e := newEnv(t)
	c := e.client(t, nil)
	ctx := context.Background()
	tok := e.joinToken(t, agentA)
	_, err := c.Attest(ctx, MethodJoinToken, tok, RoleAgent, badSigCSR(t))
	wantErr(t, err, 400, CodeInvalidRequest)
	if _, err := c.Attest(ctx, MethodJoinToken, tok, RoleAgent, csrFor(t, newKey(t))); err != nil {
		t.Fatalf("token burnt by a bad CSR: %v", err)
	}
	tok = e.joinToken(t, agentA)
	_, err = c.Attest(ctx, MethodJoinToken, tok, RoleWorkload, csrFor(t, newKey(t)))
	wantErr(t, err, 403, CodeForbidden)
	_, err = c.Attest(ctx, MethodJoinToken, tok, RoleAgent, csrFor(t, newKey(t)))
	wantErr(t, err, 401, CodeAttestationFailed)
}

// Two Workloads matching a pod equally are refused, not guessed between.
func TestAttestK8sAmbiguous(t *testing.T) {
	e := newEnv(t)
	e.engine.Store(compilePolicy(t, resources+`---
apiVersion: postern.dev/v1
kind: Workload
metadata: {name: mapped2}
spec:
  spiffeID: spiffe://example.org/apps/mapped2
  selectors: [{type: k8s, value: "ns:prod"}, {type: k8s, value: "pod-name:api-1"}]
---
apiVersion: postern.dev/v1
kind: Workload
metadata: {name: mixed}
spec:
  spiffeID: spiffe://example.org/apps/mixed
  selectors: [{type: k8s, value: "ns:prod"}, {type: k8s, value: "sa:api"}, {type: unix, value: "uid:0"}]
`))
	_, err := e.client(t, nil).Attest(context.Background(), MethodK8sPSAT, "pod-prod-api", RoleWorkload, csrFor(t, newKey(t)))
	if d := wantErr(t, err, 403, CodeForbidden).Description; !strings.Contains(d, "mapped, mapped2") {
		t.Errorf("description %q does not name the Workloads", d)
	}
}

func TestRenew(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	attestAs := func(id, role string) *tlsCertAndClient {
		key := newKey(t)
		s, err := e.client(t, nil).Attest(ctx, MethodJoinToken, e.joinToken(t, id), role, csrFor(t, key))
		if err != nil {
			t.Fatal(err)
		}
		cert := tlsCert(s.Certificates, key)
		return &tlsCertAndClient{cert, e.client(t, cert)}
	}
	agent := attestAs(agentA, RoleAgent)
	web := attestAs(directID, RoleWorkload)

	s, err := agent.c.Renew(ctx, csrFor(t, newKey(t)))
	if err != nil {
		t.Fatal(err)
	}
	e.checkSVID(t, s, agentA, nil, time.Hour)
	s, err = web.c.Renew(ctx, csrFor(t, newKey(t)))
	if err != nil {
		t.Fatal(err)
	}
	e.checkSVID(t, s, directID, []string{"direct.shop.svc"}, 10*time.Minute)

	_, err = e.client(t, nil).Renew(ctx, csrFor(t, newKey(t)))
	wantErr(t, err, 401, CodeUnauthenticated)
	_, err = agent.c.Renew(ctx, badSigCSR(t))
	wantErr(t, err, 400, CodeInvalidRequest)

	// An SVID an agent obtained for a workload is renewed through an
	// agent only: its holder cannot keep it alive after the Workload stops
	// allowing that agent.
	dbKey := newKey(t)
	got, err := agent.c.X509SVIDs(ctx, []X509SVIDRequest{{SPIFFEID: dbID, CSR: csrFor(t, dbKey)}})
	if err != nil || len(got) != 1 {
		t.Fatalf("x509svids for db: %v", err)
	}
	if !ca.IsDelegated(got[0].Certificates[0]) {
		t.Error("an SVID issued through an agent is not marked delegated")
	}
	if ca.IsDelegated(s.Certificates[0]) {
		t.Error("a directly attested SVID is marked delegated")
	}
	db := e.client(t, tlsCert(got[0].Certificates, dbKey))
	_, err = db.Renew(ctx, csrFor(t, newKey(t)))
	wantErr(t, err, 403, CodeForbidden)

	// An SVID attested with a Kubernetes token is not renewed: the pod
	// attests again with its current token, so that the Workload's
	// selectors are checked for every SVID.
	podKey := newKey(t)
	ps, err := e.client(t, nil).Attest(ctx, MethodK8sPSAT, "pod-prod-api", RoleWorkload, csrFor(t, podKey))
	if err != nil {
		t.Fatal(err)
	}
	if !ca.MustReattest(ps.Certificates[0]) || ca.MustReattest(s.Certificates[0]) {
		t.Error("only the SVID attested with a Kubernetes token must be attested again")
	}
	_, err = e.client(t, tlsCert(ps.Certificates, podKey)).Renew(ctx, csrFor(t, newKey(t)))
	wantErr(t, err, 403, CodeForbidden)

	// A Workload that becomes agent-only (unix selectors) stops renewing
	// directly: its SVIDs come through an agent from then on.
	e.engine.Store(compilePolicy(t, strings.Replace(resources, "  svidTTL: 10m\n  dnsNames: [direct.shop.svc]\n", "  selectors: [{type: unix, value: \"uid:3000\"}]\n", 1)))
	_, err = web.c.Renew(ctx, csrFor(t, newKey(t)))
	wantErr(t, err, 403, CodeForbidden)
	e.engine.Store(compilePolicy(t, resources))

	// A deleted Workload stops renewing; agents go on.
	e.engine.Store(compilePolicy(t, "apiVersion: postern.dev/v1\nkind: Workload\nmetadata: {name: db}\nspec: {spiffeID: \"spiffe://example.org/ns/shop/sa/db\"}\n"))
	_, err = web.c.Renew(ctx, csrFor(t, newKey(t)))
	wantErr(t, err, 403, CodeForbidden)
	if _, err := agent.c.Renew(ctx, csrFor(t, newKey(t))); err != nil {
		t.Fatal(err)
	}
}

// TestAgentRegistry: an agent's certificates work only while it is
// registered and only the two newest: evicting it, or attesting it again,
// cuts off every certificate issued before, at once.
func TestAgentRegistry(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	attestAgent := func() (*tls.Certificate, *Client) {
		key := newKey(t)
		s, err := e.client(t, nil).Attest(ctx, MethodJoinToken, e.joinToken(t, agentA), RoleAgent, csrFor(t, key))
		if err != nil {
			t.Fatal(err)
		}
		cert := tlsCert(s.Certificates, key)
		return cert, e.client(t, cert)
	}
	_, first := attestAgent()
	if _, err := first.Workloads(ctx); err != nil {
		t.Fatalf("registered agent: %v", err)
	}
	rec, err := e.agents.Agent(ctx, agentA)
	if err != nil || rec.Method != MethodJoinToken || rec.Serial == "" {
		t.Fatalf("registration %+v, %v", rec, err)
	}

	// Renewal moves the registration to the new certificate; the old one
	// still works (its answer may have been lost), and renews once more.
	key := newKey(t)
	s, err := first.Renew(ctx, csrFor(t, key))
	if err != nil {
		t.Fatal(err)
	}
	renewed := e.client(t, tlsCert(s.Certificates, key))
	if _, err := first.Workloads(ctx); err != nil {
		t.Fatalf("previous certificate before the new one is used: %v", err)
	}
	// Once the new certificate is used, the previous one is done: a copy of
	// it cannot renew and take the identity over.
	if _, err := renewed.Workloads(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = first.Workloads(ctx)
	wantErr(t, err, 403, CodeForbidden)
	_, err = first.Renew(ctx, csrFor(t, newKey(t)))
	wantErr(t, err, 403, CodeForbidden)

	// A second attestation under the same ID supersedes both.
	_, second := attestAgent()
	for _, c := range []*Client{first, renewed} {
		_, err := c.Workloads(ctx)
		wantErr(t, err, 403, CodeForbidden)
		_, err = c.Renew(ctx, csrFor(t, newKey(t)))
		wantErr(t, err, 403, CodeForbidden)
	}
	if _, err := second.X509SVIDs(ctx, []X509SVIDRequest{{SPIFFEID: dbID, CSR: csrFor(t, newKey(t))}}); err != nil {
		t.Fatalf("re-attested agent: %v", err)
	}

	// The registry down: the registration this server read last stands
	// in for it (the last good state); nothing it has not seen is waved
	// through, and nothing new is recorded.
	e.agents.mu.Lock()
	e.agents.fail = errors.New("database is locked")
	e.agents.mu.Unlock()
	if _, err := second.Workloads(ctx); err != nil {
		t.Errorf("registry down, registration seen before: %v", err)
	}
	_, err = first.Workloads(ctx)
	wantErr(t, err, 403, CodeForbidden)
	_, err = e.client(t, e.svidUnregistered(t, agentB)).Workloads(ctx)
	wantErr(t, err, 503, CodeUnavailable)
	_, err = e.client(t, nil).Attest(ctx, MethodJoinToken, e.joinToken(t, agentA), RoleAgent, csrFor(t, newKey(t)))
	wantErr(t, err, 503, CodeUnavailable)
	e.agents.mu.Lock()
	e.agents.fail = nil
	e.agents.mu.Unlock()

	// Evicted: every endpoint, renewal included, refuses it.
	e.agents.delete(agentA)
	_, err = second.Workloads(ctx)
	wantErr(t, err, 403, CodeForbidden)
	_, _, err = second.JWTSVID(ctx, dbID, []string{"x"})
	wantErr(t, err, 403, CodeForbidden)
	_, err = second.Renew(ctx, csrFor(t, newKey(t)))
	wantErr(t, err, 403, CodeForbidden)
}

type tlsCertAndClient struct {
	cert *tls.Certificate
	c    *Client
}

// The handler verifies the peer chain itself, whatever the TLS layer did.
func TestPeerVerification(t *testing.T) {
	e := newEnv(t)
	foreign := testca.New(t, "example.org").SVID(t, agentA)
	other := testca.New(t, "other.org").SVID(t, "spiffe://other.org/postern/agent/x")
	own := e.svid(t, agentA)
	tests := []struct {
		name   string
		certs  func() *tls.ConnectionState
		now    time.Time
		status int
	}{
		{"no TLS", func() *tls.ConnectionState { return nil }, time.Time{}, 401},
		{"no certificate", func() *tls.ConnectionState { return &tls.ConnectionState{} }, time.Time{}, 401},
		{"foreign CA", func() *tls.ConnectionState {
			return &tls.ConnectionState{PeerCertificates: []*x509.Certificate{foreign.Cert}}
		}, time.Time{}, 401},
		{"other trust domain", func() *tls.ConnectionState {
			return &tls.ConnectionState{PeerCertificates: []*x509.Certificate{other.Cert}}
		}, time.Time{}, 401},
		{"expired", func() *tls.ConnectionState {
			return &tls.ConnectionState{PeerCertificates: []*x509.Certificate{own.Leaf}}
		}, time.Now().Add(2 * time.Hour), 401},
		{"valid", func() *tls.ConnectionState {
			return &tls.ConnectionState{PeerCertificates: []*x509.Certificate{own.Leaf}}
		}, time.Time{}, 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := e.h
			if !tc.now.IsZero() {
				h = e.handlerWith(t, func(c *Config) { c.Now = func() time.Time { return tc.now } })
			}
			r := httptest.NewRequest("GET", PathWorkloads, nil)
			r.TLS = tc.certs()
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", w.Code, tc.status, w.Body)
			}
			if tc.status == 401 && !strings.Contains(w.Body.String(), `"error":"unauthenticated"`) {
				t.Errorf("body %s", w.Body)
			}
		})
	}
}

func TestWorkloads(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	ids := func(ws []WorkloadEntry) []string {
		var out []string
		for _, w := range ws {
			out = append(out, w.SPIFFEID)
		}
		return out
	}
	ws, err := e.client(t, e.svid(t, agentA)).Workloads(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// mapped has only k8s selectors: no agent can ever serve it.
	if got := ids(ws); !slices.Equal(got, []string{dbID, webID}) {
		t.Errorf("agent A sees %v", got)
	}
	for _, w := range ws {
		switch w.SPIFFEID {
		case webID:
			if w.TTL != 10*time.Minute || !slices.Equal(w.DNSNames, []string{"web.shop.svc"}) ||
				!slices.Equal(w.Selectors, []policy.AttestationSelector{{Type: "unix", Value: "uid:1000"}}) {
				t.Errorf("web = %+v", w)
			}
		case dbID:
			if w.TTL != time.Hour || len(w.Selectors) != 1 {
				t.Errorf("db = %+v", w)
			}
		}
	}
	ws, err = e.client(t, e.svid(t, agentB)).Workloads(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(ws); !slices.Equal(got, []string{dbID}) {
		t.Errorf("agent B sees %v (web allows only agent A)", got)
	}
	// Nor may an agent obtain its SVIDs.
	_, err = e.client(t, e.svid(t, agentA)).X509SVIDs(ctx, []X509SVIDRequest{{SPIFFEID: mappedID, CSR: csrFor(t, newKey(t))}})
	wantErr(t, err, 403, CodeForbidden)
	_, err = e.client(t, e.svid(t, webID)).Workloads(ctx)
	wantErr(t, err, 403, CodeForbidden)
	_, err = e.client(t, nil).Workloads(ctx)
	wantErr(t, err, 401, CodeUnauthenticated)
}

func TestX509SVIDs(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	a := e.client(t, e.svid(t, agentA))
	req := func(id string) X509SVIDRequest { return X509SVIDRequest{SPIFFEID: id, CSR: csrFor(t, newKey(t))} }
	svids, err := a.X509SVIDs(ctx, []X509SVIDRequest{req(webID), req(dbID)})
	if err != nil {
		t.Fatal(err)
	}
	e.checkSVID(t, &svids[0], webID, []string{"web.shop.svc"}, 10*time.Minute)
	e.checkSVID(t, &svids[1], dbID, nil, time.Hour)

	many := make([]X509SVIDRequest, MaxX509SVIDRequests+1)
	for i := range many {
		many[i] = X509SVIDRequest{SPIFFEID: dbID, CSR: []byte{1}}
	}
	tests := []struct {
		name   string
		caller string
		reqs   []X509SVIDRequest
		status int
		code   string
		names  string
	}{
		{"agent not allowed by Workload.agents", agentB, []X509SVIDRequest{req(dbID), req(webID)}, 403, CodeForbidden, webID},
		{"non-agent asks for others", webID, []X509SVIDRequest{req(dbID)}, 403, CodeForbidden, webID},
		{"unknown workload", agentA, []X509SVIDRequest{req("spiffe://example.org/ns/x/sa/ghost")}, 403, CodeForbidden, "ghost"},
		{"agent id is no workload", agentA, []X509SVIDRequest{req(agentB)}, 403, CodeForbidden, agentB},
		{"server id is no workload", agentA, []X509SVIDRequest{req("spiffe://example.org/postern/server")}, 403, CodeForbidden, "postern/server"},
		{"bad spiffe id", agentA, []X509SVIDRequest{req("https://example.org/x")}, 400, CodeInvalidRequest, "spiffe_id"},
		{"bad csr signature", agentA, []X509SVIDRequest{req(dbID), {SPIFFEID: webID, CSR: badSigCSR(t)}}, 400, CodeInvalidRequest, webID},
		{"empty", agentA, nil, 400, CodeInvalidRequest, "empty"},
		{"too many", agentA, many, 400, CodeInvalidRequest, "more than 64"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.client(t, e.svid(t, tc.caller)).X509SVIDs(ctx, tc.reqs)
			if d := wantErr(t, err, tc.status, tc.code).Description; !strings.Contains(d, tc.names) {
				t.Errorf("description %q does not say %q", d, tc.names)
			}
		})
	}
}

func TestJWTSVID(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	raw, exp, err := e.client(t, e.svid(t, agentA)).JWTSVID(ctx, webID, []string{"https://sts.example.org/oauth2/token", "other"})
	if err != nil {
		t.Fatal(err)
	}
	ks, err := token.NewStaticKeySet(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: e.key.Public, KeyID: e.key.ID, Algorithm: "ES256"}}})
	if err != nil {
		t.Fatal(err)
	}
	v, err := token.NewVerifier(token.VerifierConfig{Issuer: testIss, Audience: "other", Keys: ks, Types: []string{"JWT"}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(ctx, raw)
	if err != nil {
		t.Fatalf("JWT-SVID does not verify: %v", err)
	}
	if c.Subject != webID || c.Expiry.Sub(c.IssuedAt) != DefaultJWTSVIDTTL || !c.Expiry.Equal(exp.Truncate(time.Second)) {
		t.Errorf("claims %+v, exp %s", c, exp)
	}
	hdr, _, _ := strings.Cut(raw, ".")
	hb, _ := base64.RawURLEncoding.DecodeString(hdr)
	var h map[string]any
	_ = json.Unmarshal(hb, &h)
	if h["typ"] != "JWT" || h["kid"] != e.key.ID || h["alg"] != "ES256" {
		t.Errorf("header %v", h)
	}

	long := strings.Repeat("a", MaxAudienceBytes+1)
	tests := []struct {
		name   string
		caller string
		id     string
		aud    []string
		status int
		code   string
	}{
		{"agent not allowed", agentB, webID, []string{"x"}, 403, CodeForbidden},
		{"non-agent", dbID, dbID, []string{"x"}, 403, CodeForbidden},
		{"unknown workload", agentA, "spiffe://example.org/ghost", []string{"x"}, 403, CodeForbidden},
		{"no audience", agentA, dbID, nil, 400, CodeInvalidRequest},
		{"empty audience", agentA, dbID, []string{""}, 400, CodeInvalidRequest},
		{"too many audiences", agentA, dbID, []string{"1", "2", "3", "4", "5", "6", "7", "8", "9"}, 400, CodeInvalidRequest},
		{"audience too long", agentA, dbID, []string{long}, 400, CodeInvalidRequest},
		{"bad id", agentA, "db", []string{"x"}, 400, CodeInvalidRequest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := e.client(t, e.svid(t, tc.caller)).JWTSVID(ctx, tc.id, tc.aud)
			wantErr(t, err, tc.status, tc.code)
		})
	}
	t.Run("no signing key", func(t *testing.T) {
		h := e.handlerWith(t, func(c *Config) { c.Keys = staticKeys{} })
		r := httptest.NewRequest("POST", PathJWTSVID, strings.NewReader(`{"spiffe_id":"`+dbID+`","audience":["x"]}`))
		r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{e.svid(t, agentA).Leaf}}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != 503 {
			t.Errorf("status %d: %s", w.Code, w.Body)
		}
	})
}

// handlerWith returns a handler like e's with its config changed by mut.
func (e *env) handlerWith(t *testing.T, mut func(*Config)) *Handler {
	t.Helper()
	cfg := e.h.cfg
	mut(&cfg)
	h, err := NewHandler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// rawPost sends body as is, with the agent's SVID.
func (e *env) rawPost(t *testing.T, method, path, contentType string, body io.Reader) (int, errorBody) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: e.pool, Certificates: []tls.Certificate{*e.svid(t, agentA)},
	}}}
	req, err := http.NewRequest(method, e.srv.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var eb errorBody
	if resp.StatusCode != 200 {
		if err := json.NewDecoder(resp.Body).Decode(&eb); err != nil {
			t.Fatalf("error body is not JSON: %v", err)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
	}
	return resp.StatusCode, eb
}

func TestBadRequests(t *testing.T) {
	e := newEnv(t)
	csr := base64.StdEncoding.EncodeToString(csrFor(t, newKey(t)))
	huge := `{"spiffe_id":"` + dbID + `","audience":["` + strings.Repeat("a", MaxBodyBytes) + `"]}`
	tests := []struct {
		name, method, path, ct string
		body                   io.Reader
		status                 int
		code, desc             string
	}{
		{"unknown field", "POST", PathAttest, "application/json", strings.NewReader(`{"method":"join_token","token":"x","role":"agent","csr":"` + csr + `","spiffe_id":"spiffe://example.org/x"}`), 400, CodeInvalidRequest, `unknown field "spiffe_id"`},
		{"unknown field nested", "POST", PathX509SVIDs, "application/json", strings.NewReader(`{"requests":[{"spiffe_id":"` + dbID + `","csr":"` + csr + `","ttl":1}]}`), 400, CodeInvalidRequest, `unknown field "ttl"`},
		{"body too large", "POST", PathJWTSVID, "application/json", strings.NewReader(huge), 400, CodeInvalidRequest, "larger than 65536"},
		{"body too large, chunked", "POST", PathJWTSVID, "application/json", io.MultiReader(strings.NewReader(huge)), 400, CodeInvalidRequest, "larger than 65536"},
		{"trailing data", "POST", PathJWTSVID, "application/json", strings.NewReader(`{"spiffe_id":"` + dbID + `","audience":["x"]} {}`), 400, CodeInvalidRequest, "trailing"},
		{"not json", "POST", PathJWTSVID, "application/json", strings.NewReader(`spiffe_id=x`), 400, CodeInvalidRequest, "malformed"},
		{"empty body", "POST", PathJWTSVID, "application/json", strings.NewReader(``), 400, CodeInvalidRequest, "empty"},
		{"wrong type", "POST", PathJWTSVID, "application/json", strings.NewReader(`{"spiffe_id":1}`), 400, CodeInvalidRequest, "malformed"},
		{"bad base64", "POST", PathRenew, "application/json", strings.NewReader(`{"csr":"!!!"}`), 400, CodeInvalidRequest, "base64"},
		{"form content type", "POST", PathJWTSVID, "application/x-www-form-urlencoded", strings.NewReader(`{}`), 400, CodeInvalidRequest, "application/json"},
		{"wrong method", "GET", PathAttest, "", nil, 405, CodeMethodNotAllowed, "POST"},
		{"unknown path", "GET", Prefix + "nothing", "", nil, 404, CodeNotFound, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, eb := e.rawPost(t, tc.method, tc.path, tc.ct, tc.body)
			if status != tc.status || eb.Error != tc.code || !strings.Contains(eb.Description, tc.desc) {
				t.Errorf("got %d %s %q, want %d %s containing %q", status, eb.Error, eb.Description, tc.status, tc.code, tc.desc)
			}
		})
	}
}

// The audit log has a line per issuance and refusal, and never a token or
// a CSR.
func TestAudit(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	tok := e.joinToken(t, agentA)
	csr := csrFor(t, newKey(t))
	c := e.client(t, nil)
	if _, err := c.Attest(ctx, MethodJoinToken, tok, RoleAgent, csr); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Attest(ctx, MethodJoinToken, tok, RoleAgent, csr); err == nil {
		t.Fatal("replay accepted")
	}
	if _, err := c.Attest(ctx, MethodK8sPSAT, "pod-shop-other", RoleWorkload, csr); err == nil {
		t.Fatal("unknown workload accepted")
	}
	log := e.audit.String()
	lines := strings.Split(strings.TrimSpace(log), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d audit lines:\n%s", len(lines), log)
	}
	var first, second map[string]any
	_ = json.Unmarshal([]byte(lines[0]), &first)
	_ = json.Unmarshal([]byte(lines[1]), &second)
	if first["msg"] != "nodeapi: issued" || first["spiffe_id"] != agentA || first["attestation_method"] != "join_token" || first["expires_at"] == nil {
		t.Errorf("issue line %v", first)
	}
	if second["msg"] != "nodeapi: refused" || second["status"] != float64(401) || second["cause"] == nil {
		t.Errorf("refusal line %v", second)
	}
	if !strings.Contains(lines[2], `"spiffe_id":"spiffe://example.org/ns/shop/sa/other"`) {
		t.Errorf("refusal line does not name the identity: %s", lines[2])
	}
	for _, secret := range []string{tok, base64.StdEncoding.EncodeToString(csr), "pod-shop-other"} {
		if strings.Contains(log, secret) {
			t.Errorf("audit log contains a secret %q", secret[:8])
		}
	}
}

func TestNewHandlerConfig(t *testing.T) {
	ok := Config{TrustDomain: testTD, CA: newCA(t), Keys: staticKeys{}, Issuer: testIss, Policy: func() *policy.Engine { return nil }, Agents: &memAgents{}}
	for name, mut := range map[string]func(*Config){
		"trust domain": func(c *Config) { c.TrustDomain = spiffeid.TrustDomain{} },
		"ca":           func(c *Config) { c.CA = nil },
		"keys":         func(c *Config) { c.Keys = nil },
		"issuer":       func(c *Config) { c.Issuer = "" },
		"policy":       func(c *Config) { c.Policy = nil },
		"agents":       func(c *Config) { c.Agents = nil },
		"k8s agents":   func(c *Config) { c.K8sAgents = []string{"no-colon"} },
		"negative":     func(c *Config) { c.JWTSVIDTTL = -1 },
	} {
		cfg := ok
		mut(&cfg)
		if _, err := NewHandler(cfg); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	h, err := NewHandler(ok)
	if err != nil {
		t.Fatal(err)
	}
	// No resources loaded yet: 503, never an SVID.
	r := httptest.NewRequest("POST", PathAttest, strings.NewReader(`{"method":"k8s_psat","token":"x","role":"agent","csr":"`+base64.StdEncoding.EncodeToString(csrFor(t, newKey(t)))+`"}`))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != 503 {
		t.Errorf("status %d: %s", w.Code, w.Body)
	}
}

// TestNoAgentForWorkloadsWithoutSelectors: a Workload no local process can
// be attested as is neither listed to agents nor issued to them.
func TestNoAgentForWorkloadsWithoutSelectors(t *testing.T) {
	e := newEnv(t)
	c := e.client(t, e.svid(t, agentA))
	csr := csrFor(t, newKey(t))
	_, err := c.X509SVIDs(context.Background(), []X509SVIDRequest{{SPIFFEID: "spiffe://example.org/ns/shop/sa/bare", CSR: csr}})
	var ne *Error
	if !errors.As(err, &ne) || ne.Status != 403 || !strings.Contains(ne.Description, "no selectors") {
		t.Fatalf("x509svids for bare: %v", err)
	}
	if _, _, err := c.JWTSVID(context.Background(), "spiffe://example.org/ns/shop/sa/bare", []string{"x"}); !errors.As(err, &ne) || ne.Status != 403 {
		t.Fatalf("jwtsvid for bare: %v", err)
	}
}

// The last registration read stands in for a failing store for agentGrace,
// not longer; an eviction seen before is never undone by it.
func TestAgentRegistryGrace(t *testing.T) {
	now := time.Now()
	reg := &memAgents{}
	h, err := NewHandler(Config{TrustDomain: testTD, CA: newCA(t), Keys: staticKeys{}, Issuer: testIss,
		Policy: func() *policy.Engine { return nil }, Agents: reg, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	id := spiffeid.RequireFromString(agentA)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(0xabc)}
	_ = reg.PutAgent(ctx, store.Agent{SPIFFEID: agentA, Serial: "abc"})
	if aerr := h.registered(ctx, id, leaf); aerr != nil {
		t.Fatal(aerr)
	}
	reg.fail = errors.New("store down")
	now = now.Add(agentGrace - time.Second)
	if aerr := h.registered(ctx, id, leaf); aerr != nil {
		t.Errorf("within the grace period: %v", aerr)
	}
	now = now.Add(2 * time.Second)
	if aerr := h.registered(ctx, id, leaf); aerr == nil || aerr.status != 503 {
		t.Errorf("after the grace period: %v", aerr)
	}
	reg.fail = nil
	reg.delete(agentA)
	if aerr := h.registered(ctx, id, leaf); aerr == nil || aerr.status != 403 {
		t.Errorf("evicted: %v", aerr)
	}
	reg.fail = errors.New("store down")
	if aerr := h.registered(ctx, id, leaf); aerr == nil || aerr.status != 503 {
		t.Errorf("evicted, then the store down: %v", aerr)
	}
}
