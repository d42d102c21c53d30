package token

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// fakeResponse is what fakeIssuer answers on one path.
type fakeResponse struct {
	status       int // default 200
	contentType  string
	cacheControl string
	body         string
}

// fakeIssuer is an HTTP server on 127.0.0.1 whose answers the test sets per
// path, counting requests.
type fakeIssuer struct {
	*httptest.Server
	mu     sync.Mutex
	routes map[string]fakeResponse
	hits   map[string]int
	hitCh  chan string
}

func newFakeIssuer(t *testing.T) *fakeIssuer {
	f := &fakeIssuer{routes: map[string]fakeResponse{}, hits: map[string]int{}, hitCh: make(chan string, 100)}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeIssuer) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	resp, ok := f.routes[r.URL.Path]
	f.hits[r.URL.Path]++
	f.mu.Unlock()
	select {
	case f.hitCh <- r.URL.Path:
	default:
	}
	if !ok {
		http.NotFound(w, r)
		return
	}
	switch resp.contentType {
	case "none": // no Content-Type at all, and no sniffing either
		w.Header()["Content-Type"] = nil
	default:
		w.Header().Set("Content-Type", resp.contentType)
	}
	if resp.cacheControl != "" {
		w.Header().Set("Cache-Control", resp.cacheControl)
	}
	if resp.status != 0 {
		w.WriteHeader(resp.status)
	}
	_, _ = w.Write([]byte(resp.body))
}

func (f *fakeIssuer) set(path string, resp fakeResponse) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if resp.contentType == "" {
		resp.contentType = "application/json"
	}
	f.routes[path] = resp
}

// setKeys serves the public keys of keys at /jwks.
func (f *fakeIssuer) setKeys(t *testing.T, cacheControl string, keys ...*testKey) {
	t.Helper()
	var set jose.JSONWebKeySet
	for _, k := range keys {
		set.Keys = append(set.Keys, k.public())
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	f.set("/jwks", fakeResponse{cacheControl: cacheControl, body: string(b)})
}

func (f *fakeIssuer) hitCount(path string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hits[path]
}

func newRemote(t *testing.T, cfg RemoteConfig) *RemoteKeySet {
	t.Helper()
	r, err := NewRemoteKeySet(cfg)
	if err != nil {
		t.Fatalf("NewRemoteKeySet: %v", err)
	}
	return r
}

func wantKey(t *testing.T, r *RemoteKeySet, kid string) {
	t.Helper()
	k, err := r.Key(context.Background(), kid)
	if err != nil {
		t.Fatalf("Key(%q): %v", kid, err)
	}
	if k.KeyID != kid || !k.IsPublic() {
		t.Fatalf("Key(%q) = %+v", kid, k)
	}
}

func TestStaticKeySet(t *testing.T) {
	ec, ed := newTestKey(t, jose.ES256, "ec"), newTestKey(t, jose.EdDSA, "ed")
	t.Run("private keys become public", func(t *testing.T) {
		ks, err := NewStaticKeySet(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: ec.priv, KeyID: "ec"}, ed.public()}})
		if err != nil {
			t.Fatal(err)
		}
		for _, kid := range []string{"ec", "ed"} {
			k, err := ks.Key(context.Background(), kid)
			if err != nil || !k.IsPublic() {
				t.Fatalf("Key(%q) = %+v, %v", kid, k, err)
			}
		}
		if _, err := ks.Key(context.Background(), "nope"); !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("unknown kid: %v", err)
		}
		if _, err := ks.Key(context.Background(), ""); !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("empty kid, two keys: %v", err)
		}
	})
	t.Run("encryption keys are skipped", func(t *testing.T) {
		ks, err := NewStaticKeySet(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
			{Key: ec.priv.Public(), KeyID: "enc", Use: "enc"}, ed.public(),
		}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ks.Key(context.Background(), "enc"); !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("enc key: %v", err)
		}
		if k, err := ks.Key(context.Background(), ""); err != nil || k.KeyID != "ed" {
			t.Fatalf("empty kid, one signing key: %+v, %v", k, err)
		}
	})
	for name, set := range map[string]jose.JSONWebKeySet{
		"empty":         {},
		"symmetric":     {Keys: []jose.JSONWebKey{ec.public(), {Key: []byte("0123456789abcdef0123456789abcdef"), KeyID: "hs"}}},
		"only enc keys": {Keys: []jose.JSONWebKey{{Key: ec.priv.Public(), KeyID: "enc", Use: "enc"}}},
		"nil key":       {Keys: []jose.JSONWebKey{{KeyID: "nil"}}},
	} {
		t.Run("refuses "+name, func(t *testing.T) {
			if _, err := NewStaticKeySet(set); err == nil {
				t.Fatal("NewStaticKeySet succeeded")
			}
		})
	}
}

func TestNewRemoteKeySet(t *testing.T) {
	for name, cfg := range map[string]RemoteConfig{
		"neither":        {},
		"both":           {JWKSURI: "https://a/jwks", DiscoveryIssuer: "https://a"},
		"ftp":            {JWKSURI: "ftp://a/jwks"},
		"no host":        {JWKSURI: "https:///jwks"},
		"relative":       {JWKSURI: "/jwks"},
		"bad discovery":  {DiscoveryIssuer: "file:///etc/passwd"},
		"unparsable URL": {JWKSURI: "https://a b/%zz"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := NewRemoteKeySet(cfg); err == nil {
				t.Fatal("NewRemoteKeySet succeeded")
			}
		})
	}
}

func TestRemoteKeySetJWKSURI(t *testing.T) {
	f := newFakeIssuer(t)
	k1 := newTestKey(t, jose.ES256, "k1")
	f.setKeys(t, "", k1)
	r := newRemote(t, RemoteConfig{JWKSURI: f.URL + "/jwks", Now: newFakeClock().Now})
	if r.Ready() {
		t.Fatal("Ready before any fetch")
	}
	wantKey(t, r, "k1")
	if k, err := r.Key(context.Background(), ""); err != nil || k.KeyID != "k1" {
		t.Fatalf("Key(\"\") = %+v, %v; want the only key", k, err)
	}
	if !r.Ready() {
		t.Fatal("not Ready after a fetch")
	}
	wantKey(t, r, "k1")
	if n := f.hitCount("/jwks"); n != 1 {
		t.Fatalf("%d fetches, want 1 (known kids are served from the cache)", n)
	}

	// And through a Verifier.
	v := newTestVerifier(t, r, nil)
	if _, err := v.Verify(context.Background(), k1.mint(t, validClaims())); err != nil {
		t.Fatalf("Verify: %v", err)
	}
}

func TestRemoteKeySetDiscovery(t *testing.T) {
	k1 := newTestKey(t, jose.EdDSA, "k1")
	doc := func(f *fakeIssuer, issuer string) fakeResponse {
		b, _ := json.Marshal(map[string]string{"issuer": issuer, "jwks_uri": f.URL + "/jwks"})
		return fakeResponse{body: string(b)}
	}
	t.Run("openid-configuration", func(t *testing.T) {
		f := newFakeIssuer(t)
		f.setKeys(t, "", k1)
		f.set("/.well-known/openid-configuration", doc(f, f.URL))
		r := newRemote(t, RemoteConfig{DiscoveryIssuer: f.URL})
		wantKey(t, r, "k1")
		if f.hitCount("/.well-known/oauth-authorization-server") != 0 {
			t.Fatal("fell back although openid-configuration answered")
		}
	})
	t.Run("issuer with a trailing slash", func(t *testing.T) {
		f := newFakeIssuer(t)
		f.setKeys(t, "", k1)
		f.set("/.well-known/openid-configuration", doc(f, f.URL+"/"))
		r := newRemote(t, RemoteConfig{DiscoveryIssuer: f.URL + "/"})
		wantKey(t, r, "k1")
	})
	t.Run("fallback to oauth-authorization-server", func(t *testing.T) {
		f := newFakeIssuer(t)
		f.setKeys(t, "", k1)
		f.set("/.well-known/oauth-authorization-server", doc(f, f.URL))
		r := newRemote(t, RemoteConfig{DiscoveryIssuer: f.URL})
		wantKey(t, r, "k1")
		if f.hitCount("/.well-known/openid-configuration") != 1 {
			t.Fatal("openid-configuration was not tried first")
		}
	})
	refused := map[string]func(f *fakeIssuer){
		"issuer mismatch": func(f *fakeIssuer) {
			f.set("/.well-known/openid-configuration", doc(f, "https://evil.test"))
			f.set("/.well-known/oauth-authorization-server", doc(f, f.URL))
		},
		"issuer mismatch in the fallback": func(f *fakeIssuer) {
			f.set("/.well-known/oauth-authorization-server", doc(f, f.URL+"/other"))
		},
		"no document": func(*fakeIssuer) {},
		"document not JSON": func(f *fakeIssuer) {
			f.set("/.well-known/openid-configuration", fakeResponse{body: "{"})
		},
		"no jwks_uri": func(f *fakeIssuer) {
			b, _ := json.Marshal(map[string]string{"issuer": f.URL})
			f.set("/.well-known/openid-configuration", fakeResponse{body: string(b)})
		},
		"jwks_uri not http": func(f *fakeIssuer) {
			b, _ := json.Marshal(map[string]string{"issuer": f.URL, "jwks_uri": "file:///etc/jwks"})
			f.set("/.well-known/openid-configuration", fakeResponse{body: string(b)})
		},
	}
	for name, setup := range refused {
		t.Run("refuses "+name, func(t *testing.T) {
			f := newFakeIssuer(t)
			f.setKeys(t, "", k1)
			setup(f)
			r := newRemote(t, RemoteConfig{DiscoveryIssuer: f.URL})
			if _, err := r.Key(context.Background(), "k1"); !errors.Is(err, ErrKeysUnavailable) {
				t.Fatalf("Key = %v, want ErrKeysUnavailable", err)
			}
			if r.Ready() {
				t.Fatal("Ready after a refused discovery")
			}
			if f.hitCount("/jwks") != 0 {
				t.Fatal("fetched the JWKS named by a refused document")
			}
		})
	}
}

func TestRemoteKeySetRotation(t *testing.T) {
	f := newFakeIssuer(t)
	clock := newFakeClock()
	k1, k2 := newTestKey(t, jose.ES256, "k1"), newTestKey(t, jose.ES256, "k2")
	f.setKeys(t, "", k1)
	r := newRemote(t, RemoteConfig{JWKSURI: f.URL + "/jwks", Now: clock.Now, MinRefreshInterval: 10 * time.Second})
	v := newTestVerifier(t, r, nil)
	wantKey(t, r, "k1")

	// The server rotates to k2 (k1 stays for overlap).
	f.setKeys(t, "", k1, k2)
	clock.Advance(11 * time.Second)
	if _, err := v.Verify(context.Background(), k2.mint(t, validClaims())); err != nil {
		t.Fatalf("Verify with the rotated key: %v", err)
	}
	if n := f.hitCount("/jwks"); n != 2 {
		t.Fatalf("%d fetches, want 2", n)
	}
	// Empty kid and two keys: refused, not guessed.
	if _, err := r.Key(context.Background(), ""); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("Key(\"\") = %v", err)
	}
}

func TestRemoteKeySetRateLimit(t *testing.T) {
	f := newFakeIssuer(t)
	clock := newFakeClock()
	k1 := newTestKey(t, jose.ES256, "k1")
	f.setKeys(t, "", k1)
	r := newRemote(t, RemoteConfig{JWKSURI: f.URL + "/jwks", Now: clock.Now, MinRefreshInterval: 10 * time.Second})
	wantKey(t, r, "k1")

	// A flood of unknown kids within the interval: one fetch for all of
	// them (unknown kids have their own limit, so a rotation just after a
	// scheduled fetch is still seen).
	for i := range 50 {
		if _, err := r.Key(context.Background(), "random-"+string(rune('a'+i%26))); !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("Key(unknown) = %v", err)
		}
		clock.Advance(100 * time.Millisecond) // 5s in all
	}
	if n := f.hitCount("/jwks"); n != 2 {
		t.Fatalf("%d fetches within the interval, want 2", n)
	}
	if err := r.Refresh(context.Background()); err != nil {
		t.Fatalf("rate-limited Refresh = %v, want the last result (nil)", err)
	}
	if n := f.hitCount("/jwks"); n != 2 {
		t.Fatalf("Refresh within the interval fetched")
	}

	// Once the interval has passed, one unknown kid refreshes once.
	clock.Advance(5 * time.Second)
	for range 10 {
		_, _ = r.Key(context.Background(), "still-unknown")
	}
	if n := f.hitCount("/jwks"); n != 3 {
		t.Fatalf("%d fetches, want 3", n)
	}

	// Concurrent unknown kids are still one fetch.
	clock.Advance(time.Minute)
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() { _, _ = r.Key(context.Background(), "concurrent") })
	}
	wg.Wait()
	if n := f.hitCount("/jwks"); n != 4 {
		t.Fatalf("%d fetches, want 4", n)
	}
}

func TestRemoteKeySetFailures(t *testing.T) {
	k1 := newTestKey(t, jose.ES256, "k1")
	k2 := newTestKey(t, jose.ES256, "k2")
	goodSet := func(t *testing.T) string {
		b, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{k1.public(), k2.public()}})
		return string(b)
	}
	tests := []struct {
		name string
		resp func(t *testing.T) fakeResponse
		cfg  func(*RemoteConfig)
	}{
		{name: "server error", resp: func(*testing.T) fakeResponse { return fakeResponse{status: 500, body: "oops"} }},
		{name: "not found", resp: func(*testing.T) fakeResponse { return fakeResponse{status: 404} }},
		{name: "redirect status", resp: func(*testing.T) fakeResponse { return fakeResponse{status: 304} }},
		{name: "not JSON", resp: func(*testing.T) fakeResponse { return fakeResponse{body: "<html>"} }},
		{name: "empty key set", resp: func(*testing.T) fakeResponse { return fakeResponse{body: `{"keys":[]}`} }},
		{name: "no keys member", resp: func(*testing.T) fakeResponse { return fakeResponse{body: `{}`} }},
		{name: "symmetric key", resp: func(t *testing.T) fakeResponse {
			return fakeResponse{body: `{"keys":[{"kty":"oct","kid":"k2","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]}`}
		}},
		{name: "symmetric key beside a good one", resp: func(t *testing.T) fakeResponse {
			b, _ := json.Marshal(k2.public())
			return fakeResponse{body: `{"keys":[` + string(b) + `,{"kty":"oct","kid":"h","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]}`}
		}},
		{name: "only encryption keys", resp: func(t *testing.T) fakeResponse {
			k := k2.public()
			k.Use = "enc"
			b, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{k}})
			return fakeResponse{body: string(b)}
		}},
		{name: "non-JSON content type", resp: func(t *testing.T) fakeResponse {
			return fakeResponse{contentType: "text/html", body: goodSet(t)}
		}},
		{name: "unparsable content type", resp: func(t *testing.T) fakeResponse {
			return fakeResponse{contentType: "json;;==", body: goodSet(t)}
		}},
		{name: "body over MaxBodyBytes", resp: func(t *testing.T) fakeResponse {
			return fakeResponse{body: goodSet(t)}
		}, cfg: func(c *RemoteConfig) { c.MaxBodyBytes = 64 }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			newCfg := func(f *fakeIssuer, clock *fakeClock) RemoteConfig {
				cfg := RemoteConfig{JWKSURI: f.URL + "/jwks", Now: clock.Now, MinRefreshInterval: 10 * time.Second}
				if tc.cfg != nil {
					tc.cfg(&cfg)
				}
				return cfg
			}
			t.Run("first fetch", func(t *testing.T) {
				f, clock := newFakeIssuer(t), newFakeClock()
				f.set("/jwks", tc.resp(t))
				r := newRemote(t, newCfg(f, clock))
				if _, err := r.Key(context.Background(), "k2"); !errors.Is(err, ErrKeysUnavailable) {
					t.Fatalf("Key = %v, want ErrKeysUnavailable", err)
				}
				if r.Ready() {
					t.Fatal("Ready after a refused first fetch")
				}
				if err := r.Refresh(context.Background()); err == nil {
					t.Fatal("Refresh within the interval forgot the failure")
				}
			})
			t.Run("keeps the last good keys", func(t *testing.T) {
				f, clock := newFakeIssuer(t), newFakeClock()
				f.setKeys(t, "", k1)
				r := newRemote(t, RemoteConfig{JWKSURI: f.URL + "/jwks", Now: clock.Now, MinRefreshInterval: 10 * time.Second})
				wantKey(t, r, "k1")
				if tc.cfg != nil { // tighten the limits only now, so the good set fits
					tc.cfg(&r.cfg)
				}

				f.set("/jwks", tc.resp(t))
				clock.Advance(time.Minute)
				if err := r.Refresh(context.Background()); err == nil {
					t.Fatal("Refresh accepted the bad response")
				}
				if _, err := r.Key(context.Background(), "k2"); !errors.Is(err, ErrUnknownKey) {
					t.Fatalf("Key(k2) = %v, want ErrUnknownKey", err)
				}
				wantKey(t, r, "k1")
				if !r.Ready() {
					t.Fatal("not Ready with last good keys")
				}
				if _, err := newTestVerifier(t, r, nil).Verify(context.Background(), k1.mint(t, validClaims())); err != nil {
					t.Fatalf("Verify with last good keys: %v", err)
				}
			})
		})
	}
}

func TestRemoteKeySetContentTypes(t *testing.T) {
	k1 := newTestKey(t, jose.ES256, "k1")
	for _, ct := range []string{"application/json", "application/json; charset=utf-8", "application/jwk-set+json", "Application/JSON", "none"} {
		t.Run(ct, func(t *testing.T) {
			f := newFakeIssuer(t)
			f.setKeys(t, "", k1)
			b, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{k1.public()}})
			f.set("/jwks", fakeResponse{contentType: ct, body: string(b)})
			r := newRemote(t, RemoteConfig{JWKSURI: f.URL + "/jwks"})
			wantKey(t, r, "k1")
		})
	}
}

// TestRemoteKeySetMaxAge checks the cache lifetime a response sets. Only Run
// acts on it, so the test reads it from the state (white box).
func TestRemoteKeySetMaxAge(t *testing.T) {
	k1 := newTestKey(t, jose.ES256, "k1")
	tests := []struct {
		cacheControl string
		want         time.Duration
	}{
		{"", 5 * time.Minute},            // DefaultMaxAge
		{"max-age=120", 2 * time.Minute}, // honoured
		{"public, max-age=600, must-revalidate", 10 * time.Minute},
		{"MAX-AGE=60", time.Minute},                       // case-insensitive
		{"max-age=1", 10 * time.Second},                   // floor: MinRefreshInterval
		{"max-age=0", 10 * time.Second},                   // floor
		{"max-age=31536000", 24 * time.Hour},              // ceiling: MaxMaxAge
		{"max-age=-5", 5 * time.Minute},                   // invalid: default
		{"max-age=abc", 5 * time.Minute},                  // invalid: default
		{"no-store", 5 * time.Minute},                     // not a max-age
		{"max-age=99999999999999999999", 5 * time.Minute}, // overflow: default
	}
	for _, tc := range tests {
		t.Run(tc.cacheControl, func(t *testing.T) {
			f, clock := newFakeIssuer(t), newFakeClock()
			f.setKeys(t, tc.cacheControl, k1)
			r := newRemote(t, RemoteConfig{JWKSURI: f.URL + "/jwks", Now: clock.Now})
			if err := r.Refresh(context.Background()); err != nil {
				t.Fatal(err)
			}
			st := r.state.Load()
			if got := st.expires.Sub(st.fetched); got != tc.want {
				t.Fatalf("max age %v, want %v", got, tc.want)
			}
			if !st.fetched.Equal(testNow) {
				t.Fatalf("fetched at %v, want the injected clock's %v", st.fetched, testNow)
			}
		})
	}
}

// TestRemoteKeySetRun checks background refresh: Run fetches at once when it
// has no keys, then again when the (short) max-age runs out, and stops with
// its context.
func TestRemoteKeySetRun(t *testing.T) {
	f := newFakeIssuer(t)
	k1 := newTestKey(t, jose.ES256, "k1")
	f.setKeys(t, "max-age=0", k1)
	r := newRemote(t, RemoteConfig{JWKSURI: f.URL + "/jwks", MinRefreshInterval: 20 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()

	deadline := time.After(10 * time.Second)
	for n := 0; n < 3; {
		select {
		case p := <-f.hitCh:
			if p == "/jwks" {
				n++
			}
		case <-deadline:
			t.Fatalf("Run fetched %d times in 10s", n)
		}
	}
	if !r.Ready() {
		t.Fatal("not Ready while Run refreshes")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not stop with its context")
	}
}

// TestRemoteKeySetRunStartsAtOnce: a key set that Run drives is ready long
// before the refresh interval.
func TestRemoteKeySetRunStartsAtOnce(t *testing.T) {
	f := newFakeIssuer(t)
	f.setKeys(t, "", newTestKey(t, jose.ES256, "k1"))
	r := newRemote(t, RemoteConfig{JWKSURI: f.URL + "/jwks", MinRefreshInterval: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	select {
	case <-f.hitCh:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not fetch on start")
	}
}

// TestRemoteKeySetCancelledCaller: a caller whose context is already done
// must not use up the refresh interval for everyone else.
func TestRemoteKeySetCancelledCaller(t *testing.T) {
	f, clock := newFakeIssuer(t), newFakeClock()
	f.setKeys(t, "", newTestKey(t, jose.ES256, "k1"))
	r := newRemote(t, RemoteConfig{JWKSURI: f.URL + "/jwks", Now: clock.Now})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.Key(ctx, "k1"); !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("Key(cancelled) = %v, want ErrKeysUnavailable", err)
	}
	wantKey(t, r, "k1")
}

// TestRemoteKeySetSkipsUnsupportedKeys: RFC 7517 §5, a JWK Set member of a
// type we do not understand is ignored, not fatal to the whole set.
func TestRemoteKeySetSkipsUnsupportedKeys(t *testing.T) {
	f := newFakeIssuer(t)
	k1 := newTestKey(t, jose.ES256, "k1")
	good, _ := json.Marshal(k1.public())
	f.set("/jwks", fakeResponse{body: `{"keys":[{"kty":"XYZ","kid":"future"},` + string(good) + `]}`})
	r := newRemote(t, RemoteConfig{JWKSURI: f.URL + "/jwks"})
	wantKey(t, r, "k1")
	if _, err := r.Key(context.Background(), "future"); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("Key(future) = %v", err)
	}
}

// TestRemoteKeySetRefusesPrivateKeys: a JWKS that publishes private key
// material is misconfigured; it is refused, not trimmed to public halves.
func TestRemoteKeySetRefusesPrivateKeys(t *testing.T) {
	f := newFakeIssuer(t)
	k1 := newTestKey(t, jose.ES256, "k1")
	priv, err := json.Marshal(jose.JSONWebKey{Key: k1.priv, KeyID: "k1"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(priv), `"d"`) {
		t.Fatalf("private JWK without d: %s", priv)
	}
	f.set("/jwks", fakeResponse{body: `{"keys":[` + string(priv) + `]}`})
	r := newRemote(t, RemoteConfig{JWKSURI: f.URL + "/jwks"})
	if _, err := r.Key(context.Background(), "k1"); !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("Key = %v, want ErrKeysUnavailable", err)
	}
}

// TestRemoteKeySetRefusesPlainHTTP: signing keys are fetched over TLS: a
// plain http URL is refused unless it is on loopback, and an https
// issuer's discovery document cannot send the fetch to plain http.
func TestRemoteKeySetRefusesPlainHTTP(t *testing.T) {
	for _, cfg := range []RemoteConfig{
		{JWKSURI: "http://keys.example.com/jwks"},
		{DiscoveryIssuer: "http://idp.example.com"},
		{JWKSURI: "ftp://keys.example.com/jwks"},
		{JWKSURI: "https://user:pw@keys.example.com/jwks"},
	} {
		if _, err := NewRemoteKeySet(cfg); err == nil {
			t.Errorf("NewRemoteKeySet(%+v) accepted", cfg)
		}
	}
	for _, u := range []string{"https://keys.example.com/jwks", "http://127.0.0.1:8080/jwks", "http://localhost/jwks", "http://[::1]:1/jwks"} {
		if _, err := NewRemoteKeySet(RemoteConfig{JWKSURI: u}); err != nil {
			t.Errorf("NewRemoteKeySet(%s): %v", u, err)
		}
	}

	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &k.PublicKey, KeyID: "x", Use: "sig", Algorithm: "ES256"}}})
	}))
	defer plain.Close()
	var iss string
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"issuer": iss, "jwks_uri": plain.URL + "/jwks"})
	}))
	defer srv.Close()
	iss = srv.URL
	r, err := NewRemoteKeySet(RemoteConfig{DiscoveryIssuer: iss, HTTPClient: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Key(context.Background(), "x"); err == nil {
		t.Error("an https issuer's discovery sent the key fetch to plain http, and the keys were used")
	}
}
