package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"postern.dev/postern/internal/policy"
)

// newPolicyCmd is `postern policy lint|test|explain`: thin wrappers over
// policy.Lint, policy.RunTests and policy.Explain.
func newPolicyCmd(e *env) *cobra.Command {
	var opts policy.CompileOptions
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Lint, test and explain authorization and exchange policies",
	}
	cmd.PersistentFlags().StringVar(&opts.SelfIssuer, "self-issuer", "", `the STS issuer that "self" means in ExchangePolicy subjectIssuers`)
	cmd.PersistentFlags().StringVar(&opts.TrustDomain, "trust-domain", "", "check that every Workload belongs to this trust domain")

	lint := &cobra.Command{
		Use:   "lint DIR",
		Short: "Report every problem in a directory of resources, with file:line (exit status 1 if any)",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			err := policy.Lint(e.stdout, args[0], opts)
			var ps policy.Problems
			if errors.As(err, &ps) || errors.Is(err, policy.ErrNoResources) {
				return &exitError{code: 1}
			}
			return err
		},
	}

	test := &cobra.Command{
		Use:   "test DIR",
		Short: "Run the PolicyTest cases in a directory (exit status 1 on failure)",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			sum, err := policy.RunTests(e.stdout, args[0], opts)
			var ps policy.Problems
			switch {
			case errors.As(err, &ps), errors.Is(err, policy.ErrNoTests):
				return &exitError{code: 1}
			case err != nil:
				return err
			case sum.Failed > 0:
				return &exitError{code: 1}
			}
			return nil
		},
	}

	var (
		dir, reqFile                       string
		spec                               policy.RequestSpec
		issuer, subject, claimsJSON, scope string
		actors, headers                    []string
		noToken                            bool
	)
	explain := &cobra.Command{
		Use:   "explain --policies DIR (--request FILE | --workload ID [flags])",
		Short: "Decide a request and show the chain of reasoning",
		Args:  cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error {
			if dir == "" {
				return errors.New("--policies is required")
			}
			var req *policy.Request
			if reqFile != "" {
				data, err := readInputFile(reqFile)
				if err != nil {
					return err
				}
				if req, err = policy.ParseRequest(reqFile, data); err != nil {
					return err
				}
			} else {
				if spec.Workload == "" {
					return errors.New("--request or --workload is required")
				}
				if !noToken {
					claims := map[string]any{}
					if claimsJSON != "" {
						r, err := policy.ParseRequest("--claims", []byte("workload: x\ntoken:\n  claims: "+claimsJSON+"\n"))
						if err != nil {
							return fmt.Errorf("--claims: %w", err)
						}
						claims = r.Claims
					}
					if issuer != "" {
						claims["iss"] = issuer
					}
					if subject != "" {
						claims["sub"] = subject
					}
					if scope != "" {
						claims["scope"] = scope
					}
					spec.Token = &policy.TokenSpec{Claims: claims, Actors: actors}
				}
				if len(headers) > 0 {
					spec.Headers = map[string]string{}
					for _, h := range headers {
						k, v, ok := strings.Cut(h, "=")
						if !ok {
							return fmt.Errorf("--header %q: want name=value", h)
						}
						spec.Headers[k] = v
					}
				}
				req = spec.ToRequest()
			}
			_, err := policy.Explain(e.stdout, dir, req, opts)
			return err
		},
	}
	f := explain.Flags()
	f.StringVar(&dir, "policies", "", "directory of resources")
	f.StringVar(&reqFile, "request", "", "YAML file describing the request (workload, peer, token, method, path, host, port, headers)")
	f.StringVar(&spec.Workload, "workload", "", "SPIFFE ID of the workload being called")
	f.StringVar(&spec.Peer, "peer", "", "caller's SPIFFE ID (mTLS)")
	f.StringVar(&spec.Method, "method", "GET", "HTTP method")
	f.StringVar(&spec.Path, "path", "/", "request path")
	f.StringVar(&spec.Host, "host", "", "Host header")
	f.IntVar(&spec.Port, "port", 0, "destination port")
	f.StringVar(&issuer, "issuer", "", "token iss")
	f.StringVar(&subject, "subject", "", "token sub")
	f.StringVar(&scope, "scope", "", "token scope (space-delimited)")
	f.StringVar(&claimsJSON, "claims", "", `more token claims as a JSON object, e.g. '{"email": "a@b"}'`)
	f.StringArrayVar(&actors, "actor", nil, "act chain subject, newest first (repeatable)")
	f.StringArrayVar(&headers, "header", nil, "request header name=value (repeatable)")
	f.BoolVar(&noToken, "no-token", false, "the request carries no token")

	cmd.AddCommand(lint, test, explain)
	return cmd
}
