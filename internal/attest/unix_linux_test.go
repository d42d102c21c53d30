//go:build linux

package attest

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
)

// unixPair returns the server side of a real unix socket connection made by
// this process.
func unixPair(tb testing.TB) (server, client *net.UnixConn) {
	tb.Helper()
	dir, err := os.MkdirTemp("", "attest")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "s.sock"), Net: "unix"})
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	client, err = net.DialUnix("unix", nil, l.Addr().(*net.UnixAddr))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { client.Close() })
	server, err = l.AcceptUnix()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { server.Close() })
	return server, client
}

// selfExe returns the test binary's path and an independent SHA-256 of it.
func selfExe(tb testing.TB) (string, string) {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	f, err := os.Open(exe)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		tb.Fatal(err)
	}
	return exe, hex.EncodeToString(h.Sum(nil))
}

func TestPeerFromConn(t *testing.T) {
	server, _ := unixPair(t)
	exe, sum := selfExe(t)
	p, err := PeerFromConn(server)
	if err != nil {
		t.Fatal(err)
	}
	want := UnixPeer{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid()), PID: int32(os.Getpid()), Path: exe, SHA256: sum}
	if *p != want {
		t.Fatalf("peer %+v, want %+v", *p, want)
	}
	sel := p.Selectors()
	for _, s := range []Selector{
		{"unix", "uid:" + strconv.Itoa(os.Geteuid())}, {"unix", "gid:" + strconv.Itoa(os.Getegid())},
		{"unix", "path:" + exe}, {"unix", "sha256:" + sum},
	} {
		if !slices.Contains(sel, s) {
			t.Errorf("selectors %v lack %v", sel, s)
		}
	}
	if u, err := user.LookupId(strconv.Itoa(os.Geteuid())); err == nil && !slices.Contains(sel, Selector{"unix", "user:" + u.Username}) {
		t.Errorf("selectors %v lack user:%s", sel, u.Username)
	}
}

func TestUnixAttestorPidfdOpenFallback(t *testing.T) {
	server, _ := unixPair(t)
	exe, sum := selfExe(t)
	a := NewUnixAttestor(UnixConfig{})
	a.noPeerPIDFD = true
	p, err := a.Attest(server)
	if err != nil {
		t.Fatal(err)
	}
	if p.PID != int32(os.Getpid()) || p.Path != exe || p.SHA256 != sum {
		t.Fatalf("peer %+v", *p)
	}
}

func TestUnixAttestorCache(t *testing.T) {
	a := NewUnixAttestor(UnixConfig{HashCacheSize: 1})
	_, sum := selfExe(t)
	for i := range 3 {
		server, _ := unixPair(t)
		p, err := a.Attest(server)
		if err != nil {
			t.Fatal(err)
		}
		if p.SHA256 != sum {
			t.Fatalf("attempt %d: sha256 %s, want %s", i, p.SHA256, sum)
		}
	}
	a.mu.Lock()
	n := a.lru.Len()
	a.mu.Unlock()
	if n != 1 {
		t.Fatalf("cache holds %d entries, want 1", n)
	}
	// A cached entry is what the next attestation uses: poison it and see.
	a.mu.Lock()
	for _, e := range a.index {
		e.Value.(*hashEntry).sum = "cached"
	}
	a.mu.Unlock()
	server, _ := unixPair(t)
	p, err := a.Attest(server)
	if err != nil || p.SHA256 != "cached" {
		t.Fatalf("got %v, %v; want the cached hash", p, err)
	}
}

func TestUnixAttestorZeroValue(t *testing.T) {
	var a UnixAttestor
	server, _ := unixPair(t)
	_, sum := selfExe(t)
	p, err := a.Attest(server)
	if err != nil || p.SHA256 != sum {
		t.Fatalf("got %v, %v", p, err)
	}
}

func TestUnixAttestorLRU(t *testing.T) {
	a := NewUnixAttestor(UnixConfig{HashCacheSize: 2})
	k := func(i int) hashKey { return hashKey{path: "/bin/x", ino: uint64(i)} }
	a.remember(k(1), "1")
	a.remember(k(2), "2")
	if _, ok := a.cached(k(1)); !ok { // 1 becomes most recent
		t.Fatal("1 missing")
	}
	a.remember(k(3), "3") // evicts 2
	if _, ok := a.cached(k(2)); ok {
		t.Fatal("2 not evicted")
	}
	for _, i := range []int{1, 3} {
		if s, ok := a.cached(k(i)); !ok || s != strconv.Itoa(i) {
			t.Fatalf("%d: %q, %v", i, s, ok)
		}
	}
	off := NewUnixAttestor(UnixConfig{HashCacheSize: -1})
	off.remember(k(1), "1")
	if _, ok := off.cached(k(1)); ok {
		t.Fatal("disabled cache remembered")
	}
}

func TestUnixAttestorRefusals(t *testing.T) {
	t.Run("executable too large", func(t *testing.T) {
		server, _ := unixPair(t)
		a := NewUnixAttestor(UnixConfig{MaxExecutableBytes: 1024})
		_, err := a.Attest(server)
		if !errors.Is(err, ErrAttestation) || !errors.Is(err, errExeTooLarge) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("nil conn", func(t *testing.T) {
		_, err := NewUnixAttestor(UnixConfig{}).Attest(nil)
		if err == nil || err.Error() != "attest: attestation failed: no connection" {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("closed conn", func(t *testing.T) {
		server, _ := unixPair(t)
		server.Close()
		_, err := NewUnixAttestor(UnixConfig{}).Attest(server)
		if !errors.Is(err, ErrAttestation) {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestUnixPeerSelectors(t *testing.T) {
	// 4294967294 resolves to no user or group on any sane system.
	p := &UnixPeer{UID: 4294967294, GID: 4294967294, PID: 1, Path: "/usr/bin/app", SHA256: "ab"}
	want := []Selector{{"unix", "uid:4294967294"}, {"unix", "gid:4294967294"}, {"unix", "path:/usr/bin/app"}, {"unix", "sha256:ab"}}
	if got := p.Selectors(); !slices.Equal(got, want) {
		t.Fatalf("Selectors = %v, want %v", got, want)
	}
	root := (&UnixPeer{}).Selectors()
	if !slices.Contains(root, Selector{"unix", "user:root"}) || !slices.Contains(root, Selector{"unix", "group:root"}) {
		t.Errorf("uid 0 selectors %v lack user:root/group:root", root)
	}
}

func TestParseProc(t *testing.T) {
	stat := []byte("4242 (evil) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615\n")
	if st, err := parseStartTime(stat); err != nil || st != 987654 {
		t.Fatalf("parseStartTime = %d, %v", st, err)
	}
	for _, bad := range []string{"", "1 (x) S 1", "1 x S", "1 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 x"} {
		if _, err := parseStartTime([]byte(bad)); err == nil {
			t.Errorf("parseStartTime(%q) succeeded", bad)
		}
	}
	status := []byte("Name:\tx\nUid:\t1000\t1001\t1002\t1003\nGid:\t50\t51\t52\t53\n")
	if u, err := effectiveID(status, "Uid:"); err != nil || u != 1001 {
		t.Errorf("uid = %d, %v", u, err)
	}
	if g, err := effectiveID(status, "Gid:"); err != nil || g != 51 {
		t.Errorf("gid = %d, %v", g, err)
	}
	if _, err := effectiveID([]byte("Uid:\t1\n"), "Uid:"); err == nil {
		t.Error("short Uid line accepted")
	}
}

func BenchmarkUnixAttest(b *testing.B) {
	for _, bc := range []struct {
		name string
		size int
	}{{"cached", DefaultHashCacheSize}, {"uncached", -1}} {
		b.Run(bc.name, func(b *testing.B) {
			a := NewUnixAttestor(UnixConfig{HashCacheSize: bc.size})
			server, _ := unixPair(b)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := a.Attest(server); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestHelperConnect is not a test: TestUnixAttestorPeerExited runs the test
// binary with it to get a peer process that connects and exits.
func TestHelperConnect(t *testing.T) {
	path := os.Getenv("ATTEST_HELPER_SOCKET")
	if path == "" {
		t.Skip("helper process only")
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		os.Exit(2)
	}
	_ = c // exit with the connection open; the kernel closes it
	os.Exit(0)
}

func TestUnixAttestorPeerExited(t *testing.T) {
	dir, err := os.MkdirTemp("", "attest")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "s.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperConnect$")
	cmd.Env = append(os.Environ(), "ATTEST_HELPER_SOCKET="+sock)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	server, err := l.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	for _, fallback := range []bool{false, true} {
		a := NewUnixAttestor(UnixConfig{})
		a.noPeerPIDFD = fallback
		_, err = a.Attest(server)
		if !errors.Is(err, ErrAttestation) || !errors.Is(err, errPeerGone) {
			t.Fatalf("fallback %v: err = %v, want a refusal for an exited peer", fallback, err)
		}
	}
}

func TestUnixAttestorConcurrent(t *testing.T) {
	a := NewUnixAttestor(UnixConfig{HashCacheSize: 1})
	_, sum := selfExe(t)
	servers := make([]*net.UnixConn, 8)
	for i := range servers {
		servers[i], _ = unixPair(t)
	}
	errs := make(chan error, len(servers))
	for _, s := range servers {
		go func() {
			p, err := a.Attest(s)
			if err == nil && p.SHA256 != sum {
				err = errors.New("wrong sha256 " + p.SHA256)
			}
			errs <- err
		}()
	}
	for range servers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// A peer's executable path is kept only when it shares the agent's mount
// namespace: elsewhere the path names whatever that namespace mounted there.
func TestSameMountNamespace(t *testing.T) {
	if !sameMountNamespace("/proc/self") {
		t.Error("this process is not in its own mount namespace")
	}
	if sameMountNamespace("/proc/0") {
		t.Error("an unreadable namespace counted as the same")
	}
}
