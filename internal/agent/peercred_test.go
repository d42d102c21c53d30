package agent

import (
	"io"
	"log/slog"
	"net"
	"testing"
)

// Every local user can connect: the agent holds a bounded number of
// connections per caller, and a closed one frees its slot.
func TestConnectionLimits(t *testing.T) {
	c := &peerCredentials{logger: slog.New(slog.NewTextHandler(io.Discard, nil)), limits: newConnLimits(3, 2)}
	handshake := func() (net.Conn, error) {
		a, b := net.Pipe()
		t.Cleanup(func() { a.Close(); b.Close() })
		conn, _, err := c.ServerHandshake(a) // not a unix socket: unattested
		return conn, err
	}
	first, err := handshake()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := handshake(); err != nil {
		t.Fatal(err)
	}
	if _, err := handshake(); err == nil {
		t.Fatal("a third connection from one caller was accepted")
	}
	first.Close()
	first.Close() // twice: one slot back, not two
	if _, err := handshake(); err != nil {
		t.Fatalf("after a close: %v", err)
	}
	if _, err := handshake(); err == nil {
		t.Fatal("the slot was given back twice")
	}
	if got := callerKey([]Selector{{Type: "unix", Value: "gid:5"}, {Type: "unix", Value: "uid:1000"}}); got != "uid:1000" {
		t.Errorf("callerKey = %q", got)
	}
	// The total bounds all callers together.
	if !c.limits.acquire("uid:1") || c.limits.acquire("uid:2") {
		t.Error("the total limit does not hold")
	}
}
