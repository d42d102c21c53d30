package proxy

import (
	"bufio"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"postern.dev/postern/internal/testca"
	"postern.dev/postern/internal/token"
)

// TestSidecarWebSocket upgrades a connection through the inbound side and
// echoes over it.
func TestSidecarWebSocket(t *testing.T) {
	srv := startServer(t)
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" || r.Header.Get(HeaderPeer) != gatewayID {
			http.Error(w, "want an upgrade from the gateway", 400)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		_ = brw.Flush()
		line, _ := brw.ReadString('\n')
		_, _ = brw.WriteString("echo:" + line)
		_ = brw.Flush()
	})
	orders := startSidecar(t, srv, "order-processing", serveApp(t, app), nil)
	gw := issue(t, srv, gatewayID)
	tok := stsExchange(t, srv, gw, userToken(t, "alice", "orders:read"), jwtType, ordersID)

	c := mtlsClient(srv, gw, orders.ID(), false)
	c.Timeout = 0 // a client timeout hides the upgraded body's Write
	req, _ := http.NewRequest(http.MethodGet, "https://"+orders.InboundAddr().String()+"/orders/live", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	rw, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		t.Fatal("upgraded body is not writable")
	}
	if _, err := io.WriteString(rw, "hello\n"); err != nil {
		t.Fatal(err)
	}
	got, err := bufio.NewReader(rw).ReadString('\n')
	if err != nil || got != "echo:hello\n" {
		t.Fatalf("echo = %q, %v", got, err)
	}
}

// TestSidecarDrain cancels the sidecar while a request is in flight: the
// request completes, /readyz turns 503 during the drain, and new
// connections are refused afterwards.
func TestSidecarDrain(t *testing.T) {
	srv := startServer(t)
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
		_, _ = io.WriteString(w, "done")
	})
	cfg, err := LoadConfig(filepath.Join(examples, "sidecars", "order-processing.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	writeSVID(t, srv, issue(t, srv, ordersID), dir)
	cfg.SPIFFE.Files = &FilesSource{Cert: filepath.Join(dir, "svid.pem"), Key: filepath.Join(dir, "svid.key"), Bundle: filepath.Join(dir, "bundle.pem")}
	cfg.STS.Issuer, cfg.STS.TokenEndpoint = srv.Issuer(), ""
	cfg.Inbound.Listen, cfg.Admin.Listen, cfg.Outbound.Listen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Inbound.App = serveApp(t, app)
	sc, err := NewSidecar(context.Background(), cfg, SidecarOptions{Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sc.Run(ctx) }()
	waitFor(t, "ready", sc.Ready)

	gw := issue(t, srv, gatewayID)
	tok := stsExchange(t, srv, gw, userToken(t, "alice", "orders:read"), jwtType, ordersID)
	c := mtlsClient(srv, gw, sc.ID(), true)
	result := make(chan string, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, "https://"+sc.InboundAddr().String()+"/orders/slow", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := c.Do(req)
		if err != nil {
			result <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		result <- fmt.Sprintf("%d %s", resp.StatusCode, b)
	}()
	<-entered
	cancel()
	waitFor(t, "draining", func() bool { return !sc.Ready() })
	close(release)
	if got := <-result; got != "200 done" {
		t.Errorf("in-flight request: %s", got)
	}
	if err := <-done; err != nil {
		t.Errorf("run: %v", err)
	}
	if conn, err := net.DialTimeout("tcp", sc.InboundAddr().String(), time.Second); err == nil {
		conn.Close()
		t.Error("the inbound listener still accepts after the drain")
	}
}

// TestSidecarNotReadyWithoutKeys: with the STS unreachable the sidecar is
// not ready and answers token-bearing requests 503, never forwarding them.
func TestSidecarNotReadyWithoutKeys(t *testing.T) {
	ca := testca.New(t, "quickstart.local")
	dir := t.TempDir()
	self := ca.SVID(t, ordersID)
	writeFiles(t, dir, self, ca.RootPEM())
	cfg, err := LoadConfig(filepath.Join(examples, "sidecars", "order-processing.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.SPIFFE.Files = &FilesSource{Cert: filepath.Join(dir, "svid.pem"), Key: filepath.Join(dir, "svid.key"), Bundle: filepath.Join(dir, "bundle.pem")}
	cfg.STS.Issuer, cfg.STS.TokenEndpoint = "https://127.0.0.1:1", ""
	cfg.Inbound.Listen, cfg.Admin.Listen, cfg.Outbound.Listen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	app := &recorder{}
	cfg.Inbound.App = serveApp(t, app)
	sc, err := NewSidecar(context.Background(), cfg, SidecarOptions{Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sc.Run(ctx) }()
	defer func() { cancel(); <-done }()

	status, _, _ := get(t, http.DefaultClient, "http://"+sc.AdminAddr().String()+"/readyz", nil)
	if status != http.StatusServiceUnavailable {
		t.Errorf("/readyz = %d without keys", status)
	}
	gw := ca.SVID(t, gatewayID)
	svid := &x509svid.SVID{ID: gw.ID, Certificates: []*x509.Certificate{gw.Cert}, PrivateKey: gw.Key}
	tlsCfg := tlsconfig.MTLSClientConfig(svid, x509bundle.FromX509Authorities(ca.TrustDomain, []*x509.Certificate{ca.Cert}), tlsconfig.AuthorizeID(spiffeid.RequireFromString(ordersID)))
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	sg, err := token.NewSigner("k1", jose.ES256, testca.NewKey(t), token.TypeAccessToken)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := sg.Sign(&token.Claims{Issuer: cfg.STS.Issuer, Subject: "alice", Audience: []string{ordersID}, Expiry: time.Now().Add(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	status, body, _ := get(t, c, "https://"+sc.InboundAddr().String()+"/orders/1", map[string]string{"Authorization": "Bearer " + tok})
	if status != http.StatusServiceUnavailable || !strings.Contains(string(body), "temporarily_unavailable") || app.count() != 0 {
		t.Errorf("request without keys: %d %s (app reached %d times)", status, body, app.count())
	}
}
