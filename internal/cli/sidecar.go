package cli

import (
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"postern.dev/postern/internal/proxy"
)

func newSidecarCmd(e *env) *cobra.Command {
	var (
		config string
		check  bool
		logs   logFlags
	)
	cmd := &cobra.Command{
		Use:   "sidecar",
		Short: "Run the per-workload proxy: inbound mTLS, tokens and policy; outbound token exchange",
		Long: `Run the sidecar next to one application, which then holds no certificate, key
or token logic of its own.

Inbound, callers reach the application through a mutual TLS listener: their
X.509-SVID must chain to the trust bundle, their request must carry exactly one
bearer token from the token service, addressed to this workload and bound to
their certificate (unless an AuthorizationPolicy admits token-less calls to
that path), and the AuthorizationPolicies must allow it. The application gets
the verified claims (X-Postern-Claims), the caller's SPIFFE ID (X-Postern-Peer)
and an opaque context id (X-Postern-Context) instead of the token.

Outbound, the application sends plain HTTP to the outbound listener (as
HTTP_PROXY, or with Host: <upstream>); the sidecar exchanges the user's token
for one addressed to the upstream and calls it over mutual TLS.

The admin listener serves /healthz, /readyz (an SVID, the token service's
keys and its revocation list are held) and Prometheus /metrics. SIGTERM drains requests in flight.`,
		Example: `  postern sidecar --config examples/quickstart/sidecars/order-processing.yaml`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if config == "" {
				return fmt.Errorf("--config is required")
			}
			cfg, err := proxy.LoadConfig(config)
			if err != nil {
				return err
			}
			if check {
				fmt.Fprintf(e.stdout, "%s: configuration is valid\n", config)
				return nil
			}
			if a := cfg.SPIFFE.Attest; a != nil && a.JoinTokenFile == "" && a.K8sTokenFile == "" {
				a.JoinToken = takeEnv(joinTokenEnv)
			}
			logger, err := logs.logger(cmd, e, cfg.Log.Level, cfg.Log.Format)
			if err != nil {
				return err
			}
			procs := setMaxProcs(cfg.MaxProcs)
			logger.Debug("runtime", slog.Int("gomaxprocs", procs))
			sc, err := proxy.NewSidecar(e.ctx, cfg, proxy.SidecarOptions{
				Logger: logger,
				Audit:  logger.With(slog.String("log", "audit")),
			})
			if err != nil {
				return err
			}
			defer sc.Close()
			return sc.Run(e.ctx)
		},
	}
	cmd.Flags().StringVarP(&config, "config", "c", "", "sidecar configuration file (YAML)")
	cmd.Flags().BoolVar(&check, "check", false, "validate the configuration and exit")
	logs.register(cmd)
	return cmd
}
