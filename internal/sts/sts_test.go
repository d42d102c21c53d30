package sts

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"postern.dev/postern/internal/token"
)

func TestExchangeFromExternalIssuer(t *testing.T) {
	h := newHarness(t)
	user := h.userToken("alice", "orders:read orders:write admin")
	raw, c := h.exchange(gatewayID, user, ordersID, "")
	hdr, _, err := token.ParseUnverified(raw)
	if err != nil {
		t.Fatal(err)
	}
	if hdr.Type != token.TypeAccessToken || hdr.Algorithm != "ES256" || hdr.KeyID != "sts-key-1" {
		t.Errorf("header = %+v, want typ at+jwt, ES256, kid sts-key-1", hdr)
	}
	if c.Subject != "alice" || c.Issuer != testIssuer || !slices.Equal(c.Audience, []string{ordersID}) {
		t.Errorf("sub/iss/aud = %q %q %v", c.Subject, c.Issuer, c.Audience)
	}
	if c.ClientID != gatewayID {
		t.Errorf("client_id = %q", c.ClientID)
	}
	// admin is not in the policy's ceiling: scopes only narrow.
	if c.Scope != "orders:read orders:write" {
		t.Errorf("scope = %q", c.Scope)
	}
	if got := c.Act.Chain(); !slices.Equal(got, []string{gatewayID}) {
		t.Errorf("act chain = %v", got)
	}
	if c.Cnf == nil || c.Cnf.X5tS256 != token.Thumbprint(h.svid(gatewayID).Cert) {
		t.Errorf("cnf = %+v, want the gateway certificate's thumbprint", c.Cnf)
	}
	// email passes (policy and issuer allow it); name is allowed by the
	// policy but not by the TrustedIssuer; groups by neither.
	if c.Extra["email"] != "alice@example.com" || c.Extra["name"] != nil || c.Extra["groups"] != nil {
		t.Errorf("carried claims = %v", c.Extra)
	}
	if c.SessionID == "" || c.SessionID != c.ID {
		t.Errorf("sid = %q, jti = %q: the first token of a chain starts its session", c.SessionID, c.ID)
	}
	if got := c.Expiry.Sub(h.now); got != 5*time.Minute {
		t.Errorf("lifetime = %v, want the 5m default", got)
	}
	if !c.NotBefore.Equal(h.now) || !c.IssuedAt.Equal(h.now) {
		t.Errorf("nbf/iat = %v/%v", c.NotBefore, c.IssuedAt)
	}
}

func TestExchangeChainThreeHops(t *testing.T) {
	h := newHarness(t)
	user := h.userToken("alice", "orders:read orders:write")
	t1, c1 := h.exchange(gatewayID, user, ordersID, "")
	t2, c2 := h.exchange(ordersID, t1, "inventory-api", "")
	_, c3 := h.exchange(invID, t2, shipID, "")

	if got := c2.Act.Chain(); !slices.Equal(got, []string{ordersID, gatewayID}) {
		t.Errorf("hop 2 act chain = %v", got)
	}
	if got := c3.Act.Chain(); !slices.Equal(got, []string{invID, ordersID, gatewayID}) {
		t.Errorf("hop 3 act chain = %v", got)
	}
	for i, c := range []*token.Claims{c1, c2, c3} {
		if c.Subject != "alice" {
			t.Errorf("hop %d sub = %q", i+1, c.Subject)
		}
		if c.SessionID != c1.SessionID {
			t.Errorf("hop %d sid = %q, want the session of hop 1 %q", i+1, c.SessionID, c1.SessionID)
		}
	}
	if !slices.Equal(c2.Audience, []string{"inventory-api"}) {
		t.Errorf("hop 2 aud = %v, want the workload's audience", c2.Audience)
	}
	if c2.Scope != "orders:read orders:write" || c2.Extra["email"] != "alice@example.com" {
		t.Errorf("hop 2 scope %q claims %v", c2.Scope, c2.Extra)
	}
	if got := c2.Expiry.Sub(h.now); got != 2*time.Minute {
		t.Errorf("hop 2 lifetime = %v, want the policy's 2m", got)
	}
	// The inventory-to-shipping policy names no scope ceiling and no claims.
	if c3.Scope != "orders:read orders:write" || c3.Extra["email"] != nil {
		t.Errorf("hop 3 scope %q claims %v", c3.Scope, c3.Extra)
	}
	// Nothing widens: hop 3 cannot outlive hop 2.
	if c3.Expiry.After(c2.Expiry) {
		t.Errorf("hop 3 expires %v after its subject token %v", c3.Expiry, c2.Expiry)
	}
}

func TestExchangeRefusals(t *testing.T) {
	h := newHarness(t)
	user := h.userToken("alice", "orders:read orders:write")
	readOnly := h.userToken("bob", "orders:read")
	t1, _ := h.exchange(gatewayID, user, ordersID, "")
	tRead, _ := h.exchange(gatewayID, readOnly, ordersID, "")
	t2, _ := h.exchange(ordersID, t1, "inventory-api", "")
	expiredUser := h.userToken("alice", "orders:read", func(c *token.Claims) { c.Expiry = h.now.Add(-time.Hour); c.IssuedAt = h.now.Add(-2 * time.Hour) })
	wrongAud := h.userToken("alice", "orders:read", func(c *token.Claims) { c.Audience = []string{"elsewhere"} })
	otherKey := testKeySigner(t, "idp-1")
	forged, _ := otherKey.Sign(&token.Claims{Issuer: idpIssuer, Subject: "alice", Audience: []string{"shop"}, Expiry: h.now.Add(time.Hour)})
	untrusted, _ := testKeySigner(t, "x").Sign(&token.Claims{Issuer: "https://evil.test", Subject: "alice", Audience: []string{"shop"}, Expiry: h.now.Add(time.Hour)})
	mayAct := h.userToken("alice", "orders:read", func(c *token.Claims) { c.MayAct = &token.Actor{Subject: "spiffe://shop.test/ns/shop/sa/other"} })
	none := "eyJhbGciOiJub25lIn0." + b64json(map[string]any{"iss": idpIssuer, "sub": "alice", "aud": "shop", "exp": h.now.Add(time.Hour).Unix()}) + "."

	tests := []struct {
		name             string
		client           string
		subject, subType string
		audience, scope  string
		extra            url.Values
		status           int
		code             string
		desc             string
	}{
		{name: "confused deputy: finance for a user", client: ordersID, subject: t1, audience: financeID, status: 403, code: "access_denied", desc: "nobody-to-finance"},
		{name: "no policy for this client and audience", client: gatewayID, subject: user, audience: invID, status: 403, code: "access_denied"},
		{name: "CEL condition false", client: ordersID, subject: tRead, audience: "inventory-api", status: 403, code: "access_denied"},
		{name: "token not addressed to the client", client: invID, subject: t1, audience: shipID, status: 400, code: "invalid_grant", desc: "not addressed to client"},
		{name: "token replayed by its own audience's neighbour", client: gatewayID, subject: t2, audience: ordersID, status: 400, code: "invalid_grant"},
		{name: "scope widening", client: gatewayID, subject: readOnly, audience: ordersID, scope: "orders:write", status: 400, code: "invalid_scope", desc: `"orders:write"`},
		{name: "scope outside the policy", client: gatewayID, subject: user, audience: ordersID, scope: "admin", status: 400, code: "invalid_scope"},
		{name: "expired subject token", client: gatewayID, subject: expiredUser, audience: ordersID, status: 400, code: "invalid_grant", desc: "expired"},
		{name: "subject token audience not accepted", client: gatewayID, subject: wrongAud, audience: ordersID, status: 400, code: "invalid_grant", desc: `subject_token audience ["elsewhere"] is not accepted for issuer "` + idpIssuer + `" (accepted: ["shop"])`},
		{name: "forged signature", client: gatewayID, subject: forged, audience: ordersID, status: 400, code: "invalid_grant", desc: "signature"},
		{name: "untrusted issuer", client: gatewayID, subject: untrusted, audience: ordersID, status: 400, code: "invalid_grant", desc: "not trusted"},
		{name: "alg none", client: gatewayID, subject: none, audience: ordersID, status: 400, code: "invalid_grant", desc: "algorithm"},
		{name: "may_act names someone else", client: gatewayID, subject: mayAct, audience: ordersID, status: 400, code: "invalid_grant", desc: "may_act"},
		{name: "malformed subject token", client: gatewayID, subject: "not-a-jwt", audience: ordersID, status: 400, code: "invalid_request"},
		{name: "oversized subject token", client: gatewayID, subject: strings.Repeat("a", 17<<10), audience: ordersID, status: 400, code: "invalid_request", desc: "exceeds"},
		{name: "unknown audience", client: gatewayID, subject: user, audience: "spiffe://shop.test/ns/x/sa/nope", status: 400, code: "invalid_target"},
		{name: "audience and resource disagree", client: gatewayID, subject: user, audience: ordersID, extra: url.Values{"resource": {invID}}, status: 400, code: "invalid_target"},
		{name: "missing subject_token_type", client: gatewayID, subject: user, subType: "-", audience: ordersID, status: 400, code: "invalid_request"},
		{name: "bad requested_token_type", client: gatewayID, subject: user, audience: ordersID, extra: url.Values{"requested_token_type": {"urn:ietf:params:oauth:token-type:saml2"}}, status: 400, code: "invalid_request"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			typ := tc.subType
			switch typ {
			case "":
				typ = TokenTypeJWT
			case "-":
				typ = ""
			}
			f := exchangeForm(tc.subject, typ, tc.audience, tc.scope)
			for k, v := range tc.extra {
				f[k] = v
			}
			r := h.post(PathToken, f, h.asPeer(tc.client))
			if r.status != tc.status || r.str("error") != tc.code {
				t.Fatalf("got %d %s (%s), want %d %s", r.status, r.str("error"), r.str("error_description"), tc.status, tc.code)
			}
			if !strings.Contains(r.str("error_description"), tc.desc) {
				t.Errorf("error_description %q does not mention %q", r.str("error_description"), tc.desc)
			}
			if r.header.Get("X-Decision-Id") == "" {
				t.Error("no decision id")
			}
			if strings.Contains(r.raw, tc.subject[:min(len(tc.subject), 40)]) && len(tc.subject) > 20 {
				t.Error("the response echoes the token")
			}
		})
	}
}

func testKeySigner(t *testing.T, kid string) *token.Signer {
	t.Helper()
	k := testKeyPair(t)
	s, err := token.NewSigner(kid, jose.ES256, k, "JWT")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestExchangeAudienceDefaultAndResource(t *testing.T) {
	h := newHarness(t)
	user := h.userToken("alice", "orders:read")
	// The gateway's policies allow exactly one target: audience may be omitted.
	r := h.post(PathToken, exchangeForm(user, TokenTypeJWT, "", ""), h.asPeer(gatewayID))
	if r.status != 200 {
		t.Fatalf("no audience: %d %s", r.status, r.raw)
	}
	if c := h.verify(r.str("access_token"), ordersID); c == nil {
		t.Fatal("no claims")
	}
	if r.str("issued_token_type") != TokenTypeAccessToken || r.str("token_type") != "Bearer" || r.body["expires_in"].(float64) != 300 {
		t.Errorf("response = %v", r.body)
	}
	if r.header.Get("Cache-Control") != "no-store" {
		t.Errorf("Cache-Control = %q", r.header.Get("Cache-Control"))
	}
	// resource (RFC 8707) works like audience, by SPIFFE ID or audience.
	f := exchangeForm(user, TokenTypeJWT, "", "")
	f.Set("resource", ordersID)
	if r := h.post(PathToken, f, h.asPeer(gatewayID)); r.status != 200 {
		t.Fatalf("resource: %d %s", r.status, r.raw)
	}
	// Only access tokens: a plain JWT from this issuer would pass for a
	// JWT-SVID of its subject.
	f = exchangeForm(user, TokenTypeJWT, ordersID, "")
	f.Set("requested_token_type", TokenTypeJWT)
	r = h.post(PathToken, f, h.asPeer(gatewayID))
	if r.status != 400 || r.str("error") != "invalid_request" {
		t.Fatalf("jwt: %d %s", r.status, r.raw)
	}
}

func TestExchangeLifetimeNeverBeyondSubject(t *testing.T) {
	h := newHarness(t)
	user := h.userToken("alice", "orders:read", func(c *token.Claims) { c.Expiry = h.now.Add(90 * time.Second) })
	_, c := h.exchange(gatewayID, user, ordersID, "")
	if !c.Expiry.Equal(h.now.Add(90 * time.Second)) {
		t.Errorf("exp = %v, want the subject token's %v", c.Expiry, h.now.Add(90*time.Second))
	}
}

func TestExchangeChainDepthCap(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxChainDepth = 2 })
	user := h.userToken("alice", "orders:read orders:write")
	t1, _ := h.exchange(gatewayID, user, ordersID, "")
	t2, _ := h.exchange(ordersID, t1, "inventory-api", "")
	r := h.post(PathToken, exchangeForm(t2, TokenTypeAccessToken, shipID, ""), h.asPeer(invID))
	if r.status != 400 || r.str("error") != "invalid_grant" || !strings.Contains(r.str("error_description"), "limit is 2") {
		t.Fatalf("got %d %s", r.status, r.raw)
	}
}

func TestMayActAllowsNamedActor(t *testing.T) {
	h := newHarness(t)
	user := h.userToken("alice", "orders:read", func(c *token.Claims) { c.MayAct = &token.Actor{Subject: gatewayID} })
	if _, c := h.exchange(gatewayID, user, ordersID, ""); c.Subject != "alice" {
		t.Fatal("wrong subject")
	}
}

func TestClientCredentials(t *testing.T) {
	h := newHarness(t)
	h.store.secrets = append(h.store.secrets, secretFor(h, batchID, "s3cret"))
	f := url.Values{"grant_type": {GrantClientCredentials}, "audience": {"inventory-api"}, "scope": {"stock:read"}}
	r := h.post(PathToken, f, basic(batchID, "s3cret"))
	if r.status != 200 {
		t.Fatalf("%d %s", r.status, r.raw)
	}
	c := h.verify(r.str("access_token"), "inventory-api")
	if c.Subject != batchID || c.Act != nil || c.Cnf != nil || c.Scope != "stock:read" || c.ClientID != batchID {
		t.Errorf("claims = %+v", c)
	}
	if _, ok := r.body["issued_token_type"]; ok {
		t.Error("issued_token_type is for token exchange only")
	}
	// A client with no client-credentials policy.
	r = h.post(PathToken, url.Values{"grant_type": {GrantClientCredentials}, "audience": {"inventory-api"}}, h.asPeer(gatewayID))
	if r.status != 403 || r.str("error") != "access_denied" {
		t.Errorf("gateway cc: %d %s", r.status, r.raw)
	}
	// Scopes beyond the policy.
	r = h.post(PathToken, url.Values{"grant_type": {GrantClientCredentials}, "audience": {"inventory-api"}, "scope": {"stock:write"}}, basic(batchID, "s3cret"))
	if r.status != 400 || r.str("error") != "invalid_scope" {
		t.Errorf("cc widening: %d %s", r.status, r.raw)
	}
}

func secretFor(h *harness, id, secret string) storeSecret {
	return storeSecret{ClientID: id, Hash: HashSecret(h.secret, secret), CreatedAt: h.now}
}

func TestJWTBearerGrant(t *testing.T) {
	h := newHarness(t)
	assertion := h.userToken("alice", "orders:read")
	f := url.Values{"grant_type": {GrantJWTBearer}, "assertion": {assertion}, "audience": {ordersID}}
	r := h.post(PathToken, f, h.asPeer(gatewayID))
	if r.status != 200 {
		t.Fatalf("%d %s", r.status, r.raw)
	}
	c := h.verify(r.str("access_token"), ordersID)
	if c.Subject != "alice" || !slices.Equal(c.Act.Chain(), []string{gatewayID}) {
		t.Errorf("claims = %+v", c)
	}
	// order-processing has no jwt-bearer policy.
	r = h.post(PathToken, f, h.asPeer(ordersID))
	if r.status != 403 {
		t.Errorf("orders jwt-bearer: %d %s", r.status, r.raw)
	}
	r = h.post(PathToken, url.Values{"grant_type": {GrantJWTBearer}}, h.asPeer(gatewayID))
	if r.status != 400 || r.str("error") != "invalid_request" {
		t.Errorf("no assertion: %d %s", r.status, r.raw)
	}
}

func TestClientAuthentication(t *testing.T) {
	h := newHarness(t)
	h.store.secrets = append(h.store.secrets, secretFor(h, batchID, "right"))
	cc := url.Values{"grant_type": {GrantClientCredentials}, "audience": {"inventory-api"}}
	foreign := newHarness(t) // another CA, same trust domain name
	tests := []struct {
		name   string
		form   url.Values
		opts   []reqOpt
		status int
		code   string
	}{
		{name: "none", form: cc, status: 401, code: "invalid_client"},
		{name: "wrong secret", form: cc, opts: []reqOpt{basic(batchID, "wrong")}, status: 401, code: "invalid_client"},
		{name: "unknown basic client", form: cc, opts: []reqOpt{basic("spiffe://shop.test/x", "right")}, status: 401, code: "invalid_client"},
		{name: "secret not allowed for workload", form: cc, opts: []reqOpt{basic(gatewayID, "right")}, status: 401, code: "invalid_client"},
		{name: "mtls not allowed for batch", form: cc, opts: []reqOpt{h.asPeer(batchID)}, status: 400, code: "unauthorized_client"},
		{name: "unregistered workload certificate", form: cc, opts: []reqOpt{h.asPeer("spiffe://shop.test/ns/x/sa/stranger")}, status: 401, code: "invalid_client"},
		{name: "certificate of another trust domain", form: cc, opts: []reqOpt{func(r *http.Request) { foreign.asPeer("spiffe://other.test/ns/a/sa/b")(r) }}, status: 401, code: "invalid_client"},
		{name: "client_id mismatch", form: with(cc, "client_id", ordersID), opts: []reqOpt{h.asPeer(gatewayID)}, status: 401, code: "invalid_client"},
		{name: "client_secret_post refused", form: with(with(cc, "client_id", batchID), "client_secret", "right"), status: 401, code: "invalid_client"},
		{name: "two methods", form: with(with(cc, "client_assertion", "x"), "client_assertion_type", assertionSPIFFE), opts: []reqOpt{basic(batchID, "right")}, status: 400, code: "invalid_request"},
		{name: "bearer authorization header", form: cc, opts: []reqOpt{func(r *http.Request) { r.Header.Set("Authorization", "Bearer x") }}, status: 401, code: "invalid_client"},
		{name: "unknown assertion type", form: with(with(cc, "client_assertion", "x"), "client_assertion_type", "urn:x"), status: 401, code: "invalid_client"},
		{name: "assertion without type", form: with(cc, "client_assertion", "x"), status: 400, code: "invalid_request"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := h.post(PathToken, tc.form, tc.opts...)
			if r.status != tc.status || r.str("error") != tc.code {
				t.Fatalf("got %d %s, want %d %s", r.status, r.raw, tc.status, tc.code)
			}
			if r.status == 401 && r.header.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
		})
	}
	if r := h.post(PathToken, cc, basic(batchID, "wrong")); r.header.Get("WWW-Authenticate") != `Basic realm="postern"` {
		t.Errorf("basic failure challenge = %q", r.header.Get("WWW-Authenticate"))
	}
}

func with(v url.Values, k, val string) url.Values {
	out := url.Values{}
	for kk, vv := range v {
		out[kk] = vv
	}
	out.Set(k, val)
	return out
}

func TestJWTSVIDClientAssertion(t *testing.T) {
	h := newHarness(t)
	user := h.userToken("alice", "orders:read")
	ex := exchangeForm(user, TokenTypeJWT, ordersID, "")
	withAssertion := func(a string) url.Values {
		return with(with(ex, "client_assertion_type", assertionSPIFFE), "client_assertion", a)
	}
	good := h.jwtSVID(gatewayID, testIssuer+PathToken, 5*time.Minute)
	r := h.post(PathToken, withAssertion(good))
	if r.status != 200 {
		t.Fatalf("%d %s", r.status, r.raw)
	}
	if c := h.verify(r.str("access_token"), ordersID); c.Cnf != nil {
		t.Error("a token issued without mTLS must not claim a certificate binding")
	}
	// JWT-SVIDs are reused by agents: the same one works twice.
	if r := h.post(PathToken, withAssertion(good)); r.status != 200 {
		t.Fatalf("reuse: %d %s", r.status, r.raw)
	}
	for name, a := range map[string]string{
		"wrong audience":    h.jwtSVID(gatewayID, "https://elsewhere", 5*time.Minute),
		"too long-lived":    h.jwtSVID(gatewayID, testIssuer, 2*time.Hour),
		"expired":           h.jwtSVID(gatewayID, testIssuer, -time.Hour),
		"unknown workload":  h.jwtSVID("spiffe://shop.test/ns/x/sa/y", testIssuer, time.Minute),
		"not a spiffe id":   h.jwtSVID("alice", testIssuer, time.Minute),
		"signed by the idp": h.userToken(gatewayID, ""),
	} {
		t.Run(name, func(t *testing.T) {
			r := h.post(PathToken, withAssertion(a))
			if r.status != 401 || r.str("error") != "invalid_client" {
				t.Fatalf("got %d %s", r.status, r.raw)
			}
		})
	}
	// An mTLS certificate of another workload beside the assertion.
	if r := h.post(PathToken, withAssertion(good), h.asPeer(ordersID)); r.status != 401 {
		t.Errorf("mismatched cert: %d %s", r.status, r.raw)
	}
	// The same workload's certificate binds the token.
	r = h.post(PathToken, withAssertion(good), h.asPeer(gatewayID))
	if c := h.verify(r.str("access_token"), ordersID); c.Cnf == nil {
		t.Error("certificate of the authenticated client should bind the token")
	}
}

func TestPrivateKeyJWT(t *testing.T) {
	h := newHarness(t)
	sg, err := token.NewSigner("pk-1", jose.ES256, h.pkKey, "JWT")
	if err != nil {
		t.Fatal(err)
	}
	assertion := func(mut func(*token.Claims)) string {
		c := &token.Claims{Issuer: pkID, Subject: pkID, Audience: []string{testIssuer + PathToken}, Expiry: h.now.Add(time.Minute), IssuedAt: h.now, ID: token.NewID()}
		if mut != nil {
			mut(c)
		}
		raw, err := sg.Sign(c)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	cc := url.Values{"grant_type": {GrantClientCredentials}, "audience": {"inventory-api"}, "client_assertion_type": {assertionBearer}}
	a := assertion(nil)
	if r := h.post(PathToken, with(cc, "client_assertion", a)); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.raw)
	}
	if r := h.post(PathToken, with(cc, "client_assertion", a)); r.status != 401 || !strings.Contains(r.str("error_description"), "replay") {
		t.Fatalf("replay: %d %s", r.status, r.raw)
	}
	for name, mut := range map[string]func(*token.Claims){
		"no jti":        func(c *token.Claims) { c.ID = "" },
		"wrong aud":     func(c *token.Claims) { c.Audience = []string{"x"} },
		"sub differs":   func(c *token.Claims) { c.Subject = gatewayID },
		"expired":       func(c *token.Claims) { c.Expiry = h.now.Add(-time.Hour) },
		"too long":      func(c *token.Claims) { c.Expiry = h.now.Add(time.Hour) },
		"unknown iss":   func(c *token.Claims) { c.Issuer = "spiffe://shop.test/none" },
		"not permitted": func(c *token.Claims) { c.Issuer, c.Subject = gatewayID, gatewayID },
	} {
		t.Run(name, func(t *testing.T) {
			if r := h.post(PathToken, with(cc, "client_assertion", assertion(mut))); r.status != 401 {
				t.Fatalf("got %d %s", r.status, r.raw)
			}
		})
	}
	// A store failure refuses; it never lets an unrecorded assertion through.
	h.store.fail = errors.New("disk on fire")
	r := h.post(PathToken, with(cc, "client_assertion", assertion(nil)))
	if r.status != 503 || strings.Contains(r.raw, "disk on fire") {
		t.Fatalf("store failure: %d %s", r.status, r.raw)
	}
}

func TestTokenEndpointRequestErrors(t *testing.T) {
	h := newHarness(t)
	peer := h.asPeer(gatewayID)
	tests := []struct {
		name   string
		req    func() *http.Request
		status int
		code   string
	}{
		{"GET", func() *http.Request { return httptest.NewRequest("GET", PathToken, nil) }, 405, "invalid_request"},
		{"JSON body", func() *http.Request {
			r := httptest.NewRequest("POST", PathToken, strings.NewReader(`{"grant_type":"client_credentials"}`))
			r.Header.Set("Content-Type", "application/json")
			return r
		}, 415, "invalid_request"},
		{"body over 64 KiB", func() *http.Request {
			return formReq("grant_type=client_credentials&x=" + strings.Repeat("a", 65<<10))
		}, 413, "invalid_request"},
		{"repeated parameter", func() *http.Request {
			return formReq("grant_type=client_credentials&audience=a&audience=b")
		}, 400, "invalid_request"},
		{"query parameters", func() *http.Request {
			r := formReq("grant_type=client_credentials")
			r.URL.RawQuery = "client_secret=x"
			return r
		}, 400, "invalid_request"},
		{"bad encoding", func() *http.Request { return formReq("grant_type=%zz") }, 400, "invalid_request"},
		{"missing grant type", func() *http.Request { return formReq("audience=x") }, 400, "invalid_request"},
		{"unsupported grant type", func() *http.Request { return formReq("grant_type=password") }, 400, "unsupported_grant_type"},
		{"too many parameters", func() *http.Request {
			var b strings.Builder
			b.WriteString("grant_type=client_credentials")
			for i := range 40 {
				b.WriteString("&p" + string(rune('a'+i%26)) + string(rune('a'+i/26)) + "=1")
			}
			return formReq(b.String())
		}, 400, "invalid_request"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := tc.req()
			peer(req)
			r := h.serve(req)
			if r.status != tc.status || r.str("error") != tc.code {
				t.Fatalf("got %d %s, want %d %s", r.status, r.raw, tc.status, tc.code)
			}
		})
	}
}

func formReq(body string) *http.Request {
	r := httptest.NewRequest("POST", PathToken, strings.NewReader(body))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded; charset=UTF-8")
	return r
}

func TestIntrospectionAndRevocation(t *testing.T) {
	h := newHarness(t)
	user := h.userToken("alice", "orders:read orders:write")
	t1, c1 := h.exchange(gatewayID, user, ordersID, "")
	t2, c2 := h.exchange(ordersID, t1, "inventory-api", "")

	r := h.post(PathIntrospect, url.Values{"token": {t2}}, h.asPeer(invID))
	if r.status != 200 || r.body["active"] != true {
		t.Fatalf("introspect: %d %s", r.status, r.raw)
	}
	if r.str("sub") != "alice" || r.str("aud") != "inventory-api" || r.str("client_id") != ordersID || r.str("jti") != c2.ID || r.str("token_type") != "Bearer" {
		t.Errorf("introspection = %v", r.body)
	}
	act, _ := r.body["act"].(map[string]any)
	if act["sub"] != ordersID || act["act"].(map[string]any)["sub"] != gatewayID {
		t.Errorf("act = %v", r.body["act"])
	}
	if cnf, _ := r.body["cnf"].(map[string]any); cnf["x5t#S256"] != token.Thumbprint(h.svid(ordersID).Cert) {
		t.Errorf("cnf = %v", r.body["cnf"])
	}
	// Another workload learns nothing about a token not meant for it.
	if r := h.post(PathIntrospect, url.Values{"token": {t2}}, h.asPeer(financeID)); r.body["active"] != false || len(r.body) != 1 {
		t.Errorf("foreign introspection = %v", r.body)
	}
	if r := h.post(PathIntrospect, url.Values{"token": {"garbage"}}, h.asPeer(invID)); r.body["active"] != false {
		t.Errorf("garbage introspection = %v", r.body)
	}
	if r := h.post(PathIntrospect, url.Values{"token": {t2}}); r.status != 401 {
		t.Errorf("unauthenticated introspection: %d", r.status)
	}

	// Revoking hop 1's token (by the client it was addressed to) stops its
	// exchange; hop 2's token is untouched.
	if r := h.post(PathRevoke, url.Values{"token": {t1}}, h.asPeer(ordersID)); r.status != 200 {
		t.Fatalf("revoke: %d %s", r.status, r.raw)
	}
	if r := h.post(PathToken, exchangeForm(t1, TokenTypeAccessToken, "inventory-api", ""), h.asPeer(ordersID)); r.status != 400 || !strings.Contains(r.str("error_description"), "revoked") {
		t.Errorf("exchange of a revoked token: %d %s", r.status, r.raw)
	}
	if r := h.post(PathIntrospect, url.Values{"token": {t2}}, h.asPeer(invID)); r.body["active"] != true {
		t.Error("revoking one token revoked its descendant")
	}
	// Revoking the family stops everything descending from the session.
	if r := h.post(PathRevoke, url.Values{"token": {t2}, "revoke_family": {"true"}}, h.asPeer(invID)); r.status != 200 {
		t.Fatalf("revoke family: %d %s", r.status, r.raw)
	}
	if r := h.post(PathIntrospect, url.Values{"token": {t2}}, h.asPeer(invID)); r.body["active"] != false {
		t.Error("family revocation left the token active")
	}
	if r := h.post(PathToken, exchangeForm(t2, TokenTypeAccessToken, shipID, ""), h.asPeer(invID)); r.status != 400 {
		t.Errorf("exchange after family revocation: %d", r.status)
	}
	if len(h.store.revs) != 2 || h.store.revs[0].Kind != "jti" || h.store.revs[1].Kind != "sid" {
		t.Errorf("persisted revocations = %+v", h.store.revs)
	}
	// The revocation list shows both to any workload of the trust domain,
	// with an ETag that changes with the set.
	get := func(opts ...reqOpt) *response {
		req := httptest.NewRequest(http.MethodGet, PathRevocations, nil)
		for _, o := range opts {
			o(req)
		}
		return h.serve(req)
	}
	if r := get(); r.status != 401 || r.str("error") != "invalid_client" {
		t.Errorf("revocation list without an SVID: %d %s", r.status, r.raw)
	}
	lr := get(h.asPeer(shipID))
	var list RevocationList
	if err := json.Unmarshal([]byte(lr.raw), &list); lr.status != 200 || err != nil {
		t.Fatalf("revocation list: %d %s", lr.status, lr.raw)
	}
	found := map[string]bool{}
	for _, e := range list.Revoked {
		found[e.Kind+":"+e.ID] = e.Until > h.now.Unix()
	}
	if !found["jti:"+c1.ID] || !found["sid:"+c2.SessionID] || len(list.Revoked) != 2 {
		t.Errorf("revocation list %+v, want jti %s and sid %s with future until", list.Revoked, c1.ID, c2.SessionID)
	}
	etag := lr.header.Get("ETag")
	if r := get(h.asPeer(shipID), func(r *http.Request) { r.Header.Set("If-None-Match", etag) }); r.status != 304 {
		t.Errorf("If-None-Match with the current ETag: %d", r.status)
	}
	h.svc.revoked.add("jti", "another", h.now.Add(time.Hour))
	if r := get(h.asPeer(shipID), func(r *http.Request) { r.Header.Set("If-None-Match", etag) }); r.status != 200 || r.header.Get("ETag") == etag {
		t.Errorf("after a new revocation: %d, ETag %q (was %q)", r.status, r.header.Get("ETag"), etag)
	}
	// Revocations survive a restart: a new service loads them from the store.
	h2 := newHarness(t)
	h2.store = h.store
	h2.svc.cfg.Store = h.store
	h2.keys = h.keys
	h2.svc.cfg.Keys = h.keys
	h2.svc.self = h.svc.self
	if err := h2.svc.LoadRevocations(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !h2.svc.revoked.isRevoked(c2) {
		t.Error("revocation not loaded from the store")
	}

	// Other clients may not revoke tokens that are not theirs.
	t3, _ := h.exchange(gatewayID, h.userToken("carol", "orders:read"), ordersID, "")
	if r := h.post(PathRevoke, url.Values{"token": {t3}}, h.asPeer(financeID)); r.status != 400 || r.str("error") != "unauthorized_client" {
		t.Errorf("foreign revoke: %d %s", r.status, r.raw)
	}
	if r := h.post(PathRevoke, url.Values{"token": {"garbage"}}, h.asPeer(financeID)); r.status != 200 {
		t.Errorf("revoking garbage: %d (RFC 7009 answers 200)", r.status)
	}
	h.store.fail = errors.New("down")
	if r := h.post(PathRevoke, url.Values{"token": {t3}}, h.asPeer(ordersID)); r.status != 503 {
		t.Errorf("revocation with the store down: %d, want 503 (never a silent success)", r.status)
	}
	if r := h.post(PathIntrospect, url.Values{"token": {t3}}, h.asPeer(ordersID)); r.body["active"] != false {
		t.Error("a revocation that could not be persisted is not applied locally")
	}
}

func TestDiscoveryAndJWKS(t *testing.T) {
	h := newHarness(t)
	for _, p := range []string{"/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"} {
		r := h.serve(httptest.NewRequest("GET", p, nil))
		if r.status != 200 || r.str("issuer") != testIssuer || r.str("token_endpoint") != testIssuer+PathToken ||
			r.str("jwks_uri") != testIssuer+PathJWKS || r.str("introspection_endpoint") != testIssuer+PathIntrospect ||
			r.str("revocation_endpoint") != testIssuer+PathRevoke || r.body["tls_client_certificate_bound_access_tokens"] != true {
			t.Errorf("%s = %d %v", p, r.status, r.body)
		}
	}
	rec := httptest.NewRecorder()
	h.svc.Handler().ServeHTTP(rec, httptest.NewRequest("GET", PathJWKS, nil))
	if rec.Code != 200 || rec.Header().Get("Cache-Control") != "public, max-age=3600" || !strings.Contains(rec.Body.String(), "sts-key-1") {
		t.Errorf("jwks: %d %q %s", rec.Code, rec.Header().Get("Cache-Control"), rec.Body.String())
	}
}

func TestAuditLines(t *testing.T) {
	h := newHarness(t)
	user := h.userToken("alice", "orders:read orders:write")
	t1, _ := h.exchange(gatewayID, user, ordersID, "")
	h.post(PathToken, exchangeForm(t1, TokenTypeAccessToken, financeID, ""), h.asPeer(ordersID))
	h.post(PathToken, exchangeForm(t1, TokenTypeAccessToken, "no-such-service", ""), h.asPeer(ordersID))
	out := h.audit.String()
	for _, want := range []string{`"outcome":"issue"`, `"outcome":"deny"`, `"policy":"gateway-to-orders"`, `"policy":"nobody-to-finance"`,
		`"subject":"alice"`, `"client":"` + gatewayID, `"decision_id":`, `"error":"access_denied"`,
		`"audience":"no-such-service"`, `"error":"invalid_target"`} {
		if !strings.Contains(out, want) {
			t.Errorf("audit log lacks %s:\n%s", want, out)
		}
	}
	for _, secret := range []string{user[:30], t1[:30], user[strings.LastIndexByte(user, '.')+1:]} {
		if strings.Contains(out, secret) {
			t.Error("a token reached the audit log")
		}
	}
}

func TestNotReadyWithoutPolicy(t *testing.T) {
	h := newHarness(t)
	h.svc.state.Store(nil)
	r := h.post(PathToken, url.Values{"grant_type": {GrantClientCredentials}}, h.asPeer(gatewayID))
	if r.status != 503 {
		t.Fatalf("got %d", r.status)
	}
}

// BenchmarkExchange measures one token exchange through the handler in
// process (client authenticated by mTLS, subject token from this STS), and
// BenchmarkRawES256VerifySign the crypto it cannot avoid: one ES256 verify
// and one ES256 sign, the ceiling the exchange rate is reported against.
func BenchmarkExchange(b *testing.B) {
	h := newHarness(b)
	user := h.userToken("alice", "orders:read orders:write")
	h.now = time.Now().Truncate(time.Second)
	t1, _ := h.exchange(gatewayID, user, ordersID, "")
	body := exchangeForm(t1, TokenTypeAccessToken, "inventory-api", "").Encode()
	peer := h.asPeer(ordersID)
	handler := h.svc.Handler()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		req := httptest.NewRequest("POST", PathToken, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		peer(req)
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, req)
		if rec.Code != 200 {
			b.Fatalf("status %d: %s", rec.Code, rec.Body.String())
		}
	}
}

// TestClientSecretRotation: a secret replaced in the store is picked up by
// the running service without a restart, and the old one stops working.
func TestClientSecretRotation(t *testing.T) {
	h := newHarness(t)
	h.store.secrets = []storeSecret{secretFor(h, batchID, "old")}
	cc := url.Values{"grant_type": {GrantClientCredentials}, "audience": {"inventory-api"}}
	if r := h.post(PathToken, cc, basic(batchID, "old")); r.status != 200 {
		t.Fatalf("old secret: %d %s", r.status, r.raw)
	}
	h.store.mu.Lock()
	h.store.secrets = []storeSecret{secretFor(h, batchID, "new")}
	h.store.mu.Unlock()
	h.now = h.now.Add(6 * time.Second) // past the reload rate limit
	if r := h.post(PathToken, cc, basic(batchID, "new")); r.status != 200 {
		t.Fatalf("new secret after rotation: %d %s", r.status, r.raw)
	}
	if r := h.post(PathToken, cc, basic(batchID, "old")); r.status != 401 {
		t.Fatalf("old secret after rotation: %d %s", r.status, r.raw)
	}
}

// TestAssertionHardening: JWT-SVIDs only work as assertions when addressed
// to the STS alone, an issued token is never a JWT-SVID, and an actor token
// cannot name anyone but the authenticated client.
func TestAssertionHardening(t *testing.T) {
	h := newHarness(t)
	user := h.userToken("alice", "orders:read orders:write")
	ex := exchangeForm(user, TokenTypeJWT, ordersID, "")
	withAssertion := func(f url.Values, a string) url.Values {
		return with(with(f, "client_assertion_type", assertionSPIFFE), "client_assertion", a)
	}
	// A JWT-SVID for [svcB, sts] could be replayed by svcB.
	sg, _ := token.NewSigner(h.keys.key.ID, jose.ES256, h.keys.key.Signer, token.TypeJWT)
	two, _ := sg.Sign(&token.Claims{Issuer: testIssuer, Subject: gatewayID, Audience: []string{"inventory-api", testIssuer + PathToken}, IssuedAt: h.now, Expiry: h.now.Add(5 * time.Minute)})
	if r := h.post(PathToken, withAssertion(ex, two)); r.status != 401 {
		t.Errorf("two-audience JWT-SVID: %d %s", r.status, r.raw)
	}
	// An issued token (client_id, act) is not a JWT-SVID.
	issued, _ := sg.Sign(&token.Claims{Issuer: testIssuer, Subject: gatewayID, Audience: []string{testIssuer + PathToken}, ClientID: ordersID, IssuedAt: h.now, Expiry: h.now.Add(5 * time.Minute)})
	if r := h.post(PathToken, withAssertion(ex, issued)); r.status != 401 {
		t.Errorf("issued token as assertion: %d %s", r.status, r.raw)
	}
	// Actor tokens: only the authenticated client.
	t1, _ := h.exchange(gatewayID, user, ordersID, "")
	f := exchangeForm(t1, TokenTypeAccessToken, "inventory-api", "")
	f.Set("actor_token_type", TokenTypeJWT)
	f.Set("actor_token", h.jwtSVID(financeID, testIssuer+PathToken, 5*time.Minute))
	if r := h.post(PathToken, f, h.asPeer(ordersID)); r.status != 400 || !strings.Contains(r.str("error_description"), "authenticated client") {
		t.Errorf("actor token naming finance: %d %s", r.status, r.raw)
	}
	f.Set("actor_token", h.jwtSVID(ordersID, testIssuer+PathToken, 2*time.Hour))
	if r := h.post(PathToken, f, h.asPeer(ordersID)); r.status != 400 {
		t.Errorf("long-lived actor token: %d %s", r.status, r.raw)
	}
	f.Set("actor_token", h.jwtSVID(ordersID, testIssuer+PathToken, 5*time.Minute))
	if r := h.post(PathToken, f, h.asPeer(ordersID)); r.status != 200 {
		t.Errorf("actor token of the client itself: %d %s", r.status, r.raw)
	}
}

// TestMayActEveryGrant: a subject token's may_act binds whoever acts on it,
// through token exchange and jwt-bearer alike.
func TestMayActEveryGrant(t *testing.T) {
	h := newHarness(t)
	user := h.userToken("alice", "orders:read", func(c *token.Claims) {
		c.MayAct = &token.Actor{Subject: "spiffe://shop.test/ns/shop/sa/other"}
	})
	for name, form := range map[string]url.Values{
		"token-exchange": exchangeForm(user, TokenTypeJWT, ordersID, ""),
		"jwt-bearer":     {"grant_type": {GrantJWTBearer}, "assertion": {user}, "audience": {ordersID}},
	} {
		r := h.post(PathToken, form, h.asPeer(gatewayID))
		if r.status != 400 || r.str("error") != "invalid_grant" || !strings.Contains(r.str("error_description"), "may_act") {
			t.Errorf("%s by a party may_act does not name: %d %s", name, r.status, r.raw)
		}
	}
}

// TestReplacedSecretStopsWorking: once the store holds a new secret for a
// client (postern server client-secret), the old one stops working within
// the cache's maximum age, although it still matches the cached hash.
func TestReplacedSecretStopsWorking(t *testing.T) {
	h := newHarness(t)
	h.store.secrets = []storeSecret{secretFor(h, batchID, "old")}
	f := url.Values{"grant_type": {GrantClientCredentials}, "audience": {"inventory-api"}, "scope": {"stock:read"}}
	if r := h.post(PathToken, f, basic(batchID, "old")); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.raw)
	}
	h.store.secrets = []storeSecret{secretFor(h, batchID, "new")}
	h.now = h.now.Add(secretMaxAge + time.Second)
	if r := h.post(PathToken, f, basic(batchID, "old")); r.status != 401 {
		t.Errorf("the replaced secret: %d %s", r.status, r.raw)
	}
	if r := h.post(PathToken, f, basic(batchID, "new")); r.status != 200 {
		t.Errorf("the new secret: %d %s", r.status, r.raw)
	}
}
