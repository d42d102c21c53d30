package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"postern.dev/postern/internal/agent"
)

// joinTokenEnv is read when --join-token is not given, so the token need not
// appear in the process list.
const joinTokenEnv = "POSTERN_JOIN_TOKEN"

// takeEnv returns an environment variable holding a secret and removes it
// from the environment, so that no process started later inherits it.
func takeEnv(name string) string {
	v := os.Getenv(name)
	if v != "" {
		os.Unsetenv(name)
	}
	return v
}

func newAgentCmd(e *env) *cobra.Command {
	var (
		cfg       agent.Config
		logLevel  string
		logFormat string
	)
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the node agent: the SPIFFE Workload API for local workloads",
		Long: `Run the node agent. It attests itself to postern server with a one-time join
token (postern ca join-token --spiffe-id spiffe://<td>/postern/agent/<name>) or
the node's Kubernetes projected service-account token, then serves the SPIFFE
Workload API on a unix socket. Each local caller is attested by its peer
credentials (uid, gid, executable path and SHA-256) and receives the
X.509-SVIDs and JWT-SVIDs of the Workloads whose selectors it matches; SVIDs
are renewed at half-life and streamed to the callers as they rotate.

The join token may also be given in the ` + joinTokenEnv + ` environment variable.
The socket's directory should be owned by the operator; the socket itself is
world-connectable (mode 0777), as callers are told apart by attestation.`,
		Example: `  # the join token in the environment, not on the command line (ps shows that)
  POSTERN_JOIN_TOKEN="$TOKEN" postern agent --server https://127.0.0.1:8443 \
      --bundle .postern-quickstart/bundle.pem --socket /run/postern/agent.sock`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.JoinToken == "" && cfg.K8sTokenFile == "" {
				cfg.JoinToken = takeEnv(joinTokenEnv)
			}
			switch {
			case cfg.ServerURL == "":
				return fmt.Errorf("--server is required")
			case cfg.BundleFile == "":
				return fmt.Errorf("--bundle is required")
			case cfg.SocketPath == "":
				return fmt.Errorf("--socket is required")
			case cfg.JoinToken == "" && cfg.K8sTokenFile == "":
				return fmt.Errorf("--join-token (or %s) or --k8s-token-file is required", joinTokenEnv)
			case cfg.JoinToken != "" && cfg.K8sTokenFile != "":
				return fmt.Errorf("--join-token and --k8s-token-file are mutually exclusive")
			}
			logger, err := newLogger(e.stderr, logLevel, logFormat)
			if err != nil {
				return err
			}
			cfg.Logger = logger
			a, err := agent.New(cfg)
			if err != nil {
				return err
			}
			if err := a.Run(e.ctx); err != nil {
				return err
			}
			logger.Info("postern agent stopped")
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.ServerURL, "server", "", "URL of postern server, e.g. https://127.0.0.1:8443")
	f.StringVar(&cfg.BundleFile, "bundle", "", "PEM file of the trust domain's roots (the server's bundle.pem): bootstrap trust")
	f.StringVar(&cfg.JoinToken, "join-token", "", "one-time join token naming this agent's SPIFFE ID (visible in ps: prefer the "+joinTokenEnv+" environment variable)")
	f.StringVar(&cfg.K8sTokenFile, "k8s-token-file", "", "projected service-account token file (Kubernetes attestation)")
	f.StringVar(&cfg.SocketPath, "socket", "", "unix socket path of the Workload API")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	f.StringVar(&logFormat, "log-format", "auto", "log format: json, text, auto (text on a terminal)")
	return cmd
}
