package demo

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"postern.dev/postern/internal/token"
)

// Steps is the number of steps of the story.
const Steps = 6

// revocationWait bounds the wait for the sidecars to learn of a revocation
// (they poll the token service's list; see sidecarConfig).
const revocationWait = 10 * time.Second

// auditWait bounds the wait for a component's audit line, written once its
// response has left.
const auditWait = 2 * time.Second

// Step is one step of the story with its outcome and evidence.
type Step struct {
	// Number counts from 1 to Of.
	Number, Of int
	// Title says what the step shows, in one line.
	Title string
	// Narration explains it in plain words.
	Narration string
	// OK reports whether everything behaved as expected.
	OK bool
	// Evidence is what was observed, in order.
	Evidence []Fact
	// Problems say what did not behave as expected.
	Problems []string
}

// Fact is one piece of evidence: a key for scripts (JSON), a label for
// people, and a value (a string, a number, a bool or a list of strings).
type Fact struct {
	Key, Label string
	Value      any
}

// MarshalJSON writes the step as one JSON object: step, of, title, ok,
// narration, evidence (an object, keys in order) and problems.
func (s Step) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	field := func(k string, v any) error {
		kb, _ := json.Marshal(k)
		vb, err := json.Marshal(v)
		if err != nil {
			return err
		}
		if b.Len() > 1 {
			b.WriteByte(',')
		}
		b.Write(kb)
		b.WriteByte(':')
		b.Write(vb)
		return nil
	}
	b.WriteByte('{')
	for _, f := range []struct {
		k string
		v any
	}{{"step", s.Number}, {"of", s.Of}, {"title", s.Title}, {"ok", s.OK}, {"narration", s.Narration}} {
		if err := field(f.k, f.v); err != nil {
			return nil, err
		}
	}
	var ev bytes.Buffer
	ev.WriteByte('{')
	for i, f := range s.Evidence {
		kb, _ := json.Marshal(f.Key)
		vb, err := json.Marshal(f.Value)
		if err != nil {
			return nil, fmt.Errorf("demo: evidence %s: %w", f.Key, err)
		}
		if i > 0 {
			ev.WriteByte(',')
		}
		ev.Write(kb)
		ev.WriteByte(':')
		ev.Write(vb)
	}
	ev.WriteByte('}')
	if err := field("evidence", json.RawMessage(ev.Bytes())); err != nil {
		return nil, err
	}
	if len(s.Problems) > 0 {
		if err := field("problems", s.Problems); err != nil {
			return nil, err
		}
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// step collects a step's evidence and checks.
type step struct{ Step }

func (s *step) fact(key, label string, v any) { s.Evidence = append(s.Evidence, Fact{key, label, v}) }

// expect records a problem unless ok.
func (s *step) expect(ok bool, format string, args ...any) {
	if !ok {
		s.Problems = append(s.Problems, fmt.Sprintf(format, args...))
	}
}

// story is the state passed from step to step.
type story struct {
	d     *Demo
	order *appReply // order-processing's answer to alice's order
}

// Story plays the six steps, handing each to report as it completes, and
// reports whether every step behaved as expected.
func (d *Demo) Story(ctx context.Context, report func(Step)) bool {
	st := &story{d: d}
	ok := true
	for i, f := range []func(context.Context, *step){st.order1, st.inventory2, st.finance3, st.replay4, st.forged5, st.revoked6} {
		s := &step{Step{Number: i + 1, Of: Steps}}
		f(ctx, s)
		s.OK = len(s.Problems) == 0
		ok = ok && s.OK
		if report != nil {
			report(s.Step)
		}
	}
	return ok
}

func (d *Demo) spiffeID(name string) string { return d.ids[name].id.String() }

// order1: alice's order through the gateway.
func (st *story) order1(ctx context.Context, s *step) {
	d := st.d
	s.Title = "alice's request through the gateway reaches order-processing"
	s.Narration = "alice signs in at the identity provider and sends POST /orders to the gateway with her token. " +
		"The gateway checks it and exchanges it at the token service for a token addressed to order-processing alone, " +
		"bound to the gateway's own certificate, then calls order-processing's sidecar over mutual TLS. " +
		"The sidecar checks both proofs (who calls, on whose behalf) before the app sees the request."
	user, err := d.idp.Mint("alice")
	if err != nil {
		s.expect(false, "the identity provider: %v", err)
		return
	}
	if _, uc, err := token.ParseUnverified(user); err == nil {
		s.fact("user_token", "alice's token from the IdP", fmt.Sprintf("iss %s, aud %s, scope %q", uc.Issuer, strings.Join(uc.Audience, " "), uc.Scope))
	}
	req, err := d.edge.NewRequest(ctx, http.MethodPost, "/orders", strings.NewReader(`{"item":"42","quantity":1}`))
	if err != nil {
		s.expect(false, "request: %v", err)
		return
	}
	req.Header.Set("Authorization", "Bearer "+user)
	req.Header.Set("Content-Type", "application/json")
	status, body, err := do(d.edge.Client(), req)
	if err != nil {
		s.expect(false, "the gateway did not answer: %v", err)
		return
	}
	s.fact("status", "HTTP status", status)
	s.expect(status == http.StatusOK, "the gateway answered %d, want 200: %s", status, clip(body))
	var rep appReply
	if err := json.Unmarshal(body, &rep); err != nil || rep.Service != OrderProcessing {
		s.expect(false, "the answer is not order-processing's: %s", clip(body))
		return
	}
	st.order = &rep
	s.fact("peer", "caller seen by order-processing", rep.Peer)
	s.expect(rep.Peer == d.spiffeID(Gateway), "order-processing saw the caller %q, want the gateway", rep.Peer)
	c := st.claims(s, rep.Claims, "order-processing")
	if c == nil {
		return
	}
	st.tokenFacts(s, c)
	s.expect(c.Subject == "alice", "sub is %q, want alice", c.Subject)
	s.expect(c.HasAudience(d.spiffeID(OrderProcessing)), "aud is %v, want order-processing", c.Audience)
	s.expect(slices.Equal(c.Act.Chain(), []string{d.spiffeID(Gateway)}), "act chain is %v, want the gateway", c.Act.Chain())
	st.binding(s, c, Gateway)
	if rec, ok := d.rec.find(ctx, auditWait, Gateway, "gateway request", map[string]string{"path": "/orders", "decision": "allow"}); ok {
		s.fact("gateway_decision_id", "gateway decision", rec.attrs["decision_id"])
		s.fact("gateway_route", "gateway route", rec.attrs["route"])
	} else {
		s.expect(false, "no audit line of the gateway for /orders")
	}
	st.stsDecision(ctx, s, Gateway, OrderProcessing, "issue")
	st.sidecarDecision(ctx, s, OrderProcessing, "/orders", "allow")
}

// inventory2: order-processing's call to inventory, exchanged per hop.
func (st *story) inventory2(ctx context.Context, s *step) {
	d := st.d
	s.Title = "order-processing calls inventory with a token exchanged for that hop"
	s.Narration = "order-processing's app forwards only the opaque context id its sidecar handed it (X-Postern-Context), never a token. " +
		"Its sidecar exchanges alice's token for a new one addressed to inventory; the token service allows it by policy " +
		"(alice holds orders:write) and adds order-processing in front of the act chain. Inventory's sidecar verifies it " +
		"and its policy requires the chain to have started at the gateway."
	if st.order == nil || st.order.Inventory == nil {
		s.expect(false, "no answer from order-processing (step 1 failed)")
		return
	}
	inv := st.order.Inventory
	s.fact("status", "HTTP status", inv.Status)
	if inv.Status != http.StatusOK {
		s.expect(false, "inventory answered %d, want 200: %s %s", inv.Status, clip(inv.Body), inv.Error)
		return
	}
	var rep appReply
	if err := json.Unmarshal(inv.Body, &rep); err != nil || rep.Service != Inventory {
		s.expect(false, "the answer is not inventory's: %s", clip(inv.Body))
		return
	}
	s.fact("peer", "caller seen by inventory", rep.Peer)
	s.expect(rep.Peer == d.spiffeID(OrderProcessing), "inventory saw the caller %q, want order-processing", rep.Peer)
	c := st.claims(s, rep.Claims, "inventory")
	if c == nil {
		return
	}
	st.tokenFacts(s, c)
	s.expect(c.Subject == "alice", "sub is %q, want alice", c.Subject)
	s.expect(c.HasAudience(d.spiffeID(Inventory)), "aud is %v, want inventory", c.Audience)
	want := []string{d.spiffeID(OrderProcessing), d.spiffeID(Gateway)}
	s.expect(slices.Equal(c.Act.Chain(), want), "act chain is %v, want order-processing ← gateway", c.Act.Chain())
	st.binding(s, c, OrderProcessing)
	st.stsDecision(ctx, s, OrderProcessing, Inventory, "issue")
	st.sidecarDecision(ctx, s, Inventory, "/items/42/reserve", "allow")
}

// finance3: the confused deputy, stopped at the token service.
func (st *story) finance3(ctx context.Context, s *step) {
	d := st.d
	s.Title = "order-processing tries to call finance for alice: the confused deputy is stopped"
	s.Narration = "order-processing holds a token for alice and can reach finance, but has no business calling it on alice's behalf. " +
		"Its sidecar asks the token service for a token addressed to finance; a DENY ExchangePolicy refuses, " +
		"so no token exists that finance would accept, and the app gets 403 with the reason. Finance never sees the request."
	if st.order == nil || st.order.Finance == nil {
		s.expect(false, "no answer from order-processing (step 1 failed)")
		return
	}
	fin := st.order.Finance
	s.fact("status", "HTTP status", fin.Status)
	var p problemBody
	_ = json.Unmarshal(fin.Body, &p)
	s.fact("error", "error", p.Error)
	s.fact("reason", "reason", p.Reason)
	s.fact("decision_id", "token service decision", p.DecisionID)
	s.expect(fin.Status == http.StatusForbidden, "finance call answered %d, want 403: %s %s", fin.Status, clip(fin.Body), fin.Error)
	s.expect(p.Error == "token_exchange_refused", "error is %q, want token_exchange_refused", p.Error)
	s.expect(strings.Contains(p.Reason, "access_denied"), "reason %q does not say access_denied", p.Reason)
	if rec, ok := d.rec.find(ctx, auditWait, "server", "token", map[string]string{"decision_id": p.DecisionID, "outcome": "deny"}); ok && p.DecisionID != "" {
		s.fact("policy", "refused by policy", rec.attrs["policy"])
	} else {
		s.expect(false, "no audit line of the token service for decision %q", p.DecisionID)
	}
	n := d.apps.financeHits.Load()
	s.fact("finance_reached", "finance app reached", n > 0)
	s.expect(n == 0, "the finance app was reached %d times", n)
}

// replay4: a token captured at inventory, replayed.
func (st *story) replay4(ctx context.Context, s *step) {
	d := st.d
	s.Title = "a token captured at inventory is replayed: refused for its audience and its certificate binding"
	s.Narration = "An attacker who stole the token inventory received tries to use it. At order-processing's sidecar, " +
		"presented over mutual TLS with a valid certificate of the attacker's own, it fails for its audience: it was issued for inventory. " +
		"At inventory's sidecar, the right audience, presented with finance's certificate, it fails for its certificate binding: " +
		"it is bound to order-processing's certificate, whose key the attacker does not hold."
	p := d.apps.captured.Load()
	if p == nil {
		s.expect(false, "no token was captured at inventory (step 2 failed)")
		return
	}
	stolen := *p
	if _, c, err := token.ParseUnverified(stolen); err == nil {
		s.fact("captured", "captured token", fmt.Sprintf("sub %s, aud %s, bound to %s's certificate", c.Subject, strings.Join(c.Audience, " "), d.boundTo(c)))
	}
	before := d.apps.ordersHits.Load() + d.apps.inventoryHits.Load()
	st.refused(ctx, s, "audience", "at order-processing, attacker cert", Attacker, OrderProcessing, "/orders", stolen, "token: wrong audience")
	st.refused(ctx, s, "binding", "at inventory, finance's cert", Finance, Inventory, "/items/42/reserve", stolen, "token: certificate binding mismatch")
	after := d.apps.ordersHits.Load() + d.apps.inventoryHits.Load()
	s.fact("apps_reached", "apps reached", after != before)
	s.expect(after == before, "a replayed token reached an app")
}

// forged5: plaintext and a forged token.
func (st *story) forged5(ctx context.Context, s *step) {
	d := st.d
	s.Title = "a plaintext request and a forged token are refused"
	s.Narration = "A plaintext HTTP request to inventory's sidecar never gets past its listener, which speaks only mutual TLS " +
		"(it answers a bare 400 and hangs up): nothing reaches the app. " +
		"A token forged with a key the token service never had, claiming everything (sub alice, aud order-processing, " +
		"act gateway, bound to the caller's certificate, the token service's real key id), is refused by order-processing's " +
		"sidecar: its signature does not verify."
	before := d.apps.inventoryHits.Load()
	addr := d.sidecars[Inventory].InboundAddr().String()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/items", nil)
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	status, body, err := do(c, req)
	switch {
	case err != nil:
		s.fact("plaintext", "plaintext request", "connection refused: "+err.Error())
	default:
		s.fact("plaintext", "plaintext request", fmt.Sprintf("%d %s", status, strings.TrimSpace(string(clip(body)))))
		s.expect(status == http.StatusBadRequest, "a plaintext request got %d, want 400 from the TLS listener", status)
	}
	s.expect(d.apps.inventoryHits.Load() == before, "a plaintext request reached inventory's app")

	forged, err := st.forge()
	if err != nil {
		s.expect(false, "forging: %v", err)
		return
	}
	st.refused(ctx, s, "forged", "forged, at order-processing", Gateway, OrderProcessing, "/orders", forged, "token: invalid signature")
}

// revoked6: alice's session revoked, and refused at the next hop.
func (st *story) revoked6(ctx context.Context, s *step) {
	d := st.d
	s.Title = "alice's session is revoked: its tokens are refused within seconds, not at expiry"
	s.Narration = "The token inventory received is still valid for minutes, and order-processing, which holds it legitimately " +
		"(it is bound to its certificate), is let through. Then inventory revokes the token's whole family at the token service (RFC 7009, revoke_family=true): " +
		"every token exchanged from alice's sign-in shares its session id. Sidecars poll the token service's revocation list " +
		"(every 5 seconds by default, every half second in this demo), so inventory's sidecar refuses the same token at its next poll, " +
		"and introspection reports it inactive."
	p := d.apps.captured.Load()
	if p == nil {
		s.expect(false, "no token was captured at inventory (step 2 failed)")
		return
	}
	tok := *p
	present := func() (int, problemBody, error) {
		status, _, pb, err := d.present(ctx, OrderProcessing, Inventory, "/items/42/reserve", tok)
		return status, pb, err
	}
	status, _, err := present()
	if err != nil {
		s.expect(false, "inventory's sidecar did not answer: %v", err)
		return
	}
	s.fact("before_status", "before revocation, by its holder", status)
	s.expect(status == http.StatusOK, "before revocation the token's holder got %d, want 200", status)

	form := url.Values{"token": {tok}, "revoke_family": {"true"}}
	rstatus, rbody, err := st.server(ctx, Inventory, "/oauth2/revoke", form)
	if err != nil || rstatus != http.StatusOK {
		s.expect(false, "revocation at the token service: %d %s %v", rstatus, clip(rbody), err)
		return
	}
	revokedAt := time.Now()
	s.fact("revoked", "revoked at the token service", "the family of session "+sessionOf(tok))

	var last problemBody
	status = 0
	for deadline := time.Now().Add(revocationWait); time.Now().Before(deadline) && ctx.Err() == nil; {
		if status, last, err = present(); err != nil || status != http.StatusOK {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.fact("after_status", "after revocation, same holder", status)
	s.fact("after_reason", "reason", last.Reason)
	s.fact("after_in", "refused after", time.Since(revokedAt).Round(10*time.Millisecond).String())
	s.expect(status == http.StatusUnauthorized && strings.Contains(last.Reason, "revoked"),
		"after revocation: %d %q, want 401 revoked", status, last.Reason)

	istatus, ibody, err := st.server(ctx, Inventory, "/oauth2/introspect", url.Values{"token": {tok}})
	var intro struct {
		Active *bool `json:"active"`
	}
	_ = json.Unmarshal(ibody, &intro)
	s.expect(err == nil && istatus == http.StatusOK && intro.Active != nil, "introspection: %d %s %v", istatus, clip(ibody), err)
	if intro.Active != nil {
		s.fact("introspection_active", "introspection: active", *intro.Active)
		s.expect(!*intro.Active, "introspection still reports the token active")
	}
}

// server posts form to the token service at path as holder (mutual TLS).
func (st *story) server(ctx context.Context, holder, path string, form url.Values) (int, []byte, error) {
	d := st.d
	svid := d.ids[holder].svid.Load()
	cfg := tlsconfig.MTLSClientConfig(fixedSVID{svid}, d.srv.CA(), tlsconfig.AuthorizeMemberOf(d.ids[holder].id.TrustDomain()))
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, TLSClientConfig: cfg}}
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.srv.Issuer()+path, strings.NewReader(form.Encode()))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return do(c, req)
}

// sessionOf returns the sid of tok, unverified, for display.
func sessionOf(tok string) string {
	if _, c, err := token.ParseUnverified(tok); err == nil && c.SessionID != "" {
		return c.SessionID
	}
	return "(unknown)"
}

// forge signs, with a fresh key, the token an attacker would like to hold:
// alice's, for order-processing, from the gateway, bound to the gateway's
// certificate, under the key id the token service really uses.
func (st *story) forge() (string, error) {
	d := st.d
	kid := ""
	if p := d.apps.captured.Load(); p != nil {
		if h, _, err := token.ParseUnverified(*p); err == nil {
			kid = h.KeyID
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	sg, err := token.NewSigner(kid, jose.ES256, key, token.TypeAccessToken)
	if err != nil {
		return "", err
	}
	now := d.cfg.Now()
	leaf := d.ids[Gateway].svid.Load().Certificates[0]
	return sg.Sign(&token.Claims{
		Issuer: d.srv.Issuer(), Subject: "alice", Audience: []string{d.spiffeID(OrderProcessing)},
		IssuedAt: now, Expiry: now.Add(5 * time.Minute), ID: token.NewID(),
		Scope: "orders:read orders:write", Act: &token.Actor{Subject: d.spiffeID(Gateway)},
		Cnf: &token.Confirmation{X5tS256: token.Thumbprint(leaf)},
	})
}

// refused presents tok to target's sidecar as holder's certificate and
// expects 401 with reason; key prefixes the evidence keys.
func (st *story) refused(ctx context.Context, s *step, key, label, holder, target, path, tok, reason string) {
	status, body, p, err := st.d.present(ctx, holder, target, path, tok)
	if err != nil {
		s.expect(false, "%s: %v", label, err)
		return
	}
	s.fact(key+"_status", label, status)
	s.fact(key+"_reason", "reason", p.Reason)
	s.fact(key+"_decision_id", "sidecar decision", p.DecisionID)
	s.expect(status == http.StatusUnauthorized, "%s: %d, want 401: %s", label, status, clip(body))
	s.expect(strings.HasPrefix(p.Reason, reason), "%s: reason %q, want %q", label, p.Reason, reason)
}

// present POSTs to target's sidecar with tok as holder (mutual TLS with
// holder's SVID) and returns the status, the body and its problem fields.
func (d *Demo) present(ctx context.Context, holder, target, path, tok string) (int, []byte, problemBody, error) {
	c := d.mtlsClient(holder, target)
	defer c.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+d.sidecars[target].InboundAddr().String()+path, strings.NewReader("{}"))
	req.Header.Set("Authorization", "Bearer "+tok)
	status, body, err := do(c, req)
	var p problemBody
	_ = json.Unmarshal(body, &p)
	return status, body, p, err
}

// mtlsClient presents holder's SVID and accepts only target's.
func (d *Demo) mtlsClient(holder, target string) *http.Client {
	svid := d.ids[holder].svid.Load()
	want := d.ids[target].id
	cfg := tlsconfig.MTLSClientConfig(fixedSVID{svid}, d.srv.CA(), tlsconfig.AuthorizeID(want))
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, TLSClientConfig: cfg, ForceAttemptHTTP2: true}}
}

type fixedSVID struct{ s *x509svid.SVID }

func (f fixedSVID) GetX509SVID() (*x509svid.SVID, error) { return f.s, nil }

// claims decodes the claims an app echoed.
func (st *story) claims(s *step, raw json.RawMessage, app string) *token.Claims {
	var c token.Claims
	if len(raw) == 0 || json.Unmarshal(raw, &c) != nil {
		s.expect(false, "%s received no verified claims", app)
		return nil
	}
	return &c
}

// tokenFacts adds the claims that matter.
func (st *story) tokenFacts(s *step, c *token.Claims) {
	s.fact("sub", "sub", c.Subject)
	s.fact("aud", "aud", strings.Join(c.Audience, " "))
	s.fact("act", "act chain", c.Act.Chain())
	s.fact("scope", "scope", c.Scope)
	s.fact("exp_in", "expires in", c.Expiry.Sub(st.d.cfg.Now()).Round(time.Second).String())
}

// binding checks that c is bound to holder's certificate.
func (st *story) binding(s *step, c *token.Claims, holder string) {
	s.fact("cnf", "bound to (cnf x5t#S256)", st.d.boundTo(c)+"'s certificate")
	leaf := st.d.ids[holder].svid.Load().Certificates[0]
	s.expect(c.Cnf != nil && c.Cnf.X5tS256 == token.Thumbprint(leaf), "the token is not bound to %s's certificate", holder)
}

// boundTo names the workload whose certificate c is bound to.
func (d *Demo) boundTo(c *token.Claims) string {
	if c.Cnf == nil || c.Cnf.X5tS256 == "" {
		return "no"
	}
	for name, w := range d.ids {
		if s := w.svid.Load(); s != nil && token.Thumbprint(s.Certificates[0]) == c.Cnf.X5tS256 {
			return name
		}
	}
	return "an unknown"
}

// stsDecision adds the decision id of the token service's exchange for
// client towards audience.
func (st *story) stsDecision(ctx context.Context, s *step, client, audience, outcome string) {
	d := st.d
	rec, ok := d.rec.find(ctx, auditWait, "server", "token", map[string]string{
		"client": d.spiffeID(client), "audience": d.spiffeID(audience), "outcome": outcome})
	s.expect(ok, "no audit line of the token service for %s → %s", client, audience)
	if ok {
		s.fact("sts_decision_id", "token service decision", rec.attrs["decision_id"])
		s.fact("sts_policy", "exchange policy", rec.attrs["policy"])
	}
}

// sidecarDecision adds the decision id of workload's sidecar for path.
func (st *story) sidecarDecision(ctx context.Context, s *step, workload, path, decision string) {
	rec, ok := st.d.rec.find(ctx, auditWait, workload, "inbound request", map[string]string{"path": path, "decision": decision})
	s.expect(ok, "no audit line of %s's sidecar for %s", workload, path)
	if ok {
		s.fact("sidecar_decision_id", workload+"'s sidecar decision", rec.attrs["decision_id"])
	}
}

// problemBody is a refusal's JSON body, inbound or outbound.
type problemBody struct {
	Error      string `json:"error"`
	Reason     string `json:"reason"`
	DecisionID string `json:"decision_id"`
}

// do sends req and reads at most maxAppBody of the answer.
func do(c *http.Client, req *http.Request) (int, []byte, error) {
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAppBody))
	return resp.StatusCode, b, err
}

// clip shortens a body for a problem line.
func clip(b []byte) []byte {
	if len(b) > 300 {
		return append(b[:300:300], "..."...)
	}
	return b
}
