package proxy

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"postern.dev/postern/internal/policy"
)

// Defaults of the outbound side.
const (
	DefaultOutboundListen        = "127.0.0.1:15001"
	DefaultOutboundMaxHeader     = 64 << 10
	DefaultDialTimeout           = 5 * time.Second
	DefaultResponseHeaderTimeout = 60 * time.Second
	DefaultUpstreamIdleTimeout   = 90 * time.Second
	DefaultMaxIdlePerUpstream    = 64
	maxUpstreams                 = 1024
	maxUpstreamAddresses         = 64
)

// OutboundConfig is the `outbound` section of the sidecar configuration:
// the plain HTTP listener the application calls through and the upstreams
// it may reach. Zero values mean the documented defaults.
type OutboundConfig struct {
	// Listen is the outbound listener, plain HTTP on loopback; default
	// 127.0.0.1:15001. The application uses it as HTTP_PROXY or sends to
	// it with Host: <upstream name>.
	Listen string `json:"listen,omitempty"`
	// Upstreams are the services the application may call. A request for
	// any other host is refused.
	Upstreams []Upstream `json:"upstreams,omitempty"`
	// MaxHeaderBytes bounds a request's header (request line included);
	// default 64 KiB. Larger requests get 431.
	MaxHeaderBytes int `json:"maxHeaderBytes,omitempty"`
	// DialTimeout bounds connecting to one upstream address, TLS handshake
	// included; default 5s.
	DialTimeout policy.Duration `json:"dialTimeout,omitempty"`
	// ResponseHeaderTimeout bounds the wait for an upstream's response
	// header (not its body: streams may last); default 60s.
	ResponseHeaderTimeout policy.Duration `json:"responseHeaderTimeout,omitempty"`
	// IdleTimeout closes pooled upstream connections idle that long;
	// default 90s.
	IdleTimeout policy.Duration `json:"idleTimeout,omitempty"`
	// MaxIdlePerUpstream bounds idle HTTP/1.1 connections kept per upstream
	// address; default 64. (HTTP/2 multiplexes on one connection.)
	MaxIdlePerUpstream int `json:"maxIdlePerUpstream,omitempty"`
}

// Upstream is a service the application reaches through the sidecar.
type Upstream struct {
	// Name is what the application calls it: the host of its URLs
	// (http://<name>/...) or its Host header. Case-insensitive; a port in
	// the application's URL is ignored.
	Name string `json:"name"`
	// Addresses are host:port pairs to dial, tried in turn.
	Addresses []string `json:"addresses"`
	// SPIFFEID is the identity the upstream must prove; any other is
	// refused at the handshake.
	SPIFFEID string `json:"spiffeID"`
	// Audience is the audience of the tokens sent to it; default SPIFFEID.
	Audience string `json:"audience,omitempty"`
}

// Validate checks the section and fills in defaults.
func (c *OutboundConfig) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Listen == "" {
		c.Listen = DefaultOutboundListen
	}
	if err := checkLoopback(c.Listen); err != nil {
		bad("outbound.listen: %v (the outbound side speaks plain HTTP: loopback only)", err)
	}
	if c.MaxHeaderBytes == 0 {
		c.MaxHeaderBytes = DefaultOutboundMaxHeader
	}
	if c.MaxHeaderBytes < 1<<10 || c.MaxHeaderBytes > 1<<20 {
		bad("outbound.maxHeaderBytes: want 1 KiB to 1 MiB, got %d", c.MaxHeaderBytes)
	}
	for _, d := range []struct {
		name string
		v    *policy.Duration
		def  time.Duration
	}{
		{"dialTimeout", &c.DialTimeout, DefaultDialTimeout},
		{"responseHeaderTimeout", &c.ResponseHeaderTimeout, DefaultResponseHeaderTimeout},
		{"idleTimeout", &c.IdleTimeout, DefaultUpstreamIdleTimeout},
	} {
		if *d.v < 0 {
			bad("outbound.%s: must not be negative", d.name)
		}
		if *d.v == 0 {
			*d.v = policy.Duration(d.def)
		}
	}
	if c.MaxIdlePerUpstream < 0 {
		bad("outbound.maxIdlePerUpstream: must not be negative")
	}
	if c.MaxIdlePerUpstream == 0 {
		c.MaxIdlePerUpstream = DefaultMaxIdlePerUpstream
	}
	if len(c.Upstreams) > maxUpstreams {
		bad("outbound.upstreams: more than %d", maxUpstreams)
	}
	seen := map[string]bool{}
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		at := fmt.Sprintf("outbound.upstreams[%d]", i)
		if err := u.validate(); err != nil {
			bad("%s: %v", at, err)
			continue
		}
		if seen[u.Name] {
			bad("%s: name %q is used twice", at, u.Name)
		}
		seen[u.Name] = true
	}
	return errors.Join(errs...)
}

func (u *Upstream) validate() error {
	u.Name = strings.ToLower(u.Name)
	if !validHostName(u.Name) {
		return fmt.Errorf("name %q is not a host name", u.Name)
	}
	if len(u.Addresses) == 0 || len(u.Addresses) > maxUpstreamAddresses {
		return fmt.Errorf("want 1 to %d addresses", maxUpstreamAddresses)
	}
	for _, a := range u.Addresses {
		host, port, err := net.SplitHostPort(a)
		if err != nil || host == "" || port == "" || port == "0" {
			return fmt.Errorf("address %q is not host:port", a)
		}
	}
	if _, err := spiffeid.FromString(u.SPIFFEID); err != nil {
		return fmt.Errorf("spiffeID: %w", err)
	}
	if u.Audience == "" {
		u.Audience = u.SPIFFEID
	}
	return nil
}

// validHostName accepts lowercase DNS names (labels of letters, digits and
// hyphens) and IP literals, at most 253 bytes.
func validHostName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	if net.ParseIP(s) != nil {
		return true
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			b := label[i]
			if !(b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '-') {
				return false
			}
		}
	}
	return true
}
