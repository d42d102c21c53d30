package introspect

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const issuer = "https://idp.test"

type fakeIdP struct {
	*httptest.Server
	hits    atomic.Int32
	mu      sync.Mutex
	answers map[string]string // token → JSON
	status  int
}

func newIdP(t *testing.T, now time.Time) *fakeIdP {
	f := &fakeIdP{answers: map[string]string{}, status: 200}
	exp := now.Add(time.Hour).Unix()
	f.answers["good"] = fmt.Sprintf(`{"active":true,"sub":"alice","scope":"orders:read","aud":"shop","exp":%d,"email":"a@x","token_type":"Bearer"}`, exp)
	f.answers["inactive"] = `{"active":false}`
	f.answers["other-iss"] = fmt.Sprintf(`{"active":true,"iss":"https://evil.test","sub":"alice","exp":%d}`, exp)
	f.answers["no-exp"] = `{"active":true,"sub":"alice"}`
	f.answers["no-sub"] = fmt.Sprintf(`{"active":true,"exp":%d}`, exp)
	f.answers["not-yet"] = fmt.Sprintf(`{"active":true,"sub":"alice","exp":%d,"nbf":%d}`, exp, now.Add(10*time.Minute).Unix())
	f.answers["active-string"] = fmt.Sprintf(`{"active":"true","sub":"alice","exp":%d}`, exp)
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.hits.Add(1)
		id, secret, ok := r.BasicAuth()
		if !ok || id != "gw" || secret != "s3cret" || r.Method != http.MethodPost {
			http.Error(w, `{"error":"invalid_client"}`, 401)
			return
		}
		f.mu.Lock()
		status, ans := f.status, f.answers[r.PostFormValue("token")]
		f.mu.Unlock()
		if ans == "" {
			ans = `{"active":false}`
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		fmt.Fprint(w, ans)
	}))
	t.Cleanup(f.Close)
	return f
}

func newClient(t *testing.T, f *fakeIdP, now *time.Time) *Client {
	c, err := New(Config{Endpoint: f.URL, ClientID: "gw", ClientSecret: "s3cret", Issuer: issuer, Now: func() time.Time { return *now }})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestIntrospect(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	f := newIdP(t, now)
	c := newClient(t, f, &now)
	ctx := context.Background()

	claims, err := c.Introspect(ctx, "good")
	if err != nil {
		t.Fatal(err)
	}
	if claims.Subject != "alice" || claims.Issuer != issuer || !claims.HasAudience("shop") || claims.Extra["email"] != "a@x" || claims.Extra["active"] != nil {
		t.Errorf("claims = %+v", claims)
	}
	if _, err := c.Introspect(ctx, "good"); err != nil || f.hits.Load() != 1 {
		t.Errorf("second call: %v, %d hits (want a cached result)", err, f.hits.Load())
	}
	// Cached for at most MaxTTL (5m), though exp is an hour away.
	now = now.Add(6 * time.Minute)
	if _, err := c.Introspect(ctx, "good"); err != nil || f.hits.Load() != 2 {
		t.Errorf("after MaxTTL: %v, %d hits", err, f.hits.Load())
	}

	for _, tok := range []string{"inactive", "other-iss", "no-exp", "no-sub", "active-string", "not-yet", "unknown"} {
		t.Run(tok, func(t *testing.T) {
			if _, err := c.Introspect(ctx, tok); !errors.Is(err, ErrInactive) {
				t.Fatalf("err = %v, want ErrInactive", err)
			}
		})
	}
	// A short-lived token is cached only until its exp.
	f.mu.Lock()
	f.answers["short"] = fmt.Sprintf(`{"active":true,"sub":"bob","exp":%d}`, now.Add(time.Minute).Unix())
	f.mu.Unlock()
	if _, err := c.Introspect(ctx, "short"); err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Minute)
	hits := f.hits.Load()
	if _, err := c.Introspect(ctx, "short"); !errors.Is(err, ErrInactive) || f.hits.Load() != hits+1 {
		t.Errorf("expired token: %v (hits %d→%d)", err, hits, f.hits.Load())
	}
}

func TestIntrospectFailuresNeverActive(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	f := newIdP(t, now)
	c := newClient(t, f, &now)
	f.status = 503
	if _, err := c.Introspect(context.Background(), "good"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	// Failures are not cached: the next call asks again.
	f.mu.Lock()
	f.status = 200
	f.mu.Unlock()
	if _, err := c.Introspect(context.Background(), "good"); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	bad, _ := New(Config{Endpoint: f.URL, ClientID: "gw", ClientSecret: "wrong", Issuer: issuer})
	if _, err := bad.Introspect(context.Background(), "good"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("wrong client secret: %v", err)
	}
	if _, err := c.Introspect(context.Background(), ""); !errors.Is(err, ErrInactive) {
		t.Errorf("empty token: %v", err)
	}
}

func TestIntrospectSharesConcurrentCalls(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	f := newIdP(t, now)
	c := newClient(t, f, &now)
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if _, err := c.Introspect(context.Background(), "good"); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := f.hits.Load(); n > 3 {
		t.Errorf("%d requests for 20 concurrent identical calls", n)
	}
}

func TestNewValidates(t *testing.T) {
	for name, cfg := range map[string]Config{
		"plain http": {Endpoint: "http://idp.example/introspect", ClientID: "a", ClientSecret: "b", Issuer: issuer},
		"no secret":  {Endpoint: "https://idp.example/introspect", ClientID: "a", Issuer: issuer},
		"no issuer":  {Endpoint: "https://idp.example/introspect", ClientID: "a", ClientSecret: "b"},
		"not a URL":  {Endpoint: "::", ClientID: "a", ClientSecret: "b", Issuer: issuer},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{`{"active":true,"sub":"a","exp":1900000000}`, `{"active":false}`, `[]`, `{"active":true,"act":{"sub":"x"},"exp":1e20}`} {
		f.Add([]byte(s))
	}
	c, _ := New(Config{Endpoint: "https://idp.example/i", ClientID: "a", ClientSecret: "b", Issuer: issuer, Now: func() time.Time { return time.Unix(1_800_000_000, 0) }})
	f.Fuzz(func(t *testing.T, body []byte) {
		claims, err := c.parse(body)
		if err != nil {
			return
		}
		var m map[string]any
		if json.Unmarshal(body, &m) != nil || m["active"] != true || claims.Subject == "" || claims.Issuer != issuer {
			t.Fatalf("accepted %q as %+v", body, claims)
		}
	})
}

// A flood of different made-up tokens reaches the issuer at most
// MaxInFlight requests at a time; the rest fail as unavailable, never as
// active.
func TestIntrospectBoundsRequestsInFlight(t *testing.T) {
	release := make(chan struct{})
	var inFlight, peak atomic.Int32
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		<-release
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"active":false}`)
	}))
	defer idp.Close()
	c, err := New(Config{Endpoint: idp.URL, ClientID: "gw", ClientSecret: "s3cret", Issuer: issuer, MaxInFlight: 2, MaxInFlightWait: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var unavailable atomic.Int32
	for i := range 8 {
		wg.Go(func() {
			_, err := c.Introspect(context.Background(), fmt.Sprintf("made-up-%d", i))
			if errors.Is(err, ErrUnavailable) {
				unavailable.Add(1)
			} else if !errors.Is(err, ErrInactive) {
				t.Errorf("token %d: %v", i, err)
			}
		})
	}
	// Hold the two requests until the six others have given up.
	for deadline := time.Now().Add(10 * time.Second); unavailable.Load() < 6 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	close(release)
	wg.Wait()
	if p := peak.Load(); p > 2 {
		t.Errorf("%d requests in flight at once, want at most 2", p)
	}
	if u := unavailable.Load(); u != 6 {
		t.Errorf("%d calls unavailable, want 6 (8 less the 2 slots)", u)
	}
}

// A caller that gives up does not fail the others waiting on the same
// request.
func TestIntrospectCallerCancelDoesNotFailOthers(t *testing.T) {
	now := time.Now()
	f := newIdP(t, now)
	slow := make(chan struct{})
	inner := f.Config.Handler
	gated := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-slow; inner.ServeHTTP(w, r) }))
	defer gated.Close()
	c, err := New(Config{Endpoint: gated.URL, ClientID: "gw", ClientSecret: "s3cret", Issuer: issuer, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() { _, err := c.Introspect(ctx, "good"); first <- err }()
	time.Sleep(20 * time.Millisecond)
	second := make(chan error, 1)
	go func() { _, err := c.Introspect(context.Background(), "good"); second <- err }()
	time.Sleep(20 * time.Millisecond)
	cancel()
	if err := <-first; !errors.Is(err, ErrUnavailable) {
		t.Errorf("cancelled caller: %v", err)
	}
	close(slow)
	if err := <-second; err != nil {
		t.Errorf("the other caller failed with the first one's cancellation: %v", err)
	}
}
