package cli

import (
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"postern.dev/postern/internal/gateway"
)

func newGatewayCmd(e *env) *cobra.Command {
	var (
		config string
		check  bool
		logs   logFlags
	)
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "Run the edge: check end users' OAuth/OIDC tokens, exchange them, route over mTLS",
		Long: `Run the gateway in front of the trust domain, where end users' requests enter.

Users connect over TLS (HTTP/1.1 or HTTP/2) with an access token from the
organisation's identity provider. The gateway checks it against the
TrustedIssuer resources (a JWT by signature, issuer, audience, expiry and
allowed algorithms; an opaque token by RFC 7662 introspection), picks the
route by host and longest path prefix, enforces the route's required scopes
and conditions and the per-client rate limit, exchanges the token at the token
service for one addressed to the route's upstream, and forwards the request
over mutual TLS. The user's token never goes upstream, and every X-Postern-*
header a user sends is removed.

Refusals are JSON with a decision id that also appears in the audit line:
401 with WWW-Authenticate for a missing or bad token, 403 for scopes and
conditions, 404 for no route, 429 with Retry-After, 502/503 for upstream and
token service faults. The admin listener serves /healthz, /readyz (an SVID and
the issuers' keys are held) and Prometheus /metrics. SIGTERM drains requests
in flight.`,
		Example: `  postern gateway --config examples/quickstart/gateway.yaml
  postern gateway --config gateway.yaml --check`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if config == "" {
				return fmt.Errorf("--config is required")
			}
			cfg, err := gateway.LoadConfig(config)
			if err != nil {
				return err
			}
			if check {
				fmt.Fprintf(e.stdout, "%s: configuration is valid\n", config)
				return nil
			}
			logger, err := logs.logger(cmd, e, cfg.Log.Level, cfg.Log.Format)
			if err != nil {
				return err
			}
			gw, err := gateway.New(e.ctx, cfg, gateway.Options{
				Logger: logger,
				Audit:  logger.With(slog.String("log", "audit")),
			})
			if err != nil {
				return err
			}
			defer gw.Close()
			return gw.Run(e.ctx)
		},
	}
	cmd.Flags().StringVarP(&config, "config", "c", "", "gateway configuration file (YAML)")
	cmd.Flags().BoolVar(&check, "check", false, "validate the configuration and exit")
	logs.register(cmd)
	return cmd
}
