//go:build !linux

package attest

import (
	"errors"
	"net"
)

func (a *UnixAttestor) attest(*net.UnixConn, int64) (*UnixPeer, error) {
	return nil, refuse(errors.New("unix peer attestation is supported on linux only"))
}
