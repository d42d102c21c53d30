//go:build !unix

package proxy

import "net"

// tcpIdleUsable cannot peek on this platform; a dead connection is found
// when it is used (and the request retried if it may be).
func tcpIdleUsable(net.Conn) bool { return true }
