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
// What it does not do: 1xx informational responses (103 Early Hints) are
// read and dropped, not forwarded; a 101 without an upgrade request is an
// error.
type syncTransport struct {
	// dial opens a new connection, TLS handshake included; its context
	// is the request's.
	dial     func(ctx context.Context) (net.Conn, error)
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
}

// maxSyncResponseHeader bounds a response header on this path, as
// http.Transport's default MaxResponseHeaderBytes does.
const maxSyncResponseHeader = 1 << 20

// maxInformational bounds the 1xx responses read before the final one.
const maxInformational = 8

// errSyncHeaderTooLarge reports a response header over maxSyncResponseHeader.
var errSyncHeaderTooLarge = errors.New("proxy: response header too large")

// syncConn is one pooled connection with its buffers.
type syncConn struct {
	conn   *meteredConn
	br     *bufio.Reader
	bw     *bufio.Writer
	reused bool
	idleAt time.Time
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
	for attempt := 0; ; attempt++ {
		c, err := t.get(ctx)
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
		// before any byte of an answer: send again, once, on a new one.
		if !retry || !c.reused || attempt > 0 {
			return nil, err
		}
	}
}

// send writes r on c and reads the response header. retry reports that
// nothing was received, so r may be sent again elsewhere.
func (t *syncTransport) send(c *syncConn, r *http.Request) (resp *http.Response, retry bool, err error) {
	// Cancelling the request unblocks the connection at once.
	stop := context.AfterFunc(r.Context(), func() { _ = c.conn.SetDeadline(time.Unix(1, 0)) })
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
	if t.headerTimeout > 0 {
		_ = c.conn.SetReadDeadline(t.now().Add(t.headerTimeout))
	}
	c.conn.limit = c.conn.n + maxSyncResponseHeader
	for i := 0; ; i++ {
		resp, err = http.ReadResponse(c.br, r)
		if err != nil {
			return nil, c.conn.n == before && closedByPeer(err), err
		}
		if resp.StatusCode >= 200 {
			break
		}
		if resp.StatusCode == http.StatusSwitchingProtocols || i == maxInformational {
			return nil, false, fmt.Errorf("proxy: unexpected %d response", resp.StatusCode)
		}
		// A 1xx response has no body; the final one follows.
	}
	c.conn.limit = -1
	if t.headerTimeout > 0 {
		_ = c.conn.SetReadDeadline(time.Time{})
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

// get returns an idle connection or dials a new one.
func (t *syncTransport) get(ctx context.Context) (*syncConn, error) {
	now := t.now()
	t.mu.Lock()
	for len(t.idle) > 0 {
		c := t.idle[len(t.idle)-1]
		t.idle[len(t.idle)-1] = nil
		t.idle = t.idle[:len(t.idle)-1]
		if t.idleTimeout > 0 && now.Sub(c.idleAt) > t.idleTimeout {
			_ = c.conn.Close()
			continue
		}
		t.mu.Unlock()
		c.reused = true
		return c, nil
	}
	t.mu.Unlock()
	nc, err := t.dial(ctx)
	if err != nil {
		return nil, err
	}
	mc := &meteredConn{Conn: nc, limit: -1}
	return &syncConn{conn: mc, br: bufio.NewReaderSize(mc, 4096), bw: bufio.NewWriterSize(mc, 4096)}, nil
}

// put returns c to the pool, or closes it when the pool is full or closed.
func (t *syncTransport) put(c *syncConn) {
	c.idleAt = t.now()
	t.mu.Lock()
	if t.closed || len(t.idle) >= t.maxIdle {
		t.mu.Unlock()
		_ = c.conn.Close()
		return
	}
	t.idle = append(t.idle, c)
	t.mu.Unlock()
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

// close closes the idle connections and stops pooling.
func (t *syncTransport) close() {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	t.CloseIdleConnections()
}

// syncBody is a response body on a pooled connection: read to its end,
// the connection goes back to the pool; closed before, it is closed.
// Close may be called while a Read blocks in another goroutine.
type syncBody struct {
	t    *syncTransport
	c    *syncConn
	rc   io.ReadCloser
	stop func() bool
	keep bool // the response allows the connection to be reused
	done atomic.Bool
}

func (b *syncBody) Read(p []byte) (int, error) {
	if b.done.Load() {
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
	switch {
	case err == io.EOF:
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
// response that allows it (and no cancellation), closed otherwise.
func (b *syncBody) finish(eof bool) {
	if !b.done.CompareAndSwap(false, true) {
		return
	}
	// stop reports false when the request's context was cancelled and
	// the deadline already set: that connection is spent.
	if b.stop() && eof && b.keep {
		b.t.put(b.c)
		return
	}
	_ = b.c.conn.Close()
}
