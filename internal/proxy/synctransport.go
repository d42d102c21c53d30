package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// syncTransport sends the plainest requests over HTTP/1.1 keep-alive
// connections on the calling goroutine, and every other request through
// its fallback (an http.Transport).
//
// Why: http.Transport hands each request to a per-connection writer
// goroutine and the response back from a reader goroutine. For a proxy
// whose own work per request is a few microseconds, those hand-offs and the
// scheduler wake-ups they cause were the largest cost after the syscalls
// (bench/sidecar profiles). The request and response are still written and
// parsed by net/http (Request.Write, ReadResponse); only the connection
// handling is ours.
//
// What takes this path: GET, HEAD and OPTIONS requests without a body,
// trailers, Expect or an upgrade: requests that may be sent again on a new
// connection when a pooled one turns out to have been closed by the peer
// before it answered (as http.Transport retries them). Everything else,
// including every request with a body, goes to the fallback, which
// streams in both directions at once.
//
// Framing is never trusted across requests: a connection goes back to the
// pool only after a complete response that allows keep-alive, with nothing
// read beyond it; before a plain TCP connection is reused, bytes that
// arrived while it sat idle (or its closing) are looked for without
// reading them, and such a connection is dropped, as http.Transport drops
// a connection with an unsolicited response. (On TLS connections between
// sidecars the peer is a Postern sidecar whose net/http server frames every
// response; post-handshake TLS messages make a peek meaningless there.)
//
// What it does not do: 1xx informational responses (103 Early Hints) are
// read and dropped, not forwarded; a 101 without an upgrade request is an
// error.
type syncTransport struct {
	// dial opens a new connection, TLS handshake included; its context
	// is the request's.
	dial func(ctx context.Context) (net.Conn, error)
	// peek, when set, reports whether an idle connection is still usable
	// (nothing to read, not closed) without reading from it.
	peek     func(net.Conn) bool
	fallback http.RoundTripper
	// maxIdle bounds the idle connections kept; idleTimeout closes those
	// idle longer; headerTimeout bounds the wait for a response header
	// (zero: no bound but the request's context).
	maxIdle       int
	idleTimeout   time.Duration
	headerTimeout time.Duration
	now           func() time.Time

	mu     sync.Mutex
	idle   []*syncConn // most recently used last
	closed bool
	// sweeper closes idle connections past idleTimeout even when the pool
	// is not used again (a burst, then quiet): armed while it holds any.
	sweeper *time.Timer
}

// maxSyncResponseHeader bounds a response header on this path (net/http's
// client default is 10 MiB; a sidecar's peers never need a megabyte).
const maxSyncResponseHeader = 1 << 20

// maxInformational bounds the 1xx responses read before the final one.
const maxInformational = 8

// Errors of this path.
var (
	errSyncHeaderTooLarge = errors.New("proxy: response header too large")
	errSyncBodyClosed     = errors.New("proxy: read on a closed response body")
)

// syncConn is one pooled connection with its buffers.
type syncConn struct {
	raw    net.Conn // as dialled (TCP or TLS)
	conn   *meteredConn
	br     *bufio.Reader
	bw     *bufio.Writer
	reused bool
	idleAt time.Time

	// mu orders deadline changes with cancellation: once cancelled, the
	// deadline stays in the past whatever send does next.
	mu        sync.Mutex
	cancelled bool
}

// cancel unblocks every read and write on c for good.
func (c *syncConn) cancel() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cancelled = true
	_ = c.conn.SetDeadline(time.Unix(1, 0))
}

// setReadDeadline sets the read deadline unless c was cancelled, and
// reports whether it was not.
func (c *syncConn) setReadDeadline(t time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cancelled {
		return false
	}
	_ = c.conn.SetReadDeadline(t)
	return true
}

// meteredConn counts the bytes read and can bound them.
type meteredConn struct {
	net.Conn
	n     int64
	limit int64 // < 0: none
}

func (m *meteredConn) Read(p []byte) (int, error) {
	if m.limit >= 0 {
		left := m.limit - m.n
		if left <= 0 {
			return 0, errSyncHeaderTooLarge
		}
		if int64(len(p)) > left {
			p = p[:left]
		}
	}
	n, err := m.Conn.Read(p)
	m.n += int64(n)
	return n, err
}

// syncable reports whether r may take the synchronous path.
func syncable(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
	default:
		return false
	}
	return (r.Body == nil || r.Body == http.NoBody) &&
		r.ContentLength == 0 && len(r.TransferEncoding) == 0 && len(r.Trailer) == 0 &&
		len(r.Header["Upgrade"]) == 0 && len(r.Header["Expect"]) == 0 && !r.Close
}

// RoundTrip implements http.RoundTripper.
func (t *syncTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if !syncable(r) {
		return t.fallback.RoundTrip(r)
	}
	ctx := r.Context()
	fresh := false
	for {
		c, err := t.get(ctx, fresh)
		if err != nil {
			return nil, err
		}
		resp, retry, err := t.send(c, r)
		if err == nil {
			return resp, nil
		}
		_ = c.conn.Close()
		if cerr := ctx.Err(); cerr != nil {
			return nil, cerr
		}
		// A pooled connection the peer closed while it sat idle fails
		// before any byte of an answer: send again on a new connection
		// (never another pooled one, which may be just as dead).
		if !retry || !c.reused {
			return nil, err
		}
		fresh = true
	}
}

// send writes r on c and reads the response header. retry reports that
// nothing was received, so r may be sent again elsewhere.
func (t *syncTransport) send(c *syncConn, r *http.Request) (resp *http.Response, retry bool, err error) {
	c.mu.Lock()
	c.cancelled = false
	c.mu.Unlock()
	// Cancelling the request unblocks the connection at once, for good.
	stop := context.AfterFunc(r.Context(), c.cancel)
	defer func() {
		if err != nil {
			stop()
		}
	}()
	before := c.conn.n
	if err := r.Write(c.bw); err != nil {
		return nil, closedByPeer(err), err
	}
	if err := c.bw.Flush(); err != nil {
		return nil, closedByPeer(err), err
	}
	if t.headerTimeout > 0 && !c.setReadDeadline(t.now().Add(t.headerTimeout)) {
		return nil, false, context.Canceled
	}
	c.conn.limit = c.conn.n + maxSyncResponseHeader
	for i := 0; ; i++ {
		resp, err = http.ReadResponse(c.br, r)
		if err != nil {
			return nil, c.conn.n == before && closedByPeer(err), err
		}
		switch code := resp.StatusCode; {
		case code >= 200:
		case code < 100 || code == http.StatusSwitchingProtocols || i == maxInformational:
			return nil, false, fmt.Errorf("proxy: unexpected %d response", code)
		default:
			continue // a 1xx has no body; the final response follows
		}
		break
	}
	c.conn.limit = -1
	if t.headerTimeout > 0 && !c.setReadDeadline(time.Time{}) {
		return nil, false, context.Canceled
	}
	b := &syncBody{t: t, c: c, rc: resp.Body, stop: stop, keep: !resp.Close}
	if resp.Body == http.NoBody {
		b.finish(true)
		return resp, false, nil
	}
	resp.Body = b
	return resp, false, nil
}

// closedByPeer reports whether err says the peer closed the connection
// (rather than, say, a timeout).
func closedByPeer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// get returns a usable idle connection, or dials a new one (always when
// fresh).
func (t *syncTransport) get(ctx context.Context, fresh bool) (*syncConn, error) {
	for !fresh {
		now := t.now()
		t.mu.Lock()
		t.sweepLocked(now)
		if len(t.idle) == 0 {
			t.mu.Unlock()
			break
		}
		c := t.idle[len(t.idle)-1]
		t.idle[len(t.idle)-1] = nil
		t.idle = t.idle[:len(t.idle)-1]
		t.mu.Unlock()
		if t.peek != nil && !t.peek(c.raw) {
			_ = c.conn.Close() // closed by the peer, or bytes nobody asked for
			continue
		}
		c.reused = true
		return c, nil
	}
	nc, err := t.dial(ctx)
	if err != nil {
		return nil, err
	}
	mc := &meteredConn{Conn: nc, limit: -1}
	return &syncConn{raw: nc, conn: mc, br: bufio.NewReaderSize(mc, 4096), bw: bufio.NewWriterSize(mc, 4096)}, nil
}

// sweepLocked closes the connections idle longer than idleTimeout; they
// are the oldest, at the front.
func (t *syncTransport) sweepLocked(now time.Time) {
	if t.idleTimeout <= 0 {
		return
	}
	n := 0
	for n < len(t.idle) && now.Sub(t.idle[n].idleAt) > t.idleTimeout {
		_ = t.idle[n].conn.Close()
		n++
	}
	if n > 0 {
		clear(t.idle[:n])
		t.idle = append(t.idle[:0], t.idle[n:]...)
	}
}

// put returns c to the pool, or closes it when the pool is full or closed.
func (t *syncTransport) put(c *syncConn) {
	c.idleAt = t.now()
	t.mu.Lock()
	t.sweepLocked(c.idleAt)
	if t.closed || len(t.idle) >= t.maxIdle {
		t.mu.Unlock()
		_ = c.conn.Close()
		return
	}
	t.idle = append(t.idle, c)
	if t.sweeper == nil && t.idleTimeout > 0 {
		t.sweeper = time.AfterFunc(t.idleTimeout, t.sweep)
	}
	t.mu.Unlock()
}

// sweep is the sweeper's tick: it closes what has been idle too long and
// re-arms for the oldest connection left.
func (t *syncTransport) sweep() {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	t.sweepLocked(now)
	if t.closed || len(t.idle) == 0 {
		t.sweeper = nil
		return
	}
	t.sweeper.Reset(max(t.idle[0].idleAt.Add(t.idleTimeout).Sub(now), time.Millisecond))
}

// CloseIdleConnections closes the idle connections (those in use close
// when their response ends) and, as http.Transport does, keeps serving.
func (t *syncTransport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = nil
	t.mu.Unlock()
	for _, c := range idle {
		_ = c.conn.Close()
	}
	if f, ok := t.fallback.(interface{ CloseIdleConnections() }); ok {
		f.CloseIdleConnections()
	}
}

// close closes the idle connections and stops pooling: connections in use
// are closed when their response ends.
func (t *syncTransport) close() {
	t.mu.Lock()
	t.closed = true
	if t.sweeper != nil {
		t.sweeper.Stop()
		t.sweeper = nil
	}
	t.mu.Unlock()
	t.CloseIdleConnections()
}

// syncBody is a response body on a pooled connection: read to its end,
// the connection goes back to the pool; closed before, it is closed.
// Close may be called while a Read blocks in another goroutine.
type syncBody struct {
	t      *syncTransport
	c      *syncConn
	rc     io.ReadCloser
	stop   func() bool
	keep   bool // the response allows the connection to be reused
	done   atomic.Bool
	sawEOF atomic.Bool
}

func (b *syncBody) Read(p []byte) (int, error) {
	if b.done.Load() {
		if b.sawEOF.Load() {
			return 0, io.EOF
		}
		return 0, errSyncBodyClosed
	}
	n, err := b.rc.Read(p)
	switch {
	case err == io.EOF:
		b.sawEOF.Store(true)
		b.finish(true)
	case err != nil:
		b.finish(false)
	}
	return n, err
}

// Close releases the connection; closing it unblocks a Read in progress.
func (b *syncBody) Close() error {
	b.finish(false)
	return nil
}

// finish releases the connection once: to the pool after a complete
// response that allows it, with nothing read beyond it and no
// cancellation; closed otherwise.
func (b *syncBody) finish(eof bool) {
	if !b.done.CompareAndSwap(false, true) {
		return
	}
	// stop reports false when the request's context was cancelled and
	// the deadline already set: that connection is spent.
	if b.stop() && eof && b.keep && b.c.br.Buffered() == 0 {
		b.t.put(b.c)
		return
	}
	_ = b.c.conn.Close()
}
