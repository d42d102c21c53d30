package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"

	"google.golang.org/grpc/credentials"

	"postern.dev/postern/internal/attest"
)

// peerInfo is the gRPC AuthInfo of a Workload API connection: the selectors
// of the process that connected, or why it could not be attested.
type peerInfo struct {
	credentials.CommonAuthInfo
	Selectors []Selector
	Err       error
}

// AuthType implements credentials.AuthInfo.
func (peerInfo) AuthType() string { return "unix-peer" }

// peerCredentials are gRPC transport credentials for the unix socket: no
// encryption (the kernel carries the bytes), but every connection is
// attested at accept time from its peer credentials. A connection whose
// peer cannot be attested is accepted with the error recorded, so that
// each call gets a clear PermissionDenied instead of endless reconnects.
type peerCredentials struct {
	attestor PeerAttestor
	logger   *slog.Logger
	limits   *connLimits // nil: unlimited
}

// Every local user can connect to the socket: how many connections the
// agent holds at once, in all and per caller (a uid, or all callers that
// could not be attested together).
const (
	maxConnections          = 1024
	maxConnectionsPerCaller = 64
)

// connLimits counts the open Workload API connections.
type connLimits struct {
	total, perCaller int

	mu     sync.Mutex
	open   int
	byUser map[string]int
}

func newConnLimits(total, perCaller int) *connLimits {
	return &connLimits{total: total, perCaller: perCaller, byUser: map[string]int{}}
}

// acquire takes a slot for caller, or reports false when none is free.
func (l *connLimits) acquire(caller string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open >= l.total || l.byUser[caller] >= l.perCaller {
		return false
	}
	l.open++
	l.byUser[caller]++
	return true
}

func (l *connLimits) release(caller string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if l.byUser[caller]--; l.byUser[caller] <= 0 {
		delete(l.byUser, caller)
	}
}

// limitedConn gives its slot back when closed.
type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

// callerKey is what a connection counts against: its uid selector.
func callerKey(sel []Selector) string {
	for _, s := range sel {
		if s.Type == attest.SelectorUnix && strings.HasPrefix(s.Value, "uid:") {
			return s.Value
		}
	}
	return "unattested"
}

var _ credentials.TransportCredentials = (*peerCredentials)(nil)

var errClientSide = errors.New("agent: peer credentials are server-side only")

// ClientHandshake is not supported.
func (c *peerCredentials) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errClientSide
}

// ServerHandshake attests the process on the other end of conn.
func (c *peerCredentials) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	info := peerInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		info.Err = errors.New("agent: not a unix socket connection")
	} else {
		info.Selectors, info.Err = c.attestor.Attest(uc)
	}
	if info.Err != nil {
		c.logger.Warn("agent: could not attest a Workload API caller", "error", info.Err.Error())
		info.Selectors = nil
	}
	if c.limits != nil {
		key := callerKey(info.Selectors)
		if !c.limits.acquire(key) {
			c.logger.Warn("agent: too many Workload API connections; refusing one", "caller", key)
			return nil, nil, fmt.Errorf("agent: too many connections from %s", key)
		}
		return &limitedConn{Conn: conn, release: func() { c.limits.release(key) }}, info, nil
	}
	return conn, info, nil
}

// Info implements credentials.TransportCredentials.
func (c *peerCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "unix-peer"}
}

// Clone implements credentials.TransportCredentials.
func (c *peerCredentials) Clone() credentials.TransportCredentials {
	cp := *c
	return &cp
}

// OverrideServerName implements credentials.TransportCredentials.
func (c *peerCredentials) OverrideServerName(string) error { return nil }

// unixAttestor adapts internal/attest's unix attestor.
type unixAttestor struct{ a *attest.UnixAttestor }

func defaultPeerAttestor() PeerAttestor {
	return unixAttestor{a: attest.NewUnixAttestor(attest.UnixConfig{})}
}

func (u unixAttestor) Attest(conn *net.UnixConn) ([]Selector, error) {
	p, err := u.a.Attest(conn)
	if err != nil {
		return nil, err
	}
	sel := p.Selectors()
	out := make([]Selector, len(sel))
	for i, s := range sel {
		out[i] = Selector{Type: s.Type, Value: s.Value}
	}
	return out, nil
}

// listenSocket listens on the unix socket at path with mode 0777, removing a
// stale socket first. Anything else at path is left alone and is an error.
func listenSocket(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("agent: %s exists and is not a socket", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("agent: another process is serving on %s", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("agent: remove stale socket: %w", err)
		}
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("agent: listen: %w", err)
	}
	if ul, ok := lis.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(true)
	}
	if err := os.Chmod(path, 0o777); err != nil {
		lis.Close()
		return nil, fmt.Errorf("agent: chmod socket: %w", err)
	}
	return lis, nil
}
