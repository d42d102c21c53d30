package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countingFallback records the requests that reached the fallback.
type countingFallback struct {
	n  atomic.Int32
	rt http.RoundTripper
}

func (c *countingFallback) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return c.rt.RoundTrip(r)
}

// syncFixture is a syncTransport to addr that counts its dials.
type syncFixture struct {
	t        *syncTransport
	dials    atomic.Int32
	fallback *countingFallback
}

func newSyncFixture(t *testing.T, addr string) *syncFixture {
	t.Helper()
	f := &syncFixture{fallback: &countingFallback{rt: &http.Transport{}}}
	var d net.Dialer
	f.t = &syncTransport{
		dial: func(ctx context.Context) (net.Conn, error) {
			f.dials.Add(1)
			return d.DialContext(ctx, "tcp", addr)
		},
		fallback:    f.fallback,
		maxIdle:     4,
		idleTimeout: time.Minute,
		now:         time.Now,
	}
	t.Cleanup(f.t.close)
	return f
}

func (f *syncFixture) do(t *testing.T, r *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := f.t.RoundTrip(r)
	if err != nil {
		t.Fatalf("%s %s: %v", r.Method, r.URL, err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the body: %v", err)
	}
	resp.Body.Close()
	return resp, string(b)
}

func newReq(t *testing.T, method, url string, body io.Reader) *http.Request {
	t.Helper()
	r, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestSyncTransportReuse: simple requests share one connection, whatever
// the shape of the response (length, chunked, empty, HEAD, 304); requests
// that are not simple go to the fallback.
func TestSyncTransportReuse(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/chunked":
			w.Write([]byte("part1"))
			w.(http.Flusher).Flush()
			w.Write([]byte("part2"))
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		case "/notmodified":
			w.WriteHeader(http.StatusNotModified)
		case "/early-hints":
			w.Header().Set("Link", "</a.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.Write([]byte("final"))
		default:
			b, _ := io.ReadAll(r.Body)
			w.Write([]byte(r.Method + " " + r.URL.Path + " " + string(b)))
		}
	}))
	defer srv.Close()
	f := newSyncFixture(t, srv.Listener.Addr().String())

	for i, tc := range []struct {
		method, path, want string
		status             int
	}{
		{"GET", "/a", "GET /a ", 200},
		{"GET", "/chunked", "part1part2", 200},
		{"GET", "/empty", "", 204},
		{"HEAD", "/a", "", 200},
		{"GET", "/notmodified", "", 304},
		{"OPTIONS", "/b", "OPTIONS /b ", 200},
		{"GET", "/early-hints", "final", 200},
		{"GET", "/c", "GET /c ", 200},
	} {
		resp, body := f.do(t, newReq(t, tc.method, srv.URL+tc.path, nil))
		if resp.StatusCode != tc.status || body != tc.want {
			t.Errorf("%d: %s %s = %d %q, want %d %q", i, tc.method, tc.path, resp.StatusCode, body, tc.status, tc.want)
		}
	}
	if n := f.dials.Load(); n != 1 {
		t.Errorf("%d connections for sequential simple requests, want 1", n)
	}
	if n := f.fallback.n.Load(); n != 0 {
		t.Errorf("%d simple requests went to the fallback", n)
	}

	// Not simple: a body, an upgrade, Expect, a non-replayable method.
	for _, r := range []*http.Request{
		newReq(t, "POST", srv.URL+"/p", strings.NewReader("x")),
		newReq(t, "DELETE", srv.URL+"/d", nil),
		func() *http.Request {
			r := newReq(t, "GET", srv.URL+"/u", nil)
			r.Header.Set("Upgrade", "websocket")
			return r
		}(),
		func() *http.Request {
			r := newReq(t, "GET", srv.URL+"/e", nil)
			r.Header.Set("Expect", "100-continue")
			return r
		}(),
	} {
		f.do(t, r)
	}
	if n := f.fallback.n.Load(); n != 4 {
		t.Errorf("%d of 4 requests that are not simple went to the fallback", n)
	}
}

// TestSyncTransportConnectionClose: a response that ends its connection
// (Connection: close, or a body delimited by the close) is not reused, and
// neither is one whose body was closed early.
func TestSyncTransportConnectionClose(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/close":
			w.Header().Set("Connection", "close")
			w.Write([]byte("bye"))
		case "/big":
			w.Write([]byte(strings.Repeat("x", 1<<20)))
		default:
			w.Write([]byte("ok"))
		}
	}))
	defer srv.Close()
	f := newSyncFixture(t, srv.Listener.Addr().String())

	f.do(t, newReq(t, "GET", srv.URL+"/close", nil))
	f.do(t, newReq(t, "GET", srv.URL+"/", nil))
	if n := f.dials.Load(); n != 2 {
		t.Errorf("%d connections after Connection: close, want 2", n)
	}
	resp, err := f.t.RoundTrip(newReq(t, "GET", srv.URL+"/big", nil))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	f.do(t, newReq(t, "GET", srv.URL+"/", nil))
	if n := f.dials.Load(); n != 3 {
		t.Errorf("%d connections after a body closed early, want 3", n)
	}
}

// rawServer answers each connection with fn, on 127.0.0.1.
func rawServer(t *testing.T, fn func(c net.Conn, br *bufio.Reader)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				fn(c, bufio.NewReader(c))
			}()
		}
	}()
	return ln.Addr().String()
}

// TestSyncTransportStaleConnection: a pooled connection that the server
// closed while idle is replaced transparently, once.
func TestSyncTransportStaleConnection(t *testing.T) {
	addr := rawServer(t, func(c net.Conn, br *bufio.Reader) {
		// One response per connection, then close without saying so.
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	f := newSyncFixture(t, addr)
	for i := range 3 {
		time.Sleep(20 * time.Millisecond) // let the close arrive
		if _, body := f.do(t, newReq(t, "GET", "http://"+addr+"/", nil)); body != "ok" {
			t.Fatalf("request %d: body %q", i, body)
		}
	}
	if n := f.dials.Load(); n != 3 {
		t.Errorf("%d dials, want 3 (each pooled connection found closed)", n)
	}
}

// TestSyncTransportFailures: errors that are not a closed idle connection
// are reported, not retried; none leaves a connection in the pool.
func TestSyncTransportFailures(t *testing.T) {
	t.Run("header timeout", func(t *testing.T) {
		addr := rawServer(t, func(c net.Conn, br *bufio.Reader) {
			http.ReadRequest(br)
			io.Copy(io.Discard, br) // until the client gives up
		})
		f := newSyncFixture(t, addr)
		f.t.headerTimeout = 50 * time.Millisecond
		_, err := f.t.RoundTrip(newReq(t, "GET", "http://"+addr+"/", nil))
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("error %v, want a timeout", err)
		}
		if n := f.dials.Load(); n != 1 {
			t.Errorf("%d dials, want 1 (a timeout is not retried)", n)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		addr := rawServer(t, func(c net.Conn, br *bufio.Reader) {
			http.ReadRequest(br)
			io.Copy(io.Discard, br) // until the client gives up
		})
		f := newSyncFixture(t, addr)
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(50*time.Millisecond, cancel)
		start := time.Now()
		_, err := f.t.RoundTrip(newReq(t, "GET", "http://"+addr+"/", nil).WithContext(ctx))
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("error %v, want context.Canceled", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("cancellation took %v", d)
		}
	})
	t.Run("header too large", func(t *testing.T) {
		addr := rawServer(t, func(c net.Conn, br *bufio.Reader) {
			http.ReadRequest(br)
			io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Big: ")
			c.Write([]byte(strings.Repeat("a", 2<<20)))
		})
		f := newSyncFixture(t, addr)
		if _, err := f.t.RoundTrip(newReq(t, "GET", "http://"+addr+"/", nil)); err == nil {
			t.Fatal("a 2 MiB response header was accepted")
		}
	})
	t.Run("switching protocols unasked", func(t *testing.T) {
		addr := rawServer(t, func(c net.Conn, br *bufio.Reader) {
			http.ReadRequest(br)
			io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n")
		})
		f := newSyncFixture(t, addr)
		if _, err := f.t.RoundTrip(newReq(t, "GET", "http://"+addr+"/", nil)); err == nil {
			t.Fatal("an unasked 101 was accepted")
		}
	})
	t.Run("garbage", func(t *testing.T) {
		addr := rawServer(t, func(c net.Conn, br *bufio.Reader) {
			http.ReadRequest(br)
			io.WriteString(c, "NOT HTTP\r\n\r\n")
		})
		f := newSyncFixture(t, addr)
		if _, err := f.t.RoundTrip(newReq(t, "GET", "http://"+addr+"/", nil)); err == nil {
			t.Fatal("garbage was accepted as a response")
		}
		if n := f.dials.Load(); n != 1 {
			t.Errorf("%d dials, want 1", n)
		}
	})
	t.Run("refused", func(t *testing.T) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := ln.Addr().String()
		ln.Close()
		f := newSyncFixture(t, addr)
		if _, err := f.t.RoundTrip(newReq(t, "GET", "http://"+addr+"/", nil)); err == nil {
			t.Fatal("no error from a closed port")
		}
	})
}

// TestSyncTransportConcurrent: parallel requests each get a connection of
// their own, and the pool keeps at most maxIdle.
func TestSyncTransportConcurrent(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(r.URL.Path))
	}))
	defer srv.Close()
	f := newSyncFixture(t, srv.Listener.Addr().String())
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				path := "/" + string(rune('a'+g)) + string(rune('a'+i%26))
				resp, err := f.t.RoundTrip(newReq(t, "GET", srv.URL+path, nil))
				if err != nil {
					t.Error(err)
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(b) != path {
					t.Errorf("asked %s, got %s", path, b)
				}
			}
		}()
	}
	wg.Wait()
	f.t.mu.Lock()
	idle := len(f.t.idle)
	f.t.mu.Unlock()
	if idle > f.t.maxIdle {
		t.Errorf("%d idle connections kept, the bound is %d", idle, f.t.maxIdle)
	}
	if n := f.dials.Load(); n > 8+8 {
		t.Errorf("%d dials for 8 concurrent callers", n)
	}
}

// FuzzSyncTransportResponse feeds arbitrary bytes as the answer to a
// request: no panic, an error or a response whose body reads to an end,
// and a connection never pooled after an error.
func FuzzSyncTransportResponse(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
		"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.1 101 Switching Protocols\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
		"HTTP/1.0 200 OK\r\n\r\nuntil close",
		"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
		"", "\r\n", "HTTP/1.1 99 X\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, answer []byte) {
		st := &syncTransport{
			dial: func(ctx context.Context) (net.Conn, error) {
				client, server := net.Pipe()
				go func() {
					defer server.Close()
					br := bufio.NewReader(server)
					if _, err := http.ReadRequest(br); err != nil {
						return
					}
					server.Write(answer)
				}()
				return client, nil
			},
			fallback:      http.DefaultTransport,
			maxIdle:       1,
			headerTimeout: time.Second,
			now:           time.Now,
		}
		defer st.close()
		req, _ := http.NewRequest("GET", "http://fuzz.test/", nil)
		resp, err := st.RoundTrip(req)
		if err != nil {
			st.mu.Lock()
			n := len(st.idle)
			st.mu.Unlock()
			if n != 0 {
				t.Fatalf("a connection was pooled after error %v", err)
			}
			return
		}
		if resp.StatusCode < 200 {
			t.Fatalf("returned informational status %d", resp.StatusCode)
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
	})
}

// TestSyncTransportNoDesync: bytes beyond a response (a second response in
// the same write, or a body sent to a HEAD) never reach the next request:
// the connection is dropped, not pooled.
func TestSyncTransportNoDesync(t *testing.T) {
	for _, tc := range []struct{ name, method, first string }{
		{"extra bytes after the body", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA"},
		{"a body sent to HEAD", "HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 62\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, late := range []bool{false, true} {
				addr := rawServer(t, func(c net.Conn, br *bufio.Reader) {
					for {
						req, err := http.ReadRequest(br)
						if err != nil {
							return
						}
						if req.URL.Path != "/victim-1" {
							io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal")
							continue
						}
						forged := "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"
						if late {
							io.WriteString(c, tc.first)
							time.Sleep(20 * time.Millisecond) // arrives while the connection is idle
							io.WriteString(c, forged)
						} else {
							io.WriteString(c, tc.first+forged)
						}
					}
				})
				f := newSyncFixture(t, addr)
				f.t.peek = tcpIdleUsable
				f.do(t, newReq(t, tc.method, "http://"+addr+"/victim-1", nil))
				time.Sleep(50 * time.Millisecond)
				resp, err := f.t.RoundTrip(newReq(t, "GET", "http://"+addr+"/victim-2", nil))
				if err != nil {
					continue // refusing is fine; answering with the forged response is not
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(b) == "forged" {
					t.Errorf("late=%v: the second request received bytes sent after the first response", late)
				}
			}
		})
	}
}

// TestSyncTransportAllPooledStale: after the peer closed every pooled
// connection (an application restart), a request still succeeds on a new
// one.
func TestSyncTransportAllPooledStale(t *testing.T) {
	addr := rawServer(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	}) // one response per connection, then close
	for _, peek := range []bool{false, true} {
		f := newSyncFixture(t, addr)
		if peek {
			f.t.peek = tcpIdleUsable
		}
		r1, err := f.t.RoundTrip(newReq(t, "GET", "http://"+addr+"/a", nil))
		if err != nil {
			t.Fatal(err)
		}
		r2, err := f.t.RoundTrip(newReq(t, "GET", "http://"+addr+"/b", nil))
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(r1.Body)
		io.ReadAll(r2.Body)
		time.Sleep(50 * time.Millisecond)
		if _, err := f.t.RoundTrip(newReq(t, "GET", "http://"+addr+"/c", nil)); err != nil {
			t.Errorf("peek=%v: with two dead pooled connections: %v", peek, err)
		}
	}
}

// TestSyncTransportCancelBeforeHeaderTimeout: a cancellation that lands
// just before the header timeout is set is not undone by it.
func TestSyncTransportCancelBeforeHeaderTimeout(t *testing.T) {
	addr := rawServer(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		time.Sleep(time.Second)
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	f := newSyncFixture(t, addr)
	ctx, cancel := context.WithCancel(context.Background())
	f.t.headerTimeout = 10 * time.Second
	var calls atomic.Int32
	f.t.now = func() time.Time {
		if calls.Add(1) == 2 { // send(), just before the header timeout is set
			cancel()
			time.Sleep(20 * time.Millisecond) // let the AfterFunc run
		}
		return time.Now()
	}
	start := time.Now()
	resp, err := f.t.RoundTrip(newReq(t, "GET", "http://"+addr+"/", nil).WithContext(ctx))
	if err == nil {
		resp.Body.Close()
		t.Fatalf("a cancelled request returned a response after %v", time.Since(start))
	}
	if !errors.Is(err, context.Canceled) || time.Since(start) > 500*time.Millisecond {
		t.Errorf("error %v after %v, want context.Canceled at once", err, time.Since(start))
	}
}

// TestSyncTransportIdleSweep: connections idle past the timeout are closed
// even when nobody takes them, and a closed transport pools nothing.
func TestSyncTransportIdleSweep(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }))
	defer srv.Close()
	f := newSyncFixture(t, srv.Listener.Addr().String())
	now := time.Now()
	f.t.now = func() time.Time { return now }
	var bodies []*http.Response
	for range 3 {
		resp, err := f.t.RoundTrip(newReq(t, "GET", srv.URL, nil))
		if err != nil {
			t.Fatal(err)
		}
		bodies = append(bodies, resp)
	}
	for _, r := range bodies[:2] {
		io.ReadAll(r.Body)
	}
	now = now.Add(2 * f.t.idleTimeout)
	io.ReadAll(bodies[2].Body) // its put sweeps the two expired ones
	f.t.mu.Lock()
	n := len(f.t.idle)
	f.t.mu.Unlock()
	if n != 1 {
		t.Errorf("%d idle connections after the sweep, want 1", n)
	}
	f.t.close()
	f.do(t, newReq(t, "GET", srv.URL, nil))
	f.t.mu.Lock()
	n = len(f.t.idle)
	f.t.mu.Unlock()
	if n != 0 {
		t.Errorf("a closed transport pooled %d connections", n)
	}
}

// TestSyncTransportReadAfterClose: a body closed early reports an error on
// Read, not a clean end.
func TestSyncTransportReadAfterClose(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(strings.Repeat("x", 1<<16)))
	}))
	defer srv.Close()
	f := newSyncFixture(t, srv.Listener.Addr().String())
	resp, err := f.t.RoundTrip(newReq(t, "GET", srv.URL, nil))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if _, err := resp.Body.Read(make([]byte, 10)); err == nil || err == io.EOF {
		t.Errorf("Read after Close: %v, want an error", err)
	}
}

// Idle connections past idleTimeout are closed even when the pool is not
// used again: a burst followed by quiet does not leave sockets open.
func TestSyncTransportSweepsWhenQuiet(t *testing.T) {
	var open atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(20 * time.Millisecond) // so that the burst needs many connections
		_, _ = io.WriteString(w, "ok")
	}))
	srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			open.Add(1)
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		}
	}
	srv.Start()
	defer srv.Close()
	f := newSyncFixture(t, srv.Listener.Addr().String())
	f.t.maxIdle, f.t.idleTimeout = 64, 100*time.Millisecond
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			r, _ := http.NewRequest("GET", srv.URL+"/", nil)
			f.do(t, r)
		})
	}
	wg.Wait()
	if open.Load() < 2 {
		t.Fatalf("the burst used %d connections; the test needs several", open.Load())
	}
	for deadline := time.Now().Add(5 * time.Second); open.Load() != 0; {
		if time.Now().After(deadline) {
			f.t.mu.Lock()
			n := len(f.t.idle)
			f.t.mu.Unlock()
			t.Fatalf("%d connections still open (%d pooled) well past idleTimeout", open.Load(), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
