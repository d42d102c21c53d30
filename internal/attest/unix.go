package attest

import (
	"container/list"
	"errors"
	"net"
	"os/user"
	"strconv"
	"sync"
)

// Unix attestation defaults.
const (
	// DefaultMaxExecutableBytes bounds the executable hashed for a peer.
	DefaultMaxExecutableBytes = 512 << 20
	// DefaultHashCacheSize is the number of executable hashes remembered.
	DefaultHashCacheSize = 256
)

// UnixPeer is what the kernel and /proc say about the process on the other
// end of a unix socket: its effective uid and gid when it connected, its
// pid, the path of its executable (as /proc/<pid>/exe links it; a replaced
// or deleted file carries the kernel's " (deleted)" suffix) and the hex
// SHA-256 of the executable image the process runs.
type UnixPeer struct {
	UID, GID uint32
	PID      int32
	Path     string
	SHA256   string
}

// Selectors returns the unix selectors of the peer: uid, gid, user and
// group (when the ids resolve to names), path and sha256.
func (p *UnixPeer) Selectors() []Selector {
	out := make([]Selector, 0, 6)
	uid := strconv.FormatUint(uint64(p.UID), 10)
	gid := strconv.FormatUint(uint64(p.GID), 10)
	out = append(out, Selector{SelectorUnix, "uid:" + uid}, Selector{SelectorUnix, "gid:" + gid})
	if u, err := user.LookupId(uid); err == nil && u.Username != "" {
		out = append(out, Selector{SelectorUnix, "user:" + u.Username})
	}
	if g, err := user.LookupGroupId(gid); err == nil && g.Name != "" {
		out = append(out, Selector{SelectorUnix, "group:" + g.Name})
	}
	if p.Path != "" {
		out = append(out, Selector{SelectorUnix, "path:" + p.Path})
	}
	if p.SHA256 != "" {
		out = append(out, Selector{SelectorUnix, "sha256:" + p.SHA256})
	}
	return out
}

// UnixConfig configures a UnixAttestor. The zero value means defaults.
type UnixConfig struct {
	// MaxExecutableBytes refuses peers whose executable is larger; default
	// DefaultMaxExecutableBytes (512 MiB).
	MaxExecutableBytes int64
	// HashCacheSize is the number of executable hashes kept, keyed by
	// path, device, inode, size, mtime and ctime; default
	// DefaultHashCacheSize; negative disables the cache.
	HashCacheSize int
}

// UnixAttestor attests the peers of unix sockets (SO_PEERCRED, Linux only)
// and caches executable hashes so a binary is not re-read per connection.
// It is safe for concurrent use; the zero value uses the defaults.
//
// # The PID-reuse race
//
// SO_PEERCRED reports the pid of the process that connected, at connect
// time. By the time /proc/<pid> is read that process may have exited and
// its pid been reused by another one, whose executable would then be
// attributed to the connection (SPIRE's unix attestor documents the same
// race). Attest closes it as follows:
//
//  1. It pins the peer process with a pidfd: SO_PEERPIDFD (Linux 6.5+)
//     returns one for the very process that connected, atomically. On older
//     kernels it falls back to pidfd_open(pid) (Linux 5.3+), which leaves a
//     window between connect and pidfd_open; on kernels without pidfds
//     attestation is refused.
//  2. It reads the start time, the effective uid/gid (which must equal
//     SO_PEERCRED's) and the executable link from /proc/<pid>, opens
//     /proc/<pid>/exe (the running image itself, not whatever the path
//     names now) and hashes it.
//  3. Afterwards it checks, through the pidfd, that the process has not
//     exited (a pid cannot be reused while the process holding it, even as
//     a zombie, exists), and that the start time and uid/gid are unchanged.
//     If the process exited, attestation is refused.
//
// What remains: a process may connect and then exec another binary (the
// pid, start time and socket stay) or hand the socket to another process;
// attestation describes the process at attestation time, not who reads
// the socket later. The uid/gid checks confine such tricks to a peer that
// already runs with the same credentials.
type UnixAttestor struct {
	cfg UnixConfig
	// noPeerPIDFD makes attestation take the pidfd_open fallback of
	// kernels older than 6.5 (tests).
	noPeerPIDFD bool

	// hashing bounds the executables hashed at once: a caller can make the
	// agent hash a large file on every connection (touching it defeats the
	// cache), so that work must not run unbounded in parallel.
	hashing chan struct{}

	mu    sync.Mutex
	lru   *list.List // of *hashEntry, most recent first
	index map[hashKey]*list.Element
}

// maxConcurrentHashes is the size of UnixAttestor.hashing.
const maxConcurrentHashes = 2

// hashSlots returns the semaphore of hashing, made on first use (the zero
// UnixAttestor is usable).
func (a *UnixAttestor) hashSlots() chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.hashing == nil {
		a.hashing = make(chan struct{}, maxConcurrentHashes)
	}
	return a.hashing
}

// hashKey identifies an executable's content without reading it.
type hashKey struct {
	path         string
	dev, ino     uint64
	size         int64
	mtime, ctime int64 // ns since the epoch
}

var errNoConn = errors.New("no connection")

type hashEntry struct {
	key hashKey
	sum string
}

// NewUnixAttestor returns an attestor with cfg (zero values: defaults).
func NewUnixAttestor(cfg UnixConfig) *UnixAttestor {
	if cfg.MaxExecutableBytes <= 0 {
		cfg.MaxExecutableBytes = DefaultMaxExecutableBytes
	}
	if cfg.HashCacheSize == 0 {
		cfg.HashCacheSize = DefaultHashCacheSize
	}
	return &UnixAttestor{cfg: cfg, lru: list.New(), index: make(map[hashKey]*list.Element)}
}

// PeerFromConn attests the peer of conn without a hash cache; long-lived
// servers should keep one UnixAttestor instead. See UnixAttestor for the
// checks and their limits.
func PeerFromConn(conn *net.UnixConn) (*UnixPeer, error) {
	return NewUnixAttestor(UnixConfig{HashCacheSize: -1}).Attest(conn)
}

// Attest returns the credentials of the process on the other end of conn
// and its executable's path and SHA-256. Every failure wraps
// ErrAttestation: a peer that cannot be described is not attested.
func (a *UnixAttestor) Attest(conn *net.UnixConn) (*UnixPeer, error) {
	if conn == nil {
		return nil, refuse(errNoConn)
	}
	limit := a.cfg.MaxExecutableBytes
	if limit <= 0 {
		limit = DefaultMaxExecutableBytes
	}
	return a.attest(conn, limit)
}

func (a *UnixAttestor) cached(k hashKey) (string, bool) {
	if a.cfg.HashCacheSize < 0 {
		return "", false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.index[k]
	if !ok {
		return "", false
	}
	a.lru.MoveToFront(e)
	return e.Value.(*hashEntry).sum, true
}

func (a *UnixAttestor) remember(k hashKey, sum string) {
	if a.cfg.HashCacheSize < 0 {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.index == nil { // a zero UnixAttestor
		a.lru, a.index = list.New(), make(map[hashKey]*list.Element)
	}
	if e, ok := a.index[k]; ok {
		a.lru.MoveToFront(e)
		return
	}
	a.index[k] = a.lru.PushFront(&hashEntry{key: k, sum: sum})
	size := a.cfg.HashCacheSize
	if size == 0 {
		size = DefaultHashCacheSize
	}
	for a.lru.Len() > size {
		old := a.lru.Back()
		a.lru.Remove(old)
		delete(a.index, old.Value.(*hashEntry).key)
	}
}
