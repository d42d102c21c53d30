package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

var (
	webID = "spiffe://example.org/ns/default/sa/web"
	dbID  = "spiffe://example.org/ns/default/sa/db"
)

func webEntry() Entry {
	return Entry{SPIFFEID: webID, Selectors: []Selector{unix("uid:1000")}, TTL: time.Hour}
}

func dbEntry() Entry {
	return Entry{SPIFFEID: dbID, Selectors: []Selector{unix("uid:2000"), unix("gid:2000")}, TTL: time.Hour}
}

func newClient(t testing.TB, h *harness) *workloadapi.Client {
	t.Helper()
	c, err := workloadapi.New(context.Background(), workloadapi.WithAddr(h.addr))
	if err != nil {
		t.Fatalf("workloadapi.New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestFetchX509AndJWT(t *testing.T) {
	fs := newFakeServer(t, newClock(), webEntry(), dbEntry())
	att := &fakeAttestor{}
	att.set(unix("uid:1000"), unix("gid:1000"))
	h := startAgent(t, fs, att)
	if got := h.agent.SPIFFEID().String(); got != testAgentID {
		t.Fatalf("agent ID = %q", got)
	}
	c := newClient(t, h)
	ctx := ctxTimeout(t, 10*time.Second)

	svid, err := c.FetchX509SVID(ctx)
	if err != nil {
		t.Fatalf("FetchX509SVID: %v", err)
	}
	if svid.ID.String() != webID {
		t.Fatalf("SVID ID = %s, want %s", svid.ID, webID)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, x509bundle.FromX509Authorities(fs.ca.TrustDomain, []*x509.Certificate{fs.ca.Cert})); err != nil {
		t.Fatalf("SVID does not verify: %v", err)
	}
	all, err := c.FetchX509SVIDs(ctx)
	if err != nil || len(all) != 1 {
		t.Fatalf("FetchX509SVIDs = %d SVIDs, %v; want only the matching one", len(all), err)
	}

	bundles, err := c.FetchX509Bundles(ctx)
	if err != nil {
		t.Fatalf("FetchX509Bundles: %v", err)
	}
	b, err := bundles.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString(testTD))
	if err != nil || !b.HasX509Authority(fs.ca.Cert) {
		t.Fatalf("X.509 bundle lacks the root: %v", err)
	}

	// JWT bundle: eventually holds the server's key (after the first refresh).
	eventually(t, "JWT bundle", func() bool {
		jb, err := c.FetchJWTBundles(ctx)
		if err != nil {
			return false
		}
		b, err := jb.GetJWTBundleForTrustDomain(spiffeid.RequireTrustDomainFromString(testTD))
		return err == nil && b.HasJWTAuthority("k1")
	})

	jsv, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "api", ExtraAudiences: []string{"other"}})
	if err != nil {
		t.Fatalf("FetchJWTSVID: %v", err)
	}
	if jsv.ID.String() != webID || len(jsv.Audience) != 2 {
		t.Fatalf("JWT-SVID = %s %v", jsv.ID, jsv.Audience)
	}
	// Cached: the same audience set (any order) does not reach the server.
	again, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "other", ExtraAudiences: []string{"api"}})
	if err != nil || again.Marshal() != jsv.Marshal() || fs.jwtCalls.Load() != 1 {
		t.Fatalf("second fetch: err=%v same=%v calls=%d", err, again.Marshal() == jsv.Marshal(), fs.jwtCalls.Load())
	}
	// Past half its lifetime, a new one is fetched.
	h.clock.Add(3 * time.Minute)
	if _, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "api", ExtraAudiences: []string{"other"}}); err != nil || fs.jwtCalls.Load() != 2 {
		t.Fatalf("refetch: err=%v calls=%d", err, fs.jwtCalls.Load())
	}

	validated, err := c.ValidateJWTSVID(ctx, jsv.Marshal(), "api")
	if err != nil || validated.ID.String() != webID {
		t.Fatalf("ValidateJWTSVID: %v", err)
	}
	raw := workload.NewSpiffeWorkloadAPIClient(rawConn(t, h))
	vr, err := raw.ValidateJWTSVID(withHeader(ctx), &workload.ValidateJWTSVIDRequest{Svid: jsv.Marshal(), Audience: "api"})
	if err != nil {
		t.Fatalf("raw ValidateJWTSVID: %v", err)
	}
	if vr.SpiffeId != webID || vr.Claims.Fields["sub"].GetStringValue() != webID || vr.Claims.Fields["iss"].GetStringValue() != "https://sts.example.org" {
		t.Fatalf("claims = %v", vr.Claims)
	}

	t.Run("validate refusals", func(t *testing.T) {
		other := testcaJWT(t)
		for _, tc := range []struct {
			name, token, aud string
			code             codes.Code
		}{
			{"wrong audience", jsv.Marshal(), "nope", codes.InvalidArgument},
			{"unknown key", other, "api", codes.InvalidArgument},
			{"garbage", "not.a.jwt", "api", codes.InvalidArgument},
			{"no audience", jsv.Marshal(), "", codes.InvalidArgument},
			{"no token", "", "api", codes.InvalidArgument},
			{"oversized", strings.Repeat("a", maxTokenLen+1), "api", codes.InvalidArgument},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := raw.ValidateJWTSVID(withHeader(ctx), &workload.ValidateJWTSVIDRequest{Svid: tc.token, Audience: tc.aud})
				if status.Code(err) != tc.code {
					t.Fatalf("err = %v, want %v", err, tc.code)
				}
			})
		}
	})
}

// testcaJWT returns a well-formed JWT-SVID signed by a key not in the bundle.
func testcaJWT(t *testing.T) string {
	other := newFakeServer(t, newClock())
	tok, _, err := other.JWTSVID(context.Background(), webID, []string{"api"})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func rawConn(t testing.TB, h *harness) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func withHeader(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
}

func TestSecurityHeaderRequired(t *testing.T) {
	fs := newFakeServer(t, newClock(), webEntry())
	att := &fakeAttestor{}
	att.set(unix("uid:1000"))
	h := startAgent(t, fs, att)
	raw := workload.NewSpiffeWorkloadAPIClient(rawConn(t, h))
	base := ctxTimeout(t, 10*time.Second)
	for _, tc := range []struct {
		name string
		md   []string
	}{
		{"missing", nil},
		{"false", []string{"workload.spiffe.io", "false"}},
		{"twice", []string{"workload.spiffe.io", "true", "workload.spiffe.io", "true"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := base
			if tc.md != nil {
				ctx = metadata.AppendToOutgoingContext(base, tc.md...)
			}
			calls := map[string]func() error{
				"FetchX509SVID": func() error {
					s, err := raw.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
					if err != nil {
						return err
					}
					_, err = s.Recv()
					return err
				},
				"FetchX509Bundles": func() error {
					s, err := raw.FetchX509Bundles(ctx, &workload.X509BundlesRequest{})
					if err != nil {
						return err
					}
					_, err = s.Recv()
					return err
				},
				"FetchJWTBundles": func() error {
					s, err := raw.FetchJWTBundles(ctx, &workload.JWTBundlesRequest{})
					if err != nil {
						return err
					}
					_, err = s.Recv()
					return err
				},
				"FetchJWTSVID": func() error {
					_, err := raw.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"a"}})
					return err
				},
				"ValidateJWTSVID": func() error {
					_, err := raw.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "a", Svid: "x"})
					return err
				},
			}
			for name, call := range calls {
				err := call()
				if status.Code(err) != codes.InvalidArgument || status.Convert(err).Message() != "security header missing from request" {
					t.Errorf("%s: err = %v, want InvalidArgument security header missing", name, err)
				}
			}
		})
	}
}

func TestCallerRefused(t *testing.T) {
	fs := newFakeServer(t, newClock(), webEntry(), dbEntry(),
		Entry{SPIFFEID: "spiffe://example.org/no-selectors"})
	att := &fakeAttestor{}
	h := startAgent(t, fs, att)
	// Wait until the cache holds the web SVID, so refusals are not races.
	att.set(unix("uid:1000"))
	if _, err := newClient(t, h).FetchX509SVID(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		sel     []Selector
		attErr  error
		code    codes.Code
		message string
	}{
		{"no selectors", nil, nil, codes.PermissionDenied, "no identity issued"},
		{"unmatched uid", []Selector{unix("uid:4242")}, nil, codes.PermissionDenied, "no identity issued"},
		{"partial match", []Selector{unix("uid:2000")}, nil, codes.PermissionDenied, "no identity issued"},
		{"attestation failed", nil, errors.New("attest: process gone"), codes.PermissionDenied, "could not attest caller"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			att.mu.Lock()
			att.sel, att.err = tc.sel, tc.attErr
			att.mu.Unlock()
			c := newClient(t, h)
			ctx := ctxTimeout(t, 10*time.Second)
			check := func(what string, err error) {
				t.Helper()
				if status.Code(err) != tc.code || status.Convert(err).Message() != tc.message {
					t.Errorf("%s: err = %v, want %v %q", what, err, tc.code, tc.message)
				}
			}
			_, err := c.FetchX509SVID(ctx)
			check("FetchX509SVID", err)
			_, err = c.FetchX509Bundles(ctx)
			check("FetchX509Bundles", err)
			_, err = c.FetchJWTBundles(ctx)
			check("FetchJWTBundles", err)
			_, err = c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "api"})
			check("FetchJWTSVID", err)
			_, err = c.ValidateJWTSVID(ctx, "a.b.c", "api")
			check("ValidateJWTSVID", err)
		})
	}

	t.Run("JWT for another identity", func(t *testing.T) {
		att.set(unix("uid:1000"))
		c := newClient(t, h)
		_, err := c.FetchJWTSVID(ctxTimeout(t, 10*time.Second), jwtsvid.Params{Audience: "api", Subject: spiffeid.RequireFromString(dbID)})
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "no identity issued for") {
			t.Fatalf("err = %v", err)
		}
		if fs.jwtCalls.Load() != 0 {
			t.Fatalf("server was asked for a JWT-SVID")
		}
	})
	t.Run("bad JWT request", func(t *testing.T) {
		att.set(unix("uid:1000"))
		raw := workload.NewSpiffeWorkloadAPIClient(rawConn(t, h))
		ctx := withHeader(ctxTimeout(t, 10*time.Second))
		for _, req := range []*workload.JWTSVIDRequest{
			{},
			{Audience: []string{""}},
			{Audience: []string{strings.Repeat("a", maxAudienceLen+1)}},
			{Audience: make([]string, maxAudiences+1)},
			{Audience: []string{"a"}, SpiffeId: "not a spiffe id"},
		} {
			if _, err := raw.FetchJWTSVID(ctx, req); status.Code(err) != codes.InvalidArgument {
				t.Errorf("%v: err = %v, want InvalidArgument", req, err)
			}
		}
	})
}

func TestRotationPushedToWatcher(t *testing.T) {
	fs := newFakeServer(t, newClock(), webEntry())
	att := &fakeAttestor{}
	att.set(unix("uid:1000"))
	h := startAgent(t, fs, att)
	ctx := ctxTimeout(t, 20*time.Second)
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(h.addr)))
	if err != nil {
		t.Fatalf("NewX509Source: %v", err)
	}
	defer src.Close()
	first, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	_, _, renews := fs.stats()

	h.clock.Add(31 * time.Minute) // past half of the hour
	eventually(t, "rotated SVID", func() bool {
		s, err := src.GetX509SVID()
		return err == nil && s.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) != 0
	})
	s, _ := src.GetX509SVID()
	if s.ID.String() != webID || !s.Certificates[0].NotBefore.After(first.Certificates[0].NotBefore) {
		t.Fatalf("rotated SVID = %s from %v", s.ID, s.Certificates[0].NotBefore)
	}
	eventually(t, "agent SVID renewal", func() bool { _, _, r := fs.stats(); return r > renews })
}

func TestServerOutage(t *testing.T) {
	fs := newFakeServer(t, newClock(), webEntry())
	att := &fakeAttestor{}
	att.set(unix("uid:1000"))
	h := startAgent(t, fs, att)
	c := newClient(t, h)
	ctx := ctxTimeout(t, 20*time.Second)
	first, err := c.FetchX509SVID(ctx)
	if err != nil {
		t.Fatal(err)
	}

	fs.setDown(true)
	h.clock.Add(31 * time.Minute)
	// Renewal is retried (several attempts, backed off), while the held
	// SVID keeps being served.
	eventually(t, "retries", func() bool { h.clock.Add(10 * time.Millisecond); _, fails, _ := fs.stats(); return fails >= 3 })
	held, err := c.FetchX509SVID(ctx)
	if err != nil || held.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) != 0 {
		t.Fatalf("during outage: %v", err)
	}
	if _, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "api"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("JWT during outage: %v, want Unavailable", err)
	}

	// Past expiry nothing is served: a new caller waits.
	h.clock.Add(30 * time.Minute)
	eventually(t, "expiry", func() bool {
		short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		_, err := c.FetchX509SVID(short)
		return status.Code(err) == codes.DeadlineExceeded
	})

	fs.setDown(false)
	eventually(t, "recovery", func() bool {
		h.clock.Add(10 * time.Millisecond)
		short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		s, err := c.FetchX509SVID(short)
		return err == nil && s.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) != 0
	})
}

func TestWrongIdentityNeverServed(t *testing.T) {
	fs := newFakeServer(t, newClock(), webEntry())
	fs.wrongID = dbID
	att := &fakeAttestor{}
	att.set(unix("uid:1000"))
	h := startAgent(t, fs, att)
	eventually(t, "issuance attempts", func() bool { h.clock.Add(50 * time.Millisecond); n, _, _ := fs.stats(); return n >= 3 })
	short, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if s, err := newClient(t, h).FetchX509SVID(short); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("got %v, %v; want nothing served", s, err)
	}
}

func TestEntryRemovedEndsStream(t *testing.T) {
	fs := newFakeServer(t, newClock(), webEntry())
	att := &fakeAttestor{}
	att.set(unix("uid:1000"))
	h := startAgent(t, fs, att)
	raw := workload.NewSpiffeWorkloadAPIClient(rawConn(t, h))
	stream, err := raw.FetchX509SVID(withHeader(ctxTimeout(t, 10*time.Second)), &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	fs.setEntries(dbEntry())
	h.clock.Add(31 * time.Second)
	if _, err := stream.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("after removal: %v, want PermissionDenied", err)
	}
}

func TestAttestationRefused(t *testing.T) {
	fs := newFakeServer(t, newClock())
	dir := socketDir(t)
	bundle := filepath.Join(dir, "bundle.pem")
	os.WriteFile(bundle, fs.ca.RootPEM(), 0o600)
	a, err := New(Config{Server: fs, BundleFile: bundle, JoinToken: "replayed", SocketPath: filepath.Join(dir, "s")})
	if err != nil {
		t.Fatal(err)
	}
	err = a.Run(ctxTimeout(t, 10*time.Second))
	if !errors.Is(err, ErrRejected) || err.Error() != "agent: node attestation: agent: rejected by server: attestation_failed" {
		t.Fatalf("Run = %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "s")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket created before attestation")
	}
}

func TestAttestationRetriedWhileUnreachable(t *testing.T) {
	fs := newFakeServer(t, newClock(), webEntry())
	fs.setDown(true)
	go func() { time.Sleep(100 * time.Millisecond); fs.setDown(false) }()
	att := &fakeAttestor{}
	att.set(unix("uid:1000"))
	h := startAgent(t, fs, att)
	if _, err := newClient(t, h).FetchX509SVID(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
}

func TestNewErrors(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "b.pem")
	fs := newFakeServer(t, newClock())
	os.WriteFile(good, fs.ca.RootPEM(), 0o600)
	notCA := filepath.Join(dir, "leaf.pem")
	os.WriteFile(notCA, fs.ca.SVID(t, webID).CertPEM(), 0o600)
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no socket", Config{ServerURL: "https://x", BundleFile: good, JoinToken: "t"}, "agent: socket path is required"},
		{"no token", Config{ServerURL: "https://x", BundleFile: good, SocketPath: "s"}, "agent: exactly one of join token and Kubernetes token file is required"},
		{"two tokens", Config{ServerURL: "https://x", BundleFile: good, SocketPath: "s", JoinToken: "t", K8sTokenFile: "f"}, "agent: exactly one of join token and Kubernetes token file is required"},
		{"no server", Config{BundleFile: good, SocketPath: "s", JoinToken: "t"}, "agent: server URL is required"},
		{"no bundle", Config{ServerURL: "https://x", SocketPath: "s", JoinToken: "t"}, "agent: bundle file is required"},
		{"missing bundle", Config{ServerURL: "https://x", BundleFile: filepath.Join(dir, "nope"), SocketPath: "s", JoinToken: "t"}, "agent: bundle file: open " + filepath.Join(dir, "nope") + ": no such file or directory"},
		{"leaf bundle", Config{ServerURL: "https://x", BundleFile: notCA, SocketPath: "s", JoinToken: "t"}, "agent: bundle file " + notCA + ": certificate 1 is not a CA certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if err == nil || err.Error() != tc.want {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestSocket(t *testing.T) {
	dir := socketDir(t)
	t.Run("stale socket removed", func(t *testing.T) {
		p := filepath.Join(dir, "stale.sock")
		l, err := net.Listen("unix", p)
		if err != nil {
			t.Fatal(err)
		}
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close()
		lis, err := listenSocket(p)
		if err != nil {
			t.Fatalf("listenSocket: %v", err)
		}
		defer lis.Close()
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != 0o777 {
			t.Fatalf("mode = %v, %v", fi.Mode(), err)
		}
		if _, err := listenSocket(p); err == nil || err.Error() != "agent: another process is serving on "+p {
			t.Fatalf("second listener: %v", err)
		}
	})
	t.Run("regular file kept", func(t *testing.T) {
		p := filepath.Join(dir, "file")
		os.WriteFile(p, []byte("x"), 0o600)
		if _, err := listenSocket(p); err == nil || err.Error() != "agent: "+p+" exists and is not a socket" {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestBackoff(t *testing.T) {
	a := &Agent{cfg: Config{RetryInitial: time.Second, RetryMax: time.Minute}}
	for _, tc := range []struct {
		n    int
		base time.Duration
	}{{1, time.Second}, {2, 2 * time.Second}, {3, 4 * time.Second}, {6, 32 * time.Second}, {7, time.Minute}, {50, time.Minute}} {
		for range 20 {
			d := a.backoff(tc.n)
			if d < tc.base || d > tc.base+tc.base/5 {
				t.Fatalf("backoff(%d) = %v, want [%v, %v]", tc.n, d, tc.base, tc.base+tc.base/5)
			}
		}
	}
}

func TestRenewAt(t *testing.T) {
	now := time.Now()
	cert := &x509.Certificate{NotBefore: now, NotAfter: now.Add(time.Hour)}
	for _, tc := range []struct {
		name   string
		jitter time.Duration
		lo, hi time.Duration
	}{
		{"default jitter", 0, 30*time.Minute - 3*time.Minute, 30 * time.Minute},
		{"small jitter", time.Second, 30*time.Minute - time.Second, 30 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := &Agent{cfg: Config{RenewJitter: tc.jitter}}
			for range 50 {
				d := a.renewAt(cert).Sub(now)
				if d < tc.lo || d > tc.hi {
					t.Fatalf("renewAt = +%v, want [%v, %v]", d, tc.lo, tc.hi)
				}
			}
		})
	}
}

// fakeJWTBundle is the JWT bundle the fake server signs JWT-SVIDs with.
func fakeJWTBundle(t *testing.T, fs *fakeServer) *jwtbundle.Bundle {
	t.Helper()
	b := jwtbundle.New(spiffeid.RequireTrustDomainFromString(testTD))
	if err := b.AddJWTAuthority("k1", fs.jwtKey.Public()); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestJWTCacheBounded(t *testing.T) {
	fs := newFakeServer(t, newClock(), webEntry())
	a := &Agent{cfg: Config{Now: fs.clock.Now, RequestTimeout: time.Second, MaxJWTCache: 3}, server: fs, jwts: map[string]*jwtEntry{}}
	a.bundle.jwt = fakeJWTBundle(t, fs)
	for i := range 10 {
		if _, err := a.jwtSVID(context.Background(), webID, []string{string(rune('a' + i))}); err != nil {
			t.Fatal(err)
		}
	}
	if len(a.jwts) > 3 {
		t.Fatalf("cache holds %d", len(a.jwts))
	}
}

func FuzzParseBundlePEM(f *testing.F) {
	fs := newFakeServer(f, newClock())
	f.Add(fs.ca.RootPEM())
	f.Add(append(fs.ca.RootPEM(), fs.ca.RootPEM()...))
	f.Add(fs.ca.SVID(f, webID).CertPEM())
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		certs, err := parseBundlePEM(b)
		if err == nil {
			if len(certs) == 0 {
				t.Fatal("no error and no certificates")
			}
			for _, c := range certs {
				if !c.IsCA {
					t.Fatal("non-CA accepted")
				}
			}
		}
	})
}

func TestKubernetesTokenAttestation(t *testing.T) {
	fs := newFakeServer(t, newClock(), webEntry())
	tokFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokFile, []byte("psat-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	att := &fakeAttestor{}
	att.set(unix("uid:1000"))
	h := startAgent(t, fs, att, func(c *Config) { c.JoinToken, c.K8sTokenFile = "", tokFile })
	if got := h.agent.SPIFFEID().String(); got != testAgentID {
		t.Fatalf("agent ID = %q", got)
	}
	if _, err := newClient(t, h).FetchX509SVID(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
}

// TestNoSVIDForUnmatchableEntries checks that the agent holds no key or SVID
// for a Workload without selectors: no local process could ever match it.
func TestNoSVIDForUnmatchableEntries(t *testing.T) {
	bare := Entry{SPIFFEID: "spiffe://example.org/ns/x/sa/bare"}
	// A server that listed its own identity as a workload is not followed:
	// a local process must never hold /postern/server.
	reserved := webEntry()
	reserved.SPIFFEID = "spiffe://example.org/postern/server"
	fs := newFakeServer(t, newClock(), webEntry(), bare, reserved)
	att := &fakeAttestor{}
	att.set(unix("uid:1000"), unix("gid:1000"))
	h := startAgent(t, fs, att)
	c := newClient(t, h)
	if _, err := c.FetchX509SVID(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	if n, _, _ := fs.stats(); n != 1 {
		t.Fatalf("%d X.509-SVIDs requested, want 1 (none for the entry without selectors or the reserved one)", n)
	}
}

// The agent checks the server's JWT-SVID as any relying party would before
// caching or serving it: the identity and audiences asked for, a signature
// of the trust domain, and its own exp.
func TestJWTSVIDFromTheServerIsChecked(t *testing.T) {
	fs := newFakeServer(t, newClock(), webEntry())
	a := &Agent{cfg: Config{Now: fs.clock.Now, RequestTimeout: time.Second, MaxJWTCache: 8}, server: fs, jwts: map[string]*jwtEntry{}}
	if _, err := a.jwtSVID(context.Background(), webID, []string{"api"}); err == nil || !strings.Contains(err.Error(), "no JWT bundle yet") {
		t.Errorf("without a JWT bundle: %v", err)
	}
	a.bundle.jwt = fakeJWTBundle(t, fs)
	if _, err := a.jwtSVID(context.Background(), webID, []string{"api"}); err != nil {
		t.Fatalf("a good token: %v", err)
	}
	other := newFakeServer(t, newClock(), webEntry()) // signs with another key
	a.server = other
	a.jwts = map[string]*jwtEntry{}
	if _, err := a.jwtSVID(context.Background(), webID, []string{"api"}); err == nil || !strings.Contains(err.Error(), "does not validate") {
		t.Errorf("a token signed by a key not in the bundle: %v", err)
	}
	if !sameSet([]string{"a", "b"}, []string{"b", "a"}) || sameSet([]string{"a"}, []string{"a", "b"}) || sameSet([]string{"a", "a"}, []string{"a", "b"}) {
		t.Error("sameSet")
	}
}

// A bundle update without the authority of the agent's own SVID is refused
// (the agent would lock itself out); the last bundle stays.
func TestBundleMustHoldTheAgentsAuthority(t *testing.T) {
	own := newFakeServer(t, newClock())
	other := newFakeServer(t, newClock()) // another CA
	cert := own.ca.SVID(t, "spiffe://example.org/postern/agent/node-1").TLSCertificate()
	a := &Agent{cfg: Config{Now: own.clock.Now, RequestTimeout: time.Second, BundleInterval: time.Minute,
		Logger: slog.New(slog.DiscardHandler)}, server: other, td: spiffeid.RequireTrustDomainFromString(testTD)}
	a.agentCert.Store(&cert)
	if err := a.refreshBundle(context.Background()); err == nil || !strings.Contains(err.Error(), "keeping the last one") {
		t.Errorf("a bundle without the agent's root: %v", err)
	}
	a.server = own
	if err := a.refreshBundle(context.Background()); err != nil {
		t.Errorf("its own bundle: %v", err)
	}
}
