package agent

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"postern.dev/postern/internal/attest"
	"postern.dev/postern/internal/server"
	"postern.dev/postern/internal/testserver"
)

const integrationWorkloads = `apiVersion: postern.dev/v1
kind: Workload
metadata: {name: web}
spec:
  spiffeID: spiffe://it.local/ns/shop/sa/web
  selectors: [{type: unix, value: "uid:1000"}]
---
apiVersion: postern.dev/v1
kind: Workload
metadata: {name: db}
spec:
  spiffeID: spiffe://it.local/ns/shop/sa/db
  selectors: [{type: unix, value: "uid:2000"}, {type: unix, value: "gid:2000"}]
  agents: ["spiffe://it.local/postern/agent/*"]
`

// TestIntegrationRealServer runs the real control plane on 127.0.0.1:0, a
// real agent joined with a join token, and go-spiffe clients on both ends
// of an spiffetls mTLS connection built from the SVIDs the agent fetched.
func TestIntegrationRealServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the control plane")
	}
	dir := t.TempDir()
	res := filepath.Join(dir, "resources")
	os.MkdirAll(res, 0o755)
	if err := os.WriteFile(filepath.Join(res, "workloads.yaml"), []byte(integrationWorkloads), 0o644); err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(dir, "server.yaml")
	os.WriteFile(cfgFile, []byte("trustDomain: it.local\nlisten: 127.0.0.1:0\ndataDir: data\nresources: resources\n"), 0o644)
	cfg, err := server.LoadConfig(cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	logger := slog.New(slog.DiscardHandler)
	if testing.Verbose() {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	srv := testserver.Start(t, cfg, logger)

	agentID := spiffeid.RequireFromString("spiffe://it.local/postern/agent/node1")
	tok, err := attest.CreateJoinToken(ctx, srv.Store(), agentID, 10*time.Minute, time.Time{})
	if err != nil {
		t.Fatal(err)
	}

	sockDir := socketDir(t)
	att := &fakeAttestor{queue: [][]Selector{
		{unix("uid:1000"), unix("gid:1000")},
		{unix("uid:2000"), unix("gid:2000")},
	}}
	a, err := New(Config{
		ServerURL:    "https://" + srv.Addr().String(),
		BundleFile:   srv.BundlePath(),
		JoinToken:    tok,
		SocketPath:   filepath.Join(sockDir, "agent.sock"),
		PeerAttestor: att,
		Logger:       logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	agentCtx, stopAgent := context.WithCancel(ctx)
	agentDone := make(chan error, 1)
	go func() { agentDone <- a.Run(agentCtx) }()
	t.Cleanup(func() {
		stopAgent()
		if err := <-agentDone; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	select {
	case <-a.Ready():
	case err := <-agentDone:
		t.Fatalf("agent: %v", err)
	}
	if a.SPIFFEID() != agentID {
		t.Fatalf("agent ID = %v", a.SPIFFEID())
	}
	addr := workloadapi.WithClientOptions(workloadapi.WithAddr("unix://" + filepath.Join(sockDir, "agent.sock")))

	// The first connection is attested as web, the second as db.
	webSrc, err := workloadapi.NewX509Source(ctx, addr)
	if err != nil {
		t.Fatalf("web source: %v", err)
	}
	defer webSrc.Close()
	dbSrc, err := workloadapi.NewX509Source(ctx, addr)
	if err != nil {
		t.Fatalf("db source: %v", err)
	}
	defer dbSrc.Close()
	webSVID, _ := webSrc.GetX509SVID()
	dbSVID, _ := dbSrc.GetX509SVID()
	webID := spiffeid.RequireFromString("spiffe://it.local/ns/shop/sa/web")
	dbID := spiffeid.RequireFromString("spiffe://it.local/ns/shop/sa/db")
	if webSVID.ID != webID || dbSVID.ID != dbID {
		t.Fatalf("SVIDs = %v, %v", webSVID.ID, dbSVID.ID)
	}

	// mTLS: db serves and accepts only web; web dials and accepts only db.
	lis, err := spiffetls.ListenWithMode(ctx, "tcp", "127.0.0.1:0",
		spiffetls.MTLSServerWithSource(tlsconfig.AuthorizeID(webID), dbSrc))
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	served := make(chan error, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		peer, err := spiffetls.PeerIDFromConn(c)
		if err == nil && peer != webID {
			err = io.ErrUnexpectedEOF
		}
		if err == nil {
			_, err = c.Write([]byte("hello web"))
		}
		served <- err
	}()
	conn, err := spiffetls.DialWithMode(ctx, "tcp", lis.Addr().String(),
		spiffetls.MTLSClientWithSource(tlsconfig.AuthorizeID(dbID), webSrc))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	buf := make([]byte, 9)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "hello web" {
		t.Fatalf("read %q: %v", buf, err)
	}
	if err := <-served; err != nil {
		t.Fatalf("server side: %v", err)
	}
	if _, ok := conn.(*net.TCPConn); ok {
		t.Fatal("not TLS")
	}

	// JWT-SVID: web asks for one addressed to db; db validates it.
	att.set(unix("uid:1000"))
	webClient := newClient(t, &harness{addr: "unix://" + filepath.Join(sockDir, "agent.sock")})
	jsv, err := webClient.FetchJWTSVID(ctx, jwtsvid.Params{Audience: dbID.String()})
	if err != nil {
		t.Fatalf("FetchJWTSVID: %v", err)
	}
	if jsv.ID != webID {
		t.Fatalf("JWT-SVID subject %v", jsv.ID)
	}
	att.set(unix("uid:2000"), unix("gid:2000"))
	dbClient := newClient(t, &harness{addr: "unix://" + filepath.Join(sockDir, "agent.sock")})
	v, err := dbClient.ValidateJWTSVID(ctx, jsv.Marshal(), dbID.String())
	if err != nil || v.ID != webID {
		t.Fatalf("ValidateJWTSVID: %v", err)
	}
}
