package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"postern.dev/postern/internal/introspect"
	"postern.dev/postern/internal/policy"
	"postern.dev/postern/internal/proxy"
	"postern.dev/postern/internal/token"
)

// Errors of user authentication that are not the token's fault: the answer
// is 503, not 401.
var (
	errIntrospectUnavailable = errors.New("gateway: the identity provider's introspection endpoint is unavailable")
	errInactive              = errors.New("gateway: the token is neither a valid JWT nor an active token of a trusted issuer")
	errIntrospectLimited     = errors.New("gateway: too many unknown opaque tokens from this client")
	errUntrusted             = fmt.Errorf("%w: the token's issuer is not trusted", token.ErrIssuer)
)

// maxSecretBytes bounds an introspection client secret file.
const maxSecretBytes = 4 << 10

// issuer is one TrustedIssuer as the gateway uses it.
type issuer struct {
	res        policy.TrustedIssuer
	verifier   *token.Verifier     // nil without keys (introspection only)
	remote     *token.RemoteKeySet // nil unless the keys are fetched
	aud        map[string]bool
	introspect *introspect.Client // nil without introspection
}

// issuers verifies user tokens against the TrustedIssuers.
type issuers struct {
	byIss    map[string]*issuer
	opaque   []*issuer // those that introspect, in name order
	remotes  []*token.RemoteKeySet
	verdicts *proxy.VerdictCache
	// misses limits, per client address, the opaque tokens that must be
	// introspected (not answered from the cache): the rate limit keys on
	// the verified user, which made-up tokens never become, and each one
	// would otherwise cost a request to the identity provider.
	misses *limiter
}

// Limits on introspection requests caused by one client address.
const (
	introspectMissesPerSecond = 10
	introspectMissesBurst     = 20
)

// principal is an authenticated user.
type principal struct {
	claims *token.Claims
	m      map[string]any // claims.Map()
}

type issuerOptions struct {
	skew   time.Duration
	now    func() time.Time
	logger *slog.Logger
}

// loadIssuers reads the TrustedIssuers of dir (other kinds are parsed, so a
// broken file is an error, then ignored) and builds their verifiers and
// introspection clients. A relative introspection clientSecretFile is
// resolved against dir.
func loadIssuers(dir string, o issuerOptions) (*issuers, error) {
	set, err := policy.LoadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("gateway: issuers: %w", err)
	}
	e, err := policy.Compile(&policy.Set{TrustedIssuers: set.TrustedIssuers}, policy.CompileOptions{})
	if err != nil {
		return nil, fmt.Errorf("gateway: issuers: %w", err)
	}
	tis := e.TrustedIssuers() // name order, duplicates refused
	if len(tis) == 0 {
		return nil, fmt.Errorf("gateway: issuers: %s holds no TrustedIssuer", dir)
	}
	s := &issuers{byIss: map[string]*issuer{}}
	for _, ti := range tis {
		is := &issuer{res: ti, aud: map[string]bool{}}
		for _, a := range ti.Audiences {
			is.aud[a] = true
		}
		var keys token.KeySet
		switch {
		case ti.JWKS != nil:
			if keys, err = token.NewStaticKeySet(*ti.JWKS); err != nil {
				return nil, fmt.Errorf("gateway: trusted issuer %q: %w", ti.Name, err)
			}
		case ti.JWKSURI != "" || ti.Discovery:
			rc := token.RemoteConfig{JWKSURI: ti.JWKSURI, Now: o.now, Logger: o.logger}
			if ti.JWKSURI == "" {
				rc.DiscoveryIssuer = ti.Issuer
			}
			if is.remote, err = token.NewRemoteKeySet(rc); err != nil {
				return nil, fmt.Errorf("gateway: trusted issuer %q: %w", ti.Name, err)
			}
			keys = is.remote
			s.remotes = append(s.remotes, is.remote)
		}
		if keys != nil {
			algs, err := token.ParseAlgorithms(ti.Algorithms)
			if err != nil {
				return nil, fmt.Errorf("gateway: trusted issuer %q: %w", ti.Name, err)
			}
			is.verifier, err = token.NewVerifier(token.VerifierConfig{
				Issuer: ti.Issuer, Keys: keys, Algorithms: algs, Leeway: o.skew, Now: o.now,
			})
			if err != nil {
				return nil, fmt.Errorf("gateway: trusted issuer %q: %w", ti.Name, err)
			}
		}
		if in := ti.Introspection; in != nil {
			path := in.ClientSecretFile
			if !filepath.IsAbs(path) {
				path = filepath.Join(dir, path)
			}
			secret, err := readSecret(path)
			if err != nil {
				return nil, fmt.Errorf("gateway: trusted issuer %q: introspection client secret: %w", ti.Name, err)
			}
			is.introspect, err = introspect.New(introspect.Config{
				Endpoint: in.Endpoint, ClientID: in.ClientID, ClientSecret: secret, Issuer: ti.Issuer, Now: o.now,
			})
			if err != nil {
				return nil, fmt.Errorf("gateway: trusted issuer %q: %w", ti.Name, err)
			}
			s.opaque = append(s.opaque, is)
		}
		if is.verifier == nil && is.introspect == nil {
			return nil, fmt.Errorf("gateway: trusted issuer %q has neither keys nor an introspection endpoint", ti.Name)
		}
		s.byIss[ti.Issuer] = is
	}
	s.verdicts, err = proxy.NewVerdictCache(proxy.VerdictCacheConfig{Verifier: s, Leeway: o.skew, Now: o.now})
	if err != nil {
		return nil, err
	}
	if len(s.opaque) > 0 {
		now := o.now
		if now == nil {
			now = time.Now
		}
		s.misses = newLimiter(&RateLimitConfig{RequestsPerSecond: introspectMissesPerSecond, Burst: introspectMissesBurst, MaxClients: defaultMaxClients}, now)
	}
	return s, nil
}

func readSecret(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSecretBytes+1))
	if err != nil {
		return "", err
	}
	if len(b) > maxSecretBytes {
		return "", fmt.Errorf("%s is larger than %d bytes", path, maxSecretBytes)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return s, nil
}

// run keeps the remote key sets fresh until ctx is done.
func (s *issuers) run(ctx context.Context) {
	for _, r := range s.remotes {
		go r.Run(ctx)
	}
}

// ready reports whether every remote key set has loaded keys.
func (s *issuers) ready() bool {
	for _, r := range s.remotes {
		if !r.Ready() {
			return false
		}
	}
	return true
}

// Verify verifies a JWT of a trusted issuer: signature with the issuer's
// keys and allowed algorithms, iss, exp, nbf, iat, an audience the issuer
// is trusted for, and a sub. It is the verifier behind the verdict cache.
func (s *issuers) Verify(ctx context.Context, raw string) (*token.Claims, error) {
	p, err := token.Parse(raw, token.DefaultMaxSize)
	if err != nil {
		return nil, err
	}
	is := s.byIss[p.UnverifiedIssuer()]
	if is == nil || is.verifier == nil {
		return nil, errUntrusted
	}
	claims, err := is.verifier.VerifyParsed(ctx, p)
	if err != nil {
		return nil, err
	}
	if !is.accepts(claims) {
		return nil, fmt.Errorf("%w: the token is not addressed to an audience this gateway accepts", token.ErrAudience)
	}
	if claims.Subject == "" {
		return nil, fmt.Errorf("%w: no sub claim", token.ErrMalformed)
	}
	return claims, nil
}

func (is *issuer) accepts(c *token.Claims) bool {
	for _, a := range c.Audience {
		if is.aud[a] {
			return true
		}
	}
	return false
}

// authenticate verifies raw: as a JWT (verdicts cached until it expires),
// or, when it is not one and some issuer introspects, by RFC 7662
// introspection (results cached by the introspection clients). The first
// introspecting issuer, in name order, that says the token is active
// vouches for it. A token bound to a certificate (cnf) is refused: users
// present none to the gateway.
func (s *issuers) authenticate(ctx context.Context, raw, client string) (*principal, error) {
	v, err := s.verdicts.Verify(ctx, raw, nil)
	if err == nil {
		return &principal{claims: v.Claims, m: v.Map}, nil
	}
	if !errors.Is(err, token.ErrMalformed) || len(s.opaque) == 0 {
		return nil, err
	}
	// Only what is not a JWT at all is asked about, as the STS does: a JWT
	// whose claims are malformed stays refused.
	if _, perr := token.Parse(raw, token.DefaultMaxSize); perr == nil || !errors.Is(perr, token.ErrMalformed) {
		return nil, err
	}
	var unavailable bool
	for _, is := range s.opaque {
		if !is.res.Introspection.Accepts(raw) {
			continue // another issuer's token: never shown to this one
		}
		if s.misses != nil && !is.introspect.Cached(raw) {
			if ok, _ := s.misses.allow(client); !ok {
				return nil, errIntrospectLimited
			}
		}
		claims, err := is.introspect.Introspect(ctx, raw)
		if errors.Is(err, introspect.ErrUnavailable) {
			unavailable = true
			continue
		}
		if err != nil {
			continue
		}
		if !is.accepts(claims) {
			return nil, fmt.Errorf("%w: the token is not addressed to an audience this gateway accepts", token.ErrAudience)
		}
		// A sender-constrained token (a certificate, or a DPoP key) cannot
		// be used by whoever merely holds it, as the JWT path refuses too.
		if err := claims.CheckBinding(nil); err != nil {
			return nil, err
		}
		return &principal{claims: claims, m: claims.Map()}, nil
	}
	if unavailable {
		return nil, errIntrospectUnavailable
	}
	return nil, errInactive
}
