package sts

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"postern.dev/postern/internal/policy"
)

// pollers counts the running remote key set pollers.
func pollers() int {
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	return strings.Count(string(buf[:n]), "(*RemoteKeySet).Run")
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func engineWithJWKSURI(t *testing.T, uri string) *policy.Engine {
	t.Helper()
	set, err := policy.Parse("r.yaml", []byte(fmt.Sprintf(`apiVersion: postern.dev/v1
kind: TrustedIssuer
metadata: {name: remote}
spec:
  issuer: %s/iss
  audiences: [shop]
  algorithms: [ES256]
  jwksURI: %s/keys
`, uri, uri)))
	if err != nil {
		t.Fatal(err)
	}
	e, err := policy.Compile(set, policy.CompileOptions{SelfIssuer: testIssuer})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// One poller per external key set, started by Run, stopped when a reload
// no longer uses its key set and when Run ends: reloads do not pile up
// pollers of retired URLs.
func TestRemoteKeySetsFollowTheResources(t *testing.T) {
	jwks := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"keys":[]}`))
	})
	before := pollers()
	h := newHarness(t)
	first := httptest.NewServer(jwks)
	defer first.Close()
	if err := h.svc.SetEngine(engineWithJWKSURI(t, first.URL)); err != nil {
		t.Fatal(err)
	}
	if n := pollers() - before; n != 0 {
		t.Errorf("%d pollers before Run", n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.svc.Run(ctx); close(done) }()
	waitFor(t, "one poller once Run starts", func() bool { return pollers()-before == 1 })
	for range 5 {
		s := httptest.NewServer(jwks)
		defer s.Close()
		if err := h.svc.SetEngine(engineWithJWKSURI(t, s.URL)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "still one poller after five re-pointing reloads", func() bool { return pollers()-before == 1 })
	h.svc.remoteMu.Lock()
	held := len(h.svc.remotes)
	h.svc.remoteMu.Unlock()
	if held != 1 {
		t.Errorf("%d remote key sets held, want 1", held)
	}
	cancel()
	<-done
	waitFor(t, "no poller after Run ends", func() bool { return pollers()-before == 0 })
}
