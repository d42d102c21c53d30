package cli

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"postern.dev/postern/internal/server"
	"postern.dev/postern/internal/store"
	"postern.dev/postern/internal/sts"
)

// serverFlags are the flags every command that opens the control plane's
// state shares.
type serverFlags struct {
	config  string
	dataDir string
	listen  string
}

func (f *serverFlags) register(cmd *cobra.Command, withListen bool) {
	cmd.Flags().StringVarP(&f.config, "config", "c", "", "server configuration file (YAML)")
	cmd.Flags().StringVar(&f.dataDir, "data-dir", "", "data directory (overrides the config file)")
	if withListen {
		cmd.Flags().StringVar(&f.listen, "listen", "", "HTTPS listen address, e.g. 127.0.0.1:8443 (overrides the config file)")
	}
}

// load reads the configuration file (if any) and applies flag overrides.
// Without a file, a data dir is enough for offline commands, which find the
// trust domain in <data-dir>/server.yaml if it was written there.
func (f *serverFlags) load() (*server.Config, error) {
	var cfg *server.Config
	if f.config != "" {
		c, err := server.LoadConfig(f.config)
		if err != nil {
			return nil, err
		}
		cfg = c
	} else {
		if f.dataDir == "" {
			return nil, fmt.Errorf("--config or --data-dir is required")
		}
		c, err := server.LoadDataDirConfig(f.dataDir)
		if err != nil {
			return nil, err
		}
		cfg = c
	}
	if f.dataDir != "" {
		cfg.DataDir = f.dataDir
	}
	if f.listen != "" {
		cfg.Listen = f.listen
	}
	return cfg, nil
}

// open loads the configuration and opens the control plane's state for an
// offline operator command, logging only warnings to stderr. The caller
// closes the state.
func (f *serverFlags) open(e *env) (*server.State, *slog.Logger, error) {
	cfg, err := f.load()
	if err != nil {
		return nil, nil, err
	}
	// An offline command works on a control plane that exists: pointed at
	// a data dir no server has started on (a typo in --config, say) it must
	// not quietly create a new one and report success on it.
	if _, err := os.Stat(filepath.Join(cfg.DataDir, "instance.json")); err != nil {
		return nil, nil, fmt.Errorf("%s is not an initialised postern data dir (no instance.json): start the server on it first, or check --config/--data-dir", cfg.DataDir)
	}
	logger := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	st, err := server.Open(e.ctx, cfg, logger)
	if err != nil {
		return nil, nil, err
	}
	return st, logger, nil
}

func newServerCmd(e *env) *cobra.Command {
	var (
		flags serverFlags
		logs  logFlags
	)
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the control plane: token service (STS) and certificate authority",
		Long: `Run the control plane over HTTPS: the OAuth 2.0 token service (token
exchange, client credentials, jwt-bearer; introspection, revocation, JWKS,
discovery) and the X.509-SVID certificate authority.

On first start it creates its CA and signing keys in the data dir, issues its
own serving certificate and writes the trust bundle to <data-dir>/bundle.pem,
so that "curl --cacert <data-dir>/bundle.pem" works. Resources (Workload,
TrustedIssuer, ExchangePolicy) are loaded from the configured directory and
reloaded when it changes; a broken file is reported and the last good set
stays in force.`,
		Example: `  postern server --config examples/quickstart/server.yaml`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if flags.config == "" {
				return fmt.Errorf("--config is required")
			}
			cfg, err := flags.load()
			if err != nil {
				return err
			}
			logger, err := logs.logger(cmd, e, cfg.Log.Level, cfg.Log.Format)
			if err != nil {
				return err
			}
			srv, err := server.New(e.ctx, cfg, logger, logger.With(slog.String("log", "audit")))
			if err != nil {
				return err
			}
			if err := srv.Run(e.ctx); err != nil {
				return err
			}
			logger.Info("postern server stopped")
			return nil
		},
	}
	flags.register(cmd, true)
	logs.register(cmd)
	cmd.AddCommand(newRotateKeysCmd(e), newClientSecretCmd(e), newAgentsCmd(e), newEvictAgentCmd(e))
	return cmd
}

func newRotateKeysCmd(e *env) *cobra.Command {
	var (
		flags     serverFlags
		revokeOld bool
	)
	cmd := &cobra.Command{
		Use:   "rotate-keys",
		Short: "Rotate the token signing key now",
		Long: `Make the next signing key current at once and create a new next key.
With --revoke-old the previous keys leave the JWKS at once, so every token they
signed stops verifying (use it for a suspected key compromise). Running servers
sharing the store pick the change up within 30 seconds.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, logger, err := flags.open(e)
			if err != nil {
				return err
			}
			defer st.Close()
			km, err := st.KeyManager(e.ctx, logger)
			if err != nil {
				return err
			}
			if err := km.Rotate(e.ctx, revokeOld); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "signing key rotated; current key id %s\n", km.Current().ID)
			if revokeOld {
				fmt.Fprintln(e.stdout, "previous keys removed from the JWKS: tokens they signed no longer verify")
			}
			return nil
		},
	}
	flags.register(cmd, false)
	cmd.Flags().BoolVar(&revokeOld, "revoke-old", false, "drop the previous keys from the JWKS at once")
	return cmd
}

func newClientSecretCmd(e *env) *cobra.Command {
	var (
		flags    serverFlags
		clientID string
		ttl      time.Duration
	)
	cmd := &cobra.Command{
		Use:   "client-secret",
		Short: "Generate a client secret for client_secret_basic",
		Long: `Generate a random client secret for a Workload whose clientAuthentication
lists client_secret_basic (for clients outside the mesh). The secret is printed
once; the server stores only a keyed hash of it. Generating a new secret
replaces the old one.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if clientID == "" {
				return fmt.Errorf("--client-id is required")
			}
			cid, err := spiffeid.FromString(clientID)
			if err != nil {
				return fmt.Errorf("--client-id %q: a client is a Workload, named by its SPIFFE ID: %w", clientID, err)
			}
			st, _, err := flags.open(e)
			if err != nil {
				return err
			}
			defer st.Close()
			if cid.TrustDomain() != st.TrustDomain {
				return fmt.Errorf("--client-id %s is not in trust domain %s", cid, st.TrustDomain)
			}
			var b [32]byte
			if _, err := rand.Read(b[:]); err != nil {
				return err
			}
			secret := base64.RawURLEncoding.EncodeToString(b[:])
			rec := store.ClientSecret{ClientID: clientID, Hash: sts.HashSecret(st.ClientSecretKey(), secret), CreatedAt: time.Now()}
			if ttl > 0 {
				rec.ExpiresAt = rec.CreatedAt.Add(ttl)
			}
			if err := st.Store.PutClientSecret(e.ctx, rec); err != nil {
				return err
			}
			fmt.Fprintln(e.stdout, secret)
			return nil
		},
	}
	flags.register(cmd, false)
	cmd.Flags().StringVar(&clientID, "client-id", "", "the Workload's SPIFFE ID")
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "secret lifetime (0: does not expire)")
	return cmd
}

func newAgentsCmd(e *env) *cobra.Command {
	var flags serverFlags
	cmd := &cobra.Command{
		Use:   "agents",
		Short: "List the node agents the server attested",
		Long: `List the node agents registered in the store: their SPIFFE ID, how they
attested, when, and when their newest SVID expires. An agent's certificates
are accepted only while it is listed here.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, _, err := flags.open(e)
			if err != nil {
				return err
			}
			defer st.Close()
			agents, err := st.Store.Agents(e.ctx)
			if err != nil {
				return err
			}
			if len(agents) == 0 {
				fmt.Fprintln(e.stdout, "no agents are registered")
				return nil
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SPIFFE ID\tMETHOD\tATTESTED\tSVID EXPIRES")
			for _, a := range agents {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", a.SPIFFEID, a.Method, a.AttestedAt.UTC().Format(time.RFC3339), a.ExpiresAt.UTC().Format(time.RFC3339))
			}
			return tw.Flush()
		},
	}
	flags.register(cmd, false)
	return cmd
}

func newEvictAgentCmd(e *env) *cobra.Command {
	var (
		flags serverFlags
		id    string
	)
	cmd := &cobra.Command{
		Use:   "evict-agent",
		Short: "Evict a node agent: its certificates stop working at once",
		Long: `Remove a node agent's registration from the store, for an operator
responding to a compromised or retired node. Every server sharing the store
refuses the agent's certificates from the next request on: it can neither
renew nor obtain SVIDs for workloads. It can come back only by attesting
again (a new join token, or a Kubernetes token of a listed service account:
remove the account from attestation.k8s.agentServiceAccounts, or delete the
pod, to keep it out).`,
		Example: `  postern server evict-agent --data-dir .postern-quickstart --spiffe-id spiffe://quickstart.local/postern/agent/node-1`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if id == "" {
				return fmt.Errorf("--spiffe-id is required")
			}
			st, _, err := flags.open(e)
			if err != nil {
				return err
			}
			defer st.Close()
			if _, err := st.Store.Agent(e.ctx, id); errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("no agent %s is registered (postern server agents lists them)", id)
			} else if err != nil {
				return err
			}
			if err := st.Store.DeleteAgent(e.ctx, id); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "agent %s evicted\n", id)
			return nil
		},
	}
	flags.register(cmd, false)
	cmd.Flags().StringVar(&id, "spiffe-id", "", "the agent's SPIFFE ID (spiffe://<td>/postern/agent/...)")
	return cmd
}
