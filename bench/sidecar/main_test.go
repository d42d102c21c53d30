//go:build linux

package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"postern.dev/postern/bench/internal/loadgen"
)

func TestParseFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string // the exact error; empty: no error
	}{
		{"defaults", nil, ""},
		{"short run without nginx", []string{"-d", "5s", "-c", "4", "-nginx", "off", "-rate", "500"}, ""},
		{"duration too short", []string{"-d", "500ms"}, "-d 500ms: must be between 1s and 2m"},
		{"duration too long", []string{"-d", "3m"}, "-d 3m0s: must be between 1s and 2m"},
		{"rate too low", []string{"-rate", "10"}, "-rate 10: must be between 100 and 20000"},
		{"no workers", []string{"-c", "0"}, "-c 0: must be between 1 and 512"},
		{"bad audit", []string{"-audit", "stdout"}, `-audit "stdout": must be file or discard`},
		{"empty nginx", []string{"-nginx", ""}, "-nginx: must name an executable or be off"},
		{"too many nginx workers", []string{"-nginx-workers", "65"}, "-nginx-workers 65: must be between 0 and 64"},
		{"negative sidecar procs", []string{"-sidecar-procs", "-1"}, "-sidecar-procs -1: must be between 0 and 1024"},
		{"too few requests", []string{"-max-requests", "10"}, "-max-requests 10: must be between 1000 and 20000000"},
		{"arguments", []string{"extra"}, `unexpected arguments ["extra"]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := parseFlags(tc.args, io.Discard)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("err = %v", err)
				}
				if !filepath.IsAbs(o.quickstart) {
					t.Errorf("quickstart %q is not absolute", o.quickstart)
				}
				return
			}
			if err == nil || err.Error() != tc.want {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestWritePairCerts(t *testing.T) {
	c, err := writePairCerts(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	read := func(path string) *x509.Certificate {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(b)
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}
	pool := x509.NewCertPool()
	pool.AddCert(read(c.CA))
	for _, tc := range []struct {
		name, cert, key, dns string
		usage                x509.ExtKeyUsage
	}{
		{"client (nginx A)", c.ClientCert, c.ClientKey, "nginx-a.bench.local", x509.ExtKeyUsageClientAuth},
		{"server (nginx B)", c.ServerCert, c.ServerKey, nginxServerName, x509.ExtKeyUsageServerAuth},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leaf := read(tc.cert)
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: tc.dns, KeyUsages: []x509.ExtKeyUsage{tc.usage}}); err != nil {
				t.Errorf("verify: %v", err)
			}
			pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
			if !ok || pub.Curve != elliptic.P256() {
				t.Errorf("key is %T, want ECDSA P-256", leaf.PublicKey)
			}
			b, _ := os.ReadFile(tc.key)
			blk, _ := pem.Decode(b)
			if _, err := x509.ParsePKCS8PrivateKey(blk.Bytes); err != nil {
				t.Errorf("key: %v", err)
			}
		})
	}
}

func TestRenderNginxConf(t *testing.T) {
	certs := pairCerts{CA: "/c/ca.pem", ClientCert: "/c/a.pem", ClientKey: "/c/a.key", ServerCert: "/c/b.pem", ServerKey: "/c/b.key"}
	for _, tc := range []struct {
		role       string
		want, deny []string
	}{
		{"A", []string{"listen 127.0.0.1:7001;", "server 127.0.0.1:7002;", "proxy_pass https://next;", "proxy_ssl_certificate /c/a.pem;",
			"proxy_ssl_verify on;", "proxy_ssl_trusted_certificate /c/ca.pem;", "proxy_ssl_name " + nginxServerName + ";", "proxy_ssl_session_reuse on;", "keepalive 64;"},
			[]string{"ssl_verify_client", "listen 127.0.0.1:7001 ssl"}},
		{"B", []string{"listen 127.0.0.1:7001 ssl;", "ssl_verify_client on;", "ssl_client_certificate /c/ca.pem;", "ssl_certificate /c/b.pem;",
			"ssl_session_cache shared:bench:1m;", "proxy_pass http://next;"},
			[]string{"proxy_ssl_certificate"}},
	} {
		t.Run(tc.role, func(t *testing.T) {
			dir := t.TempDir()
			conf, err := renderNginxConf(nginxParams{Role: tc.role, Workers: "2", Dir: dir, Listen: "127.0.0.1:7001", Upstream: "127.0.0.1:7002", ServerName: nginxServerName, Certs: certs})
			if err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(conf)
			s := string(b)
			for _, w := range append(tc.want, "pid "+dir+"/nginx.pid;", "error_log "+dir+"/error.log warn;", "worker_processes 2;") {
				if !strings.Contains(s, w) {
					t.Errorf("lacks %q:\n%s", w, s)
				}
			}
			for _, d := range tc.deny {
				if strings.Contains(s, d) {
					t.Errorf("has %q", d)
				}
			}
			if _, err := os.Stat(filepath.Join(dir, "proxy")); err != nil {
				t.Errorf("temp dir: %v", err)
			}
		})
	}
}

// TestNginxPair starts the real pair in front of a loopback app when nginx
// is installed, sends one request through it, and checks that stop leaves
// no process behind.
func TestNginxPair(t *testing.T) {
	bin, err := findNginx("nginx")
	if errors.Is(err, errNoNginx) {
		t.Skip(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, appBody)
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = app.Serve(ln) }()
	defer app.Close()
	a, b, err := startNginxPair(context.Background(), bin, t.TempDir(), "1", 1, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	pids := append(a.pids(), b.pids()...)
	if len(pids) != 4 {
		t.Errorf("pids %v, want two masters and two workers", pids)
	}
	resp, err := http.Get("http://" + a.listen + requestPath)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != appBody {
		t.Errorf("through the pair: %d %q", resp.StatusCode, body)
	}
	// nginx B refuses a client without a certificate.
	c, err := net.Dial("tcp", b.listen)
	if err == nil {
		_, _ = io.WriteString(c, "GET / HTTP/1.0\r\n\r\n")
		reply, _ := io.ReadAll(c)
		c.Close()
		if strings.Contains(string(reply), appBody) {
			t.Error("nginx B served plaintext")
		}
	}
	a.stop()
	b.stop()
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); err == nil {
			if f, err := loadgen.StatFields(pid); err == nil && f[0] != "Z" {
				t.Errorf("process %d still runs after stop", pid)
			}
		}
	}
}

func TestScrapeExchangeStats(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `# HELP postern_exchange_requests_total x
postern_exchange_requests_total{result="issued"} 3
postern_exchange_requests_total{result="refused"} 1
postern_exchange_cache_hits_total 1.2029e+04
postern_exchange_cache_misses_total 18
`)
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	got, err := scrapeExchangeStats(context.Background(), ln.Addr().String())
	if want := (exchangeStats{Issued: 3, Hits: 12029, Misses: 18}); err != nil || got != want {
		t.Errorf("scrape = %+v, %v; want %+v", got, err, want)
	}
}

func TestVerdicts(t *testing.T) {
	open := func(path string, p50, p99, coresA, coresB float64) *phaseResult {
		return &phaseResult{Path: path, Kind: "open",
			Phase: loadgen.Phase{ElapsedSec: 10, OK: 10000, Rate: 1000, Latency: loadgen.Percentiles{P50: p50, P99: p99}},
			CPU:   []cpuShare{{groupSidecarA, coresA * 10}, {groupSidecarB, coresB * 10}}}
	}
	peak := func(path string, rate float64) *phaseResult {
		return &phaseResult{Path: path, Kind: "peak", Phase: loadgen.Phase{ElapsedSec: 10, OK: int64(rate * 10), Rate: rate}}
	}
	r := &report{
		Phases: []*phaseResult{open(pathDirect, 0.5, 1, 0, 0), open(pathPostern, 0.6, 1.6, 0.05, 0.2),
			peak(pathDirect, 20000), peak(pathNginx, 5000), peak(pathPostern, 6000)},
		MemoryAtRest: map[string]loadgen.Memory{groupSidecarA: {RSS: 20 << 20}, groupSidecarB: {RSS: 40 << 20}},
	}
	r.finish()
	want := []bool{true, false, true, false, true, true, false}
	if len(r.Verdicts) != len(want) {
		t.Fatalf("%d verdicts", len(r.Verdicts))
	}
	for i, v := range r.Verdicts {
		if v.Met != want[i] {
			t.Errorf("%s = %.3f: met %v, want %v", v.Name, v.Value, v.Met, want[i])
		}
	}
	r.Phases[1].Errors = 1 // an error voids the latency and CPU verdicts
	r.Verdicts = nil
	r.finish()
	if r.Verdicts[0].Met || r.Verdicts[2].Met {
		t.Error("a phase with errors met a target")
	}
}
