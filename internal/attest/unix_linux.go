//go:build linux

package attest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// maxProcFileBytes bounds the /proc files read (stat, status).
const maxProcFileBytes = 64 << 10

var (
	errPeerGone      = errors.New("peer process exited during attestation")
	errPeerChanged   = errors.New("peer process changed during attestation")
	errPeerInvisible = errors.New("peer process is not visible (another pid namespace)")
	errExeTooLarge   = errors.New("peer executable is too large to hash")
)

// procState is what is re-checked after hashing.
type procState struct {
	start      uint64 // start time, clock ticks after boot
	euid, egid uint32
}

func (a *UnixAttestor) attest(conn *net.UnixConn, limit int64) (*UnixPeer, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil, refuse(fmt.Errorf("peer credentials: %w", err))
	}
	var (
		cred           *unix.Ucred
		credErr, fdErr error
		pidfd          = -1
	)
	ctlErr := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		switch {
		case credErr != nil:
		case a.noPeerPIDFD:
			fdErr = unix.ENOPROTOOPT
		default:
			pidfd, fdErr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEERPIDFD)
		}
	})
	if ctlErr != nil {
		return nil, refuse(fmt.Errorf("peer credentials: %w", ctlErr))
	}
	if credErr != nil {
		return nil, refuse(fmt.Errorf("SO_PEERCRED: %w", credErr))
	}
	if cred.Pid <= 0 {
		if fdErr == nil {
			unix.Close(pidfd)
		}
		return nil, refuse(errPeerInvisible)
	}
	if fdErr != nil {
		// Kernels before 6.5 have no SO_PEERPIDFD; pidfd_open pins the
		// process from now on (see the race documented on UnixAttestor).
		if errors.Is(fdErr, unix.ESRCH) {
			return nil, refuse(errPeerGone)
		}
		if !errors.Is(fdErr, unix.ENOPROTOOPT) && !errors.Is(fdErr, unix.EINVAL) {
			return nil, refuse(fmt.Errorf("SO_PEERPIDFD: %w", fdErr))
		}
		pidfd, err = unix.PidfdOpen(int(cred.Pid), 0)
		if errors.Is(err, unix.ESRCH) {
			return nil, refuse(errPeerGone)
		}
		if err != nil {
			return nil, refuse(fmt.Errorf("pidfd_open: %w", err))
		}
	}
	defer unix.Close(pidfd)

	proc := "/proc/" + strconv.Itoa(int(cred.Pid))
	before, err := readProcState(proc)
	if err != nil {
		return nil, refuse(err)
	}
	if before.euid != cred.Uid || before.egid != cred.Gid {
		return nil, refuse(fmt.Errorf("%w: credentials differ from the connection's", errPeerChanged))
	}
	path, err := os.Readlink(proc + "/exe")
	if err != nil {
		return nil, refuse(fmt.Errorf("peer executable: %w", err))
	}
	sum, hashed, err := a.hashExe(proc+"/exe", path, limit)
	if err != nil {
		return nil, refuse(err)
	}
	// The path and the hash must describe the same file: an exec between
	// reading the link and opening the image would pair one binary's path
	// with another's hash.
	if again, err := os.Readlink(proc + "/exe"); err != nil || again != path {
		return nil, refuse(fmt.Errorf("%w: its executable changed", errPeerChanged))
	}
	if fi, err := os.Stat(proc + "/exe"); err != nil {
		return nil, refuse(fmt.Errorf("peer executable: %w", err))
	} else if st, ok := fi.Sys().(*syscall.Stat_t); !ok || uint64(st.Dev) != hashed.dev || st.Ino != hashed.ino {
		return nil, refuse(fmt.Errorf("%w: its executable changed", errPeerChanged))
	}
	// The path is as the peer's mount namespace sees it: in another one (a
	// container, or an unprivileged user namespace with a bind mount over
	// a trusted binary's path) it names nothing the agent can vouch for,
	// so only the hash of the running image is kept.
	if !sameMountNamespace(proc) {
		path = ""
	}
	// The pidfd still refers to a live (or zombie, unreaped) process, so
	// the pid was never reused while /proc/<pid> was read above.
	if err := unix.PidfdSendSignal(pidfd, 0, nil, 0); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, refuse(errPeerGone)
		}
		return nil, refuse(fmt.Errorf("pidfd_send_signal: %w", err))
	}
	after, err := readProcState(proc)
	if err != nil {
		return nil, refuse(err)
	}
	if after != before {
		return nil, refuse(errPeerChanged)
	}
	return &UnixPeer{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid, Path: path, SHA256: sum}, nil
}

// sameMountNamespace reports whether the process at proc shares the
// agent's mount namespace; any doubt counts as no.
func sameMountNamespace(proc string) bool {
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return false
	}
	peer, err := os.Readlink(proc + "/ns/mnt")
	return err == nil && peer == self
}

// hashExe returns the hex SHA-256 of the image at exe (/proc/<pid>/exe,
// which opens the running file even when path was replaced), from the cache
// when its identity is unchanged, and the identity of the file it hashed.
func (a *UnixAttestor) hashExe(exe, path string, limit int64) (string, hashKey, error) {
	f, err := os.Open(exe)
	if err != nil {
		return "", hashKey{}, fmt.Errorf("peer executable: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", hashKey{}, fmt.Errorf("peer executable: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || !fi.Mode().IsRegular() {
		return "", hashKey{}, errors.New("peer executable is not a regular file")
	}
	if fi.Size() > limit {
		return "", hashKey{}, fmt.Errorf("%w: %d bytes, the limit is %d", errExeTooLarge, fi.Size(), limit)
	}
	key := hashKey{
		path: path, dev: uint64(st.Dev), ino: st.Ino, size: st.Size,
		mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano(),
	}
	if sum, ok := a.cached(key); ok {
		return sum, key, nil
	}
	slots := a.hashSlots()
	slots <- struct{}{}
	defer func() { <-slots }()
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(f, limit+1))
	if err != nil {
		return "", hashKey{}, fmt.Errorf("peer executable: %w", err)
	}
	if n > limit {
		return "", hashKey{}, fmt.Errorf("%w: over %d bytes", errExeTooLarge, limit)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	// Remember only if the file did not change while it was read.
	if fi2, err := f.Stat(); err == nil {
		if st2, ok := fi2.Sys().(*syscall.Stat_t); ok && st2.Size == st.Size &&
			st2.Mtim == st.Mtim && st2.Ctim == st.Ctim && n == st.Size {
			a.remember(key, sum)
		}
	}
	return sum, key, nil
}

// readProcState reads the start time and effective uid/gid of proc.
func readProcState(proc string) (procState, error) {
	var ps procState
	stat, err := readProcFile(proc + "/stat")
	if err != nil {
		return ps, err
	}
	if ps.start, err = parseStartTime(stat); err != nil {
		return ps, err
	}
	status, err := readProcFile(proc + "/status")
	if err != nil {
		return ps, err
	}
	if ps.euid, err = effectiveID(status, "Uid:"); err != nil {
		return ps, err
	}
	if ps.egid, err = effectiveID(status, "Gid:"); err != nil {
		return ps, err
	}
	return ps, nil
}

func readProcFile(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			return nil, errPeerGone
		}
		return nil, fmt.Errorf("peer process: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxProcFileBytes))
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, errPeerGone
		}
		return nil, fmt.Errorf("peer process: %w", err)
	}
	return b, nil
}

// parseStartTime returns field 22 (starttime) of /proc/<pid>/stat. The
// command name (field 2) is parenthesised and may hold anything, so fields
// are counted after its last ')'.
func parseStartTime(stat []byte) (uint64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("peer process: unreadable stat")
	}
	fields := bytes.Fields(stat[i+1:])
	const idx = 22 - 3 // fields after the name start at field 3
	if len(fields) <= idx {
		return 0, errors.New("peer process: unreadable stat")
	}
	v, err := strconv.ParseUint(string(fields[idx]), 10, 64)
	if err != nil {
		return 0, errors.New("peer process: unreadable stat")
	}
	return v, nil
}

// effectiveID returns the effective id (second column) of the status line
// with prefix ("Uid:" or "Gid:").
func effectiveID(status []byte, prefix string) (uint32, error) {
	for line := range bytes.SplitSeq(status, []byte("\n")) {
		rest, ok := bytes.CutPrefix(line, []byte(prefix))
		if !ok {
			continue
		}
		f := bytes.Fields(rest)
		if len(f) < 2 {
			break
		}
		v, err := strconv.ParseUint(string(f[1]), 10, 32)
		if err != nil {
			break
		}
		return uint32(v), nil
	}
	return 0, fmt.Errorf("peer process: no %s line in status", prefix)
}
