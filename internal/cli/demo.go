package cli

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"postern.dev/postern/internal/demo"
)

func newDemoCmd(e *env) *cobra.Command {
	var (
		serve, jsonOut, verbose bool
		examples                string
	)
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the whole system on loopback and narrate a user's request end to end",
		Long: `Start, in this process and on 127.0.0.1 only, an example identity provider,
the token service and CA (postern server, with its store in a temporary
directory), the gateway, and three example services (order-processing,
inventory, finance) each behind its own sidecar, configured from
examples/quickstart. Then play the story, checking each step:

  1. alice's request through the gateway reaches order-processing with a token
     for order-processing alone, sub alice, the gateway as actor;
  2. order-processing calls inventory: its sidecar exchanges the token, and
     inventory sees the act chain order-processing <- gateway;
  3. order-processing tries to call finance for alice: the token service
     refuses (the confused deputy is stopped) and the app gets 403;
  4. a token captured at inventory is replayed: refused for its audience and
     for its certificate binding;
  5. a plaintext request and a forged token are refused;
  6. an operator revokes alice's session: the token service refuses to
     exchange its tokens and the sidecars refuse them within a poll of the
     revocation list.

The exit status is 0 only if every step behaved as expected, so the demo is
also an end-to-end smoke test. Everything is removed at exit.`,
		Example: `  go run ./cmd/postern demo
  postern demo --json | jq .
  postern demo --serve       # keep running; prints curl commands to try`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			start := time.Now()
			logger := slog.New(slog.DiscardHandler)
			if verbose {
				logger = slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
			}
			n := &demo.Narrator{W: e.stdout, Color: !jsonOut && isTerminal(e.stdout) && os.Getenv("NO_COLOR") == ""}
			d, err := demo.Start(e.ctx, demo.Config{Examples: examples, Logger: logger})
			if err != nil {
				return err
			}
			defer d.Close()
			if !jsonOut {
				n.Intro(d.Addresses())
			}
			var steps []demo.Step
			ok := d.Story(e.ctx, func(s demo.Step) {
				steps = append(steps, s)
				if jsonOut {
					_ = demo.WriteJSON(e.stdout, s)
				} else {
					n.Step(s)
				}
			})
			if !jsonOut {
				n.Summary(steps, time.Since(start))
			}
			if serve && e.ctx.Err() == nil {
				if jsonOut {
					_ = demo.WriteServeJSON(e.stdout, d.Addresses(), d.Commands())
				} else {
					n.Serve(d.Commands())
				}
				<-e.ctx.Done()
			}
			if err := d.Close(); err != nil {
				fmt.Fprintf(e.stderr, "postern demo: shutdown: %v\n", err)
			}
			if !ok {
				return &exitError{code: 1}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&serve, "serve", false, "keep everything running after the story (until Ctrl-C) and print curl commands to try")
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print the story as JSON lines, one object per step")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "show the components' logs (on stderr)")
	cmd.Flags().StringVar(&examples, "examples", "", "the quickstart example directory (default: examples/quickstart here or in a parent directory)")
	return cmd
}
