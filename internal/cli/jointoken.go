package cli

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"postern.dev/postern/internal/attest"
	"postern.dev/postern/internal/server"
)

func newCAJoinTokenCmd(e *env) *cobra.Command {
	var (
		flags serverFlags
		id    string
		ttl   time.Duration
	)
	cmd := &cobra.Command{
		Use:   "join-token",
		Short: "Create a one-time join token that attests a SPIFFE ID to the node API",
		Long: `Create a single-use join token for --spiffe-id and print it once. Only its
hash is stored; it expires after --ttl (1m to 24h). A node agent attests with a
token for an agent ID (spiffe://<td>/postern/agent/...); a workload that
attests directly (a sidecar without an agent) with a token for its own
Workload's ID.`,
		Example: `  postern ca join-token --data-dir .postern-quickstart --spiffe-id spiffe://quickstart.local/postern/agent/node-1 --ttl 10m`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if id == "" {
				return errors.New("--spiffe-id is required")
			}
			sid, err := spiffeid.FromString(id)
			if err != nil {
				return fmt.Errorf("--spiffe-id: %w", err)
			}
			cfg, err := flags.load()
			if err != nil {
				return err
			}
			if sid.TrustDomain().Name() != cfg.TrustDomain {
				return fmt.Errorf("--spiffe-id %s is not in trust domain %s", sid, cfg.TrustDomain)
			}
			logger := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
			st, err := server.Open(e.ctx, cfg, logger)
			if err != nil {
				return err
			}
			defer st.Close()
			tok, err := attest.CreateJoinToken(e.ctx, st.Store, sid, ttl, time.Time{})
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(e.stdout, tok)
			return err
		},
	}
	flags.register(cmd, false)
	cmd.Flags().StringVar(&id, "spiffe-id", "", "SPIFFE ID the token attests")
	cmd.Flags().DurationVar(&ttl, "ttl", attest.DefaultJoinTokenTTL, "how long the token may be used")
	return cmd
}
