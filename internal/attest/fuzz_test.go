package attest

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"postern.dev/postern/internal/token"
)

// FuzzK8sClaims feeds claim sets to the Kubernetes claim parsing (after the
// token package's own decoding, as in Attest). Whatever it accepts must be
// a consistent, safe identity.
func FuzzK8sClaims(f *testing.F) {
	iss := &k8sIssuer{url: "https://kubernetes.default.svc.cluster.local"}
	base := iss.claims()
	seeds := []map[string]any{
		base,
		withClaims(base, func(_, k map[string]any) { delete(k, "node") }),
		withClaims(base, func(_, k map[string]any) { delete(k, "pod") }),
		withClaims(base, func(c, _ map[string]any) { c["sub"] = "system:serviceaccount:prod:admin" }),
		withClaims(base, func(_, k map[string]any) { k["namespace"] = "../x" }),
		withClaims(base, func(_, k map[string]any) { k["pod"] = "web-0" }),
		withClaims(base, func(_, k map[string]any) { k["node"] = nil }),
	}
	for _, s := range seeds {
		b, err := json.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	// A legacy (secret-based) service-account token's claims.
	f.Add([]byte(`{"iss":"kubernetes/serviceaccount","kubernetes.io/serviceaccount/namespace":"default","kubernetes.io/serviceaccount/secret.name":"default-token-abcde","kubernetes.io/serviceaccount/service-account.name":"default","kubernetes.io/serviceaccount/service-account.uid":"0d7e4bd2-1b6c-4d53-9a31-3f1e2d5c8a90","sub":"system:serviceaccount:default:default"}`))
	f.Add([]byte(`{"kubernetes.io":[]}`))
	f.Add([]byte(`{"kubernetes.io":{"namespace":1}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var c token.Claims
		if json.Unmarshal(b, &c) != nil {
			return
		}
		id, err := identityFromClaims(&c)
		if err != nil {
			if id != nil {
				t.Fatal("identity returned with an error")
			}
			return
		}
		if c.Subject != "system:serviceaccount:"+id.Namespace+":"+id.ServiceAccount {
			t.Fatalf("accepted sub %q for %+v", c.Subject, id)
		}
		if id.PodName == "" || id.PodUID == "" {
			t.Fatalf("accepted a token without pod binding: %+v", id)
		}
		sid := id.SPIFFEID(testTD)
		if sid.IsZero() {
			t.Fatalf("no SPIFFE ID for %+v", id)
		}
		if want := "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount; sid.Path() != want {
			t.Fatalf("path %q, want %q", sid.Path(), want)
		}
		if id.NodeName != "" {
			if _, err := id.AgentSPIFFEID(testTD); err != nil {
				t.Fatalf("agent id: %v", err)
			}
		}
		for _, s := range id.Selectors() {
			if s.Type != SelectorK8s || strings.ContainsAny(s.Value, "/ \n\\") {
				t.Fatalf("odd selector %+v", s)
			}
		}
	})
}

// FuzzJoinToken redeems arbitrary strings against a store holding one real
// token: only that token (give or take surrounding space) may succeed, once,
// and nothing may panic or leak the input into the error.
func FuzzJoinToken(f *testing.F) {
	ctx := context.Background()
	id := spiffeid.RequireFromPath(testTD, "/postern/agent/fuzz")
	st := newFakeJoinStore()
	real, err := CreateJoinToken(ctx, st, id, time.Hour, t0)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(real)
	f.Add("")
	f.Add(strings.Repeat("A", 43))
	f.Add(real[:42] + "=")
	f.Add(hashJoinToken(real))
	f.Add(strings.Repeat("\x00", 43))
	f.Add(real + real)
	f.Fuzz(func(t *testing.T, s string) {
		fresh := newFakeJoinStore()
		for h, rec := range st.tokens {
			fresh.tokens[h] = rec
		}
		got, err := ConsumeJoinToken(ctx, fresh, s, t0.Add(time.Minute))
		if err == nil {
			if strings.TrimSpace(s) != real || got != id {
				t.Fatalf("accepted %q as %v", s, got)
			}
			if _, err := ConsumeJoinToken(ctx, fresh, s, t0.Add(time.Minute)); !errors.Is(err, ErrAttestation) {
				t.Fatalf("replay: %v", err)
			}
			return
		}
		if !errors.Is(err, ErrAttestation) {
			t.Fatalf("refusal does not wrap ErrAttestation: %v", err)
		}
		if len(s) >= 8 && strings.Contains(err.Error(), s) {
			t.Fatal("error contains the input")
		}
	})
}
