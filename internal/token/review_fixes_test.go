package token

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// A claim set is a JSON object: whitespace JSON does not allow (\v, \f,
// Unicode spaces) around it makes the payload something else, and it is
// refused as every other parser would refuse it.
func TestPayloadMustBeAJSONObject(t *testing.T) {
	k := newTestKey(t, jose.ES256, "k")
	v := newTestVerifier(t, staticKeys(t, k), nil)
	body := `{"iss":"` + testIssuer + `","aud":"` + testAudience + `","exp":2000000000}`
	if _, err := v.Verify(context.Background(), k.craft(t, k.header(), []byte(" \n"+body+"\t"))); err != nil {
		t.Fatalf("JSON whitespace around the object: %v", err)
	}
	for _, pad := range []string{"\v", "\f", "\u00a0", "\u0085", "\u3000"} {
		if _, err := v.Verify(context.Background(), k.craft(t, k.header(), []byte(pad+body+pad))); err == nil {
			t.Errorf("payload padded with %q accepted", pad)
		}
	}
}

// VerifyParsed returns a copy sharing nothing with the Parsed: a caller that
// edits it cannot change what another verification of the same Parsed
// checks.
func TestVerifyParsedReturnsADeepCopy(t *testing.T) {
	k := newTestKey(t, jose.ES256, "k")
	ks := staticKeys(t, k)
	vA := newTestVerifier(t, ks, nil)
	vB := newTestVerifier(t, ks, func(c *VerifierConfig) { c.Audience = "spiffe://other" })
	cl := validClaims()
	cl.Act = &Actor{Subject: "svc-a", Actor: &Actor{Subject: "svc-b"}}
	cl.Extra = map[string]any{"groups": []any{"a"}, "addr": map[string]any{"city": "x"}}
	p, err := Parse(k.mint(t, cl), 0)
	if err != nil {
		t.Fatal(err)
	}
	c1, err := vA.VerifyParsed(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	c1.Audience[0] = "spiffe://other"
	c1.Act.Actor.Subject = "admin"
	c1.Extra["groups"].([]any)[0] = "admins"
	c1.Extra["addr"].(map[string]any)["city"] = "y"
	if _, err := vB.VerifyParsed(context.Background(), p); err == nil {
		t.Fatal("an edit of one result made another verifier accept the token")
	}
	c2, err := vA.VerifyParsed(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	if c2.Act.Actor.Subject != "svc-b" || c2.Extra["groups"].([]any)[0] != "a" || c2.Extra["addr"].(map[string]any)["city"] != "x" {
		t.Errorf("an edit of one result reached the next: %+v", c2)
	}
}

// Lookups of unknown kids by callers that hang up still cost one fetch per
// interval: the limiter is not given back when the caller goes away.
func TestRemoteKeySetUnknownKidsFromCallersThatHangUp(t *testing.T) {
	k := newTestKey(t, jose.ES256, "k")
	var fetches atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fetches.Add(1) > 1 {
			select {
			case <-time.After(50 * time.Millisecond):
			case <-r.Context().Done():
			}
		}
		b, _ := k.public().MarshalJSON()
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"keys":[` + string(b) + `]}`))
	}))
	defer srv.Close()
	rk, err := NewRemoteKeySet(RemoteConfig{JWKSURI: srv.URL, MinRefreshInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rk.Key(context.Background(), "k"); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
		_, _ = rk.Key(ctx, "made-up-"+strings.Repeat("x", i))
		cancel()
	}
	if n := fetches.Load(); n != 2 {
		t.Errorf("%d fetches for 20 made-up kids within the interval, want 2 (the first load and one refresh)", n)
	}
}

func TestRemoteKeySetHolds(t *testing.T) {
	k := newTestKey(t, jose.ES256, "k1")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := k.public().MarshalJSON()
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"keys":[` + string(b) + `]}`))
	}))
	defer srv.Close()
	rk, err := NewRemoteKeySet(RemoteConfig{JWKSURI: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	if rk.Holds("k1") {
		t.Error("holds a key before loading any")
	}
	if _, err := rk.Key(context.Background(), "k1"); err != nil {
		t.Fatal(err)
	}
	if !rk.Holds("k1") || !rk.Holds("") || rk.Holds("k2") {
		t.Errorf("Holds: k1 %v, no kid %v, k2 %v; want true, true (one key), false", rk.Holds("k1"), rk.Holds(""), rk.Holds("k2"))
	}
}
