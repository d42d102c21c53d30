// Command postern is the one binary of Postern: the control plane (token
// service and CA), the node agent, the sidecar, the edge gateway, the demo and
// the operator tools. All wiring lives in internal/cli so that it can be tested
// without a process.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"postern.dev/postern/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
