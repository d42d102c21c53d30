//go:build linux

package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"

	"postern.dev/postern/bench/internal/loadgen"
)

// nginxServerName is the name nginx B's certificate carries and nginx A
// verifies.
const nginxServerName = "nginx-b.bench.local"

// pairCerts are the PEM files of the throwaway CA and of the two nginx
// proxies' certificates, all ECDSA P-256.
type pairCerts struct {
	CA                    string // the CA certificate
	ClientCert, ClientKey string // nginx A, client authentication
	ServerCert, ServerKey string // nginx B, server authentication
}

// writePairCerts creates a throwaway P-256 CA valid for a day and issues
// nginx A's client certificate and nginx B's server certificate, written
// as PEM files in dir.
func writePairCerts(dir string) (pairCerts, error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return pairCerts{}, fmt.Errorf("nginx CA: %w", err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "postern bench throwaway CA"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return pairCerts{}, fmt.Errorf("nginx CA: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return pairCerts{}, fmt.Errorf("nginx CA: %w", err)
	}
	c := pairCerts{
		CA:         filepath.Join(dir, "ca.pem"),
		ClientCert: filepath.Join(dir, "a-cert.pem"), ClientKey: filepath.Join(dir, "a-key.pem"),
		ServerCert: filepath.Join(dir, "b-cert.pem"), ServerKey: filepath.Join(dir, "b-key.pem"),
	}
	if err := writePEM(c.CA, "CERTIFICATE", caDER); err != nil {
		return pairCerts{}, err
	}
	leaves := []struct {
		serial    int64
		cn        string
		usage     x509.ExtKeyUsage
		cert, key string
	}{
		{2, "nginx-a.bench.local", x509.ExtKeyUsageClientAuth, c.ClientCert, c.ClientKey},
		{3, nginxServerName, x509.ExtKeyUsageServerAuth, c.ServerCert, c.ServerKey},
	}
	for _, l := range leaves {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return pairCerts{}, fmt.Errorf("nginx certificate: %w", err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(l.serial),
			Subject:      pkix.Name{CommonName: l.cn},
			DNSNames:     []string{l.cn},
			IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
			NotBefore:    now.Add(-time.Minute),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{l.usage},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
		if err != nil {
			return pairCerts{}, fmt.Errorf("nginx certificate: %w", err)
		}
		kder, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return pairCerts{}, fmt.Errorf("nginx certificate: %w", err)
		}
		if err := writePEM(l.cert, "CERTIFICATE", der); err != nil {
			return pairCerts{}, err
		}
		if err := writePEM(l.key, "PRIVATE KEY", kder); err != nil {
			return pairCerts{}, err
		}
	}
	return c, nil
}

func writePEM(path, typ string, der []byte) error {
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("nginx certificates: %w", err)
	}
	return nil
}

// nginxConf is one nginx instance's configuration: A (client side, plain
// HTTP in, mutual TLS out with a client certificate) or B (server side,
// mutual TLS in with client certificates required, plain HTTP to the
// application). Both keep connections alive without a request limit, as
// the Go sidecars do, and TLS sessions are resumed.
var nginxConf = template.Must(template.New("nginx").Parse(`# postern bench/sidecar: nginx {{.Role}}, generated for one run
worker_processes {{.Workers}};
error_log {{.Dir}}/error.log warn;
pid {{.Dir}}/nginx.pid;
events {
    worker_connections 4096;
}
http {
    access_log off;
    client_body_temp_path {{.Dir}}/body;
    proxy_temp_path {{.Dir}}/proxy;
    fastcgi_temp_path {{.Dir}}/fastcgi;
    uwsgi_temp_path {{.Dir}}/uwsgi;
    scgi_temp_path {{.Dir}}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    upstream next {
        server {{.Upstream}};
        keepalive 64;
        keepalive_requests 100000000;
        keepalive_timeout 120s;
    }
    server {
{{- if eq .Role "A"}}
        listen {{.Listen}};
        location / {
            proxy_pass https://next;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_certificate {{.Certs.ClientCert}};
            proxy_ssl_certificate_key {{.Certs.ClientKey}};
            proxy_ssl_trusted_certificate {{.Certs.CA}};
            proxy_ssl_verify on;
            proxy_ssl_name {{.ServerName}};
            proxy_ssl_protocols TLSv1.3;
            proxy_ssl_session_reuse on;
        }
{{- else}}
        listen {{.Listen}} ssl;
        ssl_certificate {{.Certs.ServerCert}};
        ssl_certificate_key {{.Certs.ServerKey}};
        ssl_client_certificate {{.Certs.CA}};
        ssl_verify_client on;
        ssl_protocols TLSv1.3;
        ssl_session_cache shared:bench:1m;
        ssl_session_tickets on;
        location / {
            proxy_pass http://next;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
{{- end}}
    }
}
`))

// nginxParams fill nginxConf.
type nginxParams struct {
	Role       string // A or B
	Workers    string // a number or auto
	Dir        string // the instance's prefix and temp directory
	Listen     string // 127.0.0.1:port
	Upstream   string // where it proxies to: nginx B (A) or the app (B)
	ServerName string
	Certs      pairCerts
}

// renderNginxConf writes the configuration of p into p.Dir/nginx.conf and
// creates the temp directories it names.
func renderNginxConf(p nginxParams) (string, error) {
	for _, d := range []string{"body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		if err := os.MkdirAll(filepath.Join(p.Dir, d), 0o700); err != nil {
			return "", fmt.Errorf("nginx %s: %w", p.Role, err)
		}
	}
	var b strings.Builder
	if err := nginxConf.Execute(&b, p); err != nil {
		return "", fmt.Errorf("nginx %s: %w", p.Role, err)
	}
	conf := filepath.Join(p.Dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(b.String()), 0o600); err != nil {
		return "", fmt.Errorf("nginx %s: %w", p.Role, err)
	}
	return conf, nil
}

// nginxProc is a running nginx instance: the master and its workers.
type nginxProc struct {
	name    string
	listen  string
	cmd     *exec.Cmd
	workers []int
	done    chan struct{}
}

// startNginx runs bin in the foreground with p's configuration, in its own
// process group, and waits (at most 15s) until its workers are up and it
// accepts connections on p.Listen. If the benchmark dies, the kernel sends
// the master SIGTERM (Pdeathsig), on which nginx stops its workers.
func startNginx(ctx context.Context, bin string, p nginxParams, workers int) (*nginxProc, error) {
	name := "nginx " + p.Role
	conf, err := renderNginxConf(p)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-e", filepath.Join(p.Dir, "error.log"), "-p", p.Dir, "-c", conf, "-g", "daemon off;")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	n := &nginxProc{name: name, listen: p.Listen, cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(n.done)
	}()
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-n.done:
			log, _ := os.ReadFile(filepath.Join(p.Dir, "error.log"))
			n.stop() // its workers, if any
			return nil, fmt.Errorf("start %s: it exited: %s", name, strings.TrimSpace(string(log)))
		case <-ctx.Done():
			n.stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		n.workers = loadgen.ChildPIDs(cmd.Process.Pid)
		if len(n.workers) >= workers {
			if c, err := net.DialTimeout("tcp", p.Listen, time.Second); err == nil {
				_ = c.Close()
				return n, nil
			}
		}
		if time.Now().After(deadline) {
			n.stop()
			return nil, fmt.Errorf("start %s: not serving %d workers on %s within 15s", name, workers, p.Listen)
		}
	}
}

// pids returns the master's and the workers' process ids.
func (n *nginxProc) pids() []int {
	return append([]int{n.cmd.Process.Pid}, n.workers...)
}

// stop asks the master for a fast shutdown (SIGTERM), waits at most 5s,
// then kills the whole process group. It is safe to call more than once.
func (n *nginxProc) stop() {
	pgid := n.cmd.Process.Pid
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
	case <-time.After(5 * time.Second):
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	<-n.done
}

// freePort returns a loopback address with a port nobody listened on a
// moment ago.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		return "", err
	}
	return addr, nil
}

// nginxWorkers resolves the -nginx-workers flag: 0 means one per CPU, as
// nginx's "auto" and Go's GOMAXPROCS default do.
func nginxWorkers(n, cpus int) (string, int) {
	if n == 0 {
		return "auto", cpus
	}
	return strconv.Itoa(n), n
}

// errNoNginx is returned by findNginx when there is no nginx to start.
var errNoNginx = errors.New("nginx is not on PATH")

// findNginx resolves the -nginx flag to an executable.
func findNginx(flag string) (string, error) {
	if flag == "off" {
		return "", errNoNginx
	}
	p, err := exec.LookPath(flag)
	if err != nil {
		return "", fmt.Errorf("%w (%v)", errNoNginx, err)
	}
	return p, nil
}
