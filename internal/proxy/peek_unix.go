//go:build unix

package proxy

import (
	"errors"
	"net"
	"syscall"
)

// tcpIdleUsable reports whether an idle TCP connection is still usable:
// nothing to read (a response nobody asked for, or the peer's FIN) and no
// error. It peeks without blocking and without consuming anything.
func tcpIdleUsable(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	usable := false
	var buf [1]byte
	err = rc.Read(func(fd uintptr) bool {
		n, _, rerr := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		// Nothing pending: the read would block. Anything else (data,
		// n == 0 for the peer's FIN, an error) makes it unusable.
		usable = n < 0 && (errors.Is(rerr, syscall.EAGAIN) || errors.Is(rerr, syscall.EWOULDBLOCK))
		return true
	})
	return err == nil && usable
}
