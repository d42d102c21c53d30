package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"postern.dev/postern/internal/gateway"
	"postern.dev/postern/internal/policy"
	"postern.dev/postern/internal/proxy"
)

// gatewayEdge is postern gateway with one route, /orders → order-processing,
// serving its own SVID (which carries the DNS name localhost) to users who
// trust the trust domain's bundle.
type gatewayEdge struct {
	*gateway.Gateway
	client *http.Client
}

var _ edge = (*gatewayEdge)(nil)

// gatewayConfig is the gateway's configuration for an example without a
// gateway.yaml, as a gateway.yaml would say it (JSON is YAML): its SVID files, the server as STS, the server's
// resources directory for its TrustedIssuers, loopback listeners on free
// ports, and the route to order-processing's sidecar.
func (d *Demo) gatewayConfig() ([]byte, error) {
	w := d.ids[Gateway]
	return json.MarshalIndent(map[string]any{
		"trustDomain": d.td.Name(),
		"spiffeID":    w.id.String(),
		"spiffe":      map[string]any{"files": map[string]string{"cert": w.certFile(), "key": w.keyFile(), "bundle": w.bundleFile()}},
		"sts":         map[string]string{"issuer": d.srv.Issuer()},
		"listen":      "127.0.0.1:0",
		"tls":         map[string]bool{"fromSVID": true},
		"issuers":     filepath.Join(d.dir, "resources"),
		"routes": []any{map[string]any{
			"name":       "orders",
			"pathPrefix": "/orders",
			"upstream": map[string]any{
				"name":      OrderProcessing,
				"addresses": []string{d.sidecars[OrderProcessing].InboundAddr().String()},
				"spiffeID":  d.spiffeID(OrderProcessing),
			},
			"requiredScopes": []string{"orders:read"},
		}},
		"admin":        map[string]string{"listen": "127.0.0.1:0"},
		"drainTimeout": "2s",
	}, "", "  ")
}

// loadGatewayConfig reads the quickstart's gateway.yaml, pointed at the
// demo's files, server and sidecars, or, for an example without one, the
// equivalent of gatewayConfig.
func (d *Demo) loadGatewayConfig() (*gateway.Config, error) {
	path := filepath.Join(d.examples, "gateway.yaml")
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		b, err := d.gatewayConfig()
		if err != nil {
			return nil, fmt.Errorf("demo: gateway config: %w", err)
		}
		cfg, err := gateway.ParseConfig(b)
		if err != nil {
			return nil, fmt.Errorf("demo: %w", err)
		}
		return cfg, nil
	}
	cfg, err := gateway.LoadConfig(path)
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	w := d.ids[Gateway]
	cfg.SPIFFE = proxy.IdentitySource{Files: &proxy.FilesSource{Cert: w.certFile(), Key: w.keyFile(), Bundle: w.bundleFile()}}
	cfg.STS = proxy.STSConfig{Issuer: d.srv.Issuer()}
	cfg.Listen = "127.0.0.1:0"
	cfg.Admin.Listen = "127.0.0.1:0"
	cfg.Issuers = filepath.Join(d.dir, "resources")
	cfg.DrainTimeout = policy.Duration(2 * time.Second)
	orders := d.sidecars[OrderProcessing].InboundAddr().String()
	for i := range cfg.Routes {
		if cfg.Routes[i].Upstream.Name != OrderProcessing {
			return nil, fmt.Errorf("demo: %s: route %q goes to %q; the demo runs only order-processing behind the gateway", path, cfg.Routes[i].Name, cfg.Routes[i].Upstream.Name)
		}
		cfg.Routes[i].Upstream.Addresses = []string{orders}
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("demo: %s: %w", path, err)
	}
	return cfg, nil
}

func (d *Demo) startEdge(ctx context.Context) (edge, error) {
	cfg, err := d.loadGatewayConfig()
	if err != nil {
		return nil, err
	}
	g, err := gateway.New(ctx, cfg, gateway.Options{Logger: d.component(Gateway), Audit: d.audit(Gateway), Now: d.cfg.Now})
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	tlsCfg := tlsconfig.TLSClientConfig(d.srv.CA(), tlsconfig.AuthorizeID(d.ids[Gateway].id))
	return &gatewayEdge{Gateway: g, client: &http.Client{Timeout: 15 * time.Second,
		Transport: &http.Transport{Proxy: nil, TLSClientConfig: tlsCfg, ForceAttemptHTTP2: true}}}, nil
}

func (e *gatewayEdge) Run(ctx context.Context) error {
	go func() {
		// The users' connections are the demo's own: close them first so
		// that the gateway has nothing to drain.
		<-ctx.Done()
		e.client.CloseIdleConnections()
	}()
	return e.Gateway.Run(ctx)
}

func (e *gatewayEdge) Close() {
	_ = e.Gateway.Close()
	e.client.CloseIdleConnections()
}

func (e *gatewayEdge) NewRequest(ctx context.Context, method, path string, body io.Reader) (*http.Request, error) {
	return http.NewRequestWithContext(ctx, method, e.URL()+path, body)
}

func (e *gatewayEdge) Client() *http.Client { return e.client }

func (e *gatewayEdge) URL() string { return "https://" + e.Addr().String() }
