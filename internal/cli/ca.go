package cli

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"postern.dev/postern/internal/ca"
)

func newCACmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Issue workload certificates and show the trust bundle",
	}
	cmd.AddCommand(newCAIssueCmd(e), newCABundleCmd(e), newCARotateCmd(e), newCAJoinTokenCmd(e))
	return cmd
}

func newCAIssueCmd(e *env) *cobra.Command {
	var (
		flags    serverFlags
		id, out  string
		ttl      time.Duration
		dnsNames []string
	)
	cmd := &cobra.Command{
		Use:   "issue",
		Short: "Issue an X.509-SVID from the server's CA (for testing and bootstrap)",
		Long: `Generate a P-256 key and issue an X.509-SVID for a SPIFFE ID from the CA in
the data dir, writing svid.pem (leaf and intermediates), svid.key and
bundle.pem to --out. The key never leaves this machine. In production,
workloads get their SVIDs from postern agent through the Workload API.`,
		Example: `  postern ca issue --data-dir .postern-quickstart --spiffe-id spiffe://quickstart.local/ns/shop/sa/gateway --out certs/gateway`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if id == "" || out == "" {
				return errors.New("--spiffe-id and --out are required")
			}
			sid, err := spiffeid.FromString(id)
			if err != nil {
				return fmt.Errorf("--spiffe-id: %w", err)
			}
			if p := sid.Path(); p == "/postern" || strings.HasPrefix(p, "/postern/") {
				// Agents trust the server by its /postern/server SVID:
				// a certificate issued here must not be able to pose as
				// the server or an agent.
				return fmt.Errorf("--spiffe-id %s is reserved for postern's own components (the server, agents), which get their certificates from the server", sid)
			}
			if ttl <= 0 {
				return fmt.Errorf("--ttl %s: must be positive", ttl)
			}
			st, logger, err := flags.open(e)
			if err != nil {
				return err
			}
			defer st.Close()
			if sid.TrustDomain() != st.TrustDomain {
				return fmt.Errorf("--spiffe-id %s is not in trust domain %s", sid, st.TrustDomain)
			}
			authority, err := st.CA(e.ctx, logger)
			if err != nil {
				return err
			}
			key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				return err
			}
			svid, err := authority.IssueX509SVID(e.ctx, ca.X509SVIDRequest{ID: sid, PublicKey: key.Public(), TTL: ttl, DNSNames: dnsNames})
			if err != nil {
				return err
			}
			return writeSVID(out, svid, key, authority.BundlePEM(), e)
		},
	}
	flags.register(cmd, false)
	cmd.Flags().StringVar(&id, "spiffe-id", "", "SPIFFE ID to issue for")
	cmd.Flags().StringVar(&out, "out", "", "output directory")
	cmd.Flags().DurationVar(&ttl, "ttl", time.Hour, "certificate lifetime")
	cmd.Flags().StringSliceVar(&dnsNames, "dns", nil, "DNS names to add as SANs")
	return cmd
}

func writeSVID(dir string, svid *ca.X509SVID, key *ecdsa.PrivateKey, bundle []byte, e *env) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var certs []byte
	for _, c := range svid.Certificates {
		certs = append(certs, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{"svid.pem", certs, 0o644},
		{"svid.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600},
		{"bundle.pem", bundle, 0o644},
	}
	for _, f := range files {
		if err := replaceFile(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	fmt.Fprintf(e.stdout, "wrote %s (expires %s), svid.key and bundle.pem to %s\n", "svid.pem", svid.NotAfter.UTC().Format(time.RFC3339), dir)
	return nil
}

// replaceFile writes data to path with exactly mode, whatever was there:
// through a temporary file in the same directory, renamed into place, so
// an existing file's looser mode or a symlink planted at path is replaced
// rather than written through, and a reader never sees half a file.
func replaceFile(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

func newCABundleCmd(e *env) *cobra.Command {
	var flags serverFlags
	cmd := &cobra.Command{
		Use:   "bundle",
		Short: "Print the trust bundle (PEM)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, logger, err := flags.open(e)
			if err != nil {
				return err
			}
			defer st.Close()
			authority, err := st.CA(e.ctx, logger)
			if err != nil {
				return err
			}
			_, err = e.stdout.Write(authority.BundlePEM())
			return err
		},
	}
	flags.register(cmd, false)
	return cmd
}

func newCARotateCmd(e *env) *cobra.Command {
	var flags serverFlags
	cmd := &cobra.Command{
		Use:   "rotate",
		Short: "Rotate the CA now: a new root signs, the old one stays in the bundle until its SVIDs expire",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, logger, err := flags.open(e)
			if err != nil {
				return err
			}
			defer st.Close()
			authority, err := st.CA(e.ctx, logger)
			if err != nil {
				return err
			}
			if err := authority.Rotate(e.ctx); err != nil {
				return err
			}
			fmt.Fprintln(e.stdout, "CA rotated; running servers pick the new root up from the store")
			return nil
		},
	}
	flags.register(cmd, false)
	return cmd
}
