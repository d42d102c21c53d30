package agent

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// Limits on Workload API requests.
const (
	maxAudiences   = 8
	maxAudienceLen = 512
	maxTokenLen    = 16 << 10
)

// Public error messages of the Workload API (SPIRE's wording).
var (
	errNoHeader   = status.Error(codes.InvalidArgument, "security header missing from request")
	errNoIdentity = status.Error(codes.PermissionDenied, "no identity issued")
)

// workloadAPI implements SpiffeWorkloadAPI over the agent's cache.
type workloadAPI struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	a *Agent
}

var _ workload.SpiffeWorkloadAPIServer = (*workloadAPI)(nil)

// maxStreamsPerConnection bounds what one local caller may hold open.
const maxStreamsPerConnection = 32

func (a *Agent) newGRPCServer() *grpc.Server {
	srv := grpc.NewServer(
		grpc.Creds(&peerCredentials{attestor: a.attestor, logger: a.cfg.Logger, limits: newConnLimits(maxConnections, maxConnectionsPerCaller)}),
		grpc.MaxRecvMsgSize(maxRequestBytes),
		// Local callers are not trusted to be frugal: a client of the
		// Workload API needs a handful of streams.
		grpc.MaxConcurrentStreams(maxStreamsPerConnection),
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if !hasSecurityHeader(ctx) {
				return nil, errNoHeader
			}
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if !hasSecurityHeader(ss.Context()) {
				return errNoHeader
			}
			return h(srv, ss)
		}),
	)
	workload.RegisterSpiffeWorkloadAPIServer(srv, &workloadAPI{a: a})
	return srv
}

// stopServer stops gracefully, then forcibly: attached streams never end on
// their own.
func (a *Agent) stopServer(srv *grpc.Server) {
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		srv.Stop()
		<-done
	}
}

// hasSecurityHeader reports whether the request carries exactly
// `workload.spiffe.io: true`, as the Workload API specification requires.
func hasSecurityHeader(ctx context.Context) bool {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return false
	}
	v := md.Get("workload.spiffe.io")
	return len(v) == 1 && v[0] == "true"
}

// caller returns the attested selectors of the caller, or a status error.
func caller(ctx context.Context) (selectorSet, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Internal, "no peer information")
	}
	info, ok := p.AuthInfo.(peerInfo)
	if !ok {
		return nil, status.Error(codes.Internal, "caller was not attested")
	}
	if info.Err != nil {
		return nil, status.Error(codes.PermissionDenied, "could not attest caller")
	}
	return newSelectorSet(info.Selectors), nil
}

// FetchX509SVID streams the caller's X.509-SVIDs and updates.
func (w *workloadAPI) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	return watch(stream.Context(), w.a, w.a.x509SVIDResponse, stream.Send)
}

// FetchX509Bundles streams the X.509 bundles and updates.
func (w *workloadAPI) FetchX509Bundles(_ *workload.X509BundlesRequest, stream grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	return watch(stream.Context(), w.a, w.a.x509BundlesResponse, stream.Send)
}

// FetchJWTBundles streams the JWT bundles and updates.
func (w *workloadAPI) FetchJWTBundles(_ *workload.JWTBundlesRequest, stream grpc.ServerStreamingServer[workload.JWTBundlesResponse]) error {
	return watch(stream.Context(), w.a, w.a.jwtBundlesResponse, stream.Send)
}

// watch sends build's response whenever it changes, until the caller leaves
// or stops matching any entry.
func watch[T any](ctx context.Context, a *Agent, build func(selectorSet) (*T, string, bool), send func(*T) error) error {
	sel, err := caller(ctx)
	if err != nil {
		return err
	}
	sub := a.subscribe()
	defer a.unsubscribe(sub)
	last := ""
	for {
		resp, fp, matched := build(sel)
		if !matched {
			return errNoIdentity
		}
		if resp != nil && fp != last {
			if err := send(resp); err != nil {
				return err
			}
			last = fp
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-sub.ch:
		}
	}
}

// x509SVIDResponse builds the caller's X.509-SVID response: nil while no
// valid SVID is held yet; matched is false when the caller matches no entry.
func (a *Agent) x509SVIDResponse(s selectorSet) (resp *workload.X509SVIDResponse, fp string, matched bool) {
	now := a.cfg.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	es := a.matchingLocked(s)
	if len(es) == 0 {
		return nil, "", false
	}
	if a.bundle.jwt == nil {
		return nil, "", true
	}
	var b strings.Builder
	b.WriteString(strconv.FormatUint(a.bundle.gen, 10))
	resp = &workload.X509SVIDResponse{}
	for _, e := range es {
		if e.svid == nil || !now.Before(e.svid.notAfter) {
			continue
		}
		resp.Svids = append(resp.Svids, &workload.X509SVID{
			SpiffeId:    e.id.String(),
			X509Svid:    e.svid.chainDER,
			X509SvidKey: e.svid.keyDER,
			Bundle:      a.bundle.x509DER,
		})
		b.WriteByte(',')
		b.WriteString(strconv.FormatUint(e.svid.gen, 10))
	}
	if len(resp.Svids) == 0 {
		return nil, "", true
	}
	resp.FederatedBundles = a.federatedX509Locked()
	return resp, b.String(), true
}

func (a *Agent) x509BundlesResponse(s selectorSet) (*workload.X509BundlesResponse, string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.matchingLocked(s)) == 0 {
		return nil, "", false
	}
	if a.bundle.jwt == nil {
		return nil, "", true
	}
	bundles := map[string][]byte{a.td.IDString(): a.bundle.x509DER}
	for td, fb := range a.bundle.fed {
		if len(fb.x509DER) > 0 {
			bundles[td.IDString()] = fb.x509DER
		}
	}
	return &workload.X509BundlesResponse{Bundles: bundles}, strconv.FormatUint(a.bundle.gen, 10), true
}

func (a *Agent) jwtBundlesResponse(s selectorSet) (*workload.JWTBundlesResponse, string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.matchingLocked(s)) == 0 {
		return nil, "", false
	}
	if a.bundle.jwt == nil {
		return nil, "", true
	}
	bundles := map[string][]byte{a.td.IDString(): a.bundle.jwtJSON}
	for td, fb := range a.bundle.fed {
		if fb.jwtJSON != nil {
			bundles[td.IDString()] = fb.jwtJSON
		}
	}
	return &workload.JWTBundlesResponse{Bundles: bundles}, strconv.FormatUint(a.bundle.gen, 10), true
}

// FetchJWTSVID returns JWT-SVIDs for the audience: for the requested SPIFFE
// ID, or for every identity the caller matches.
func (w *workloadAPI) FetchJWTSVID(ctx context.Context, req *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	if err := checkAudience(req.Audience); err != nil {
		return nil, err
	}
	var want string
	if req.SpiffeId != "" {
		id, err := spiffeid.FromString(req.SpiffeId)
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, "invalid requested SPIFFE ID")
		}
		want = id.String()
	}
	sel, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	w.a.mu.Lock()
	es := w.a.matchingLocked(sel)
	var ids []string
	for _, e := range es {
		if want == "" || e.id.String() == want {
			ids = append(ids, e.id.String())
		}
	}
	w.a.mu.Unlock()
	if len(es) == 0 {
		return nil, errNoIdentity
	}
	if len(ids) == 0 {
		return nil, status.Errorf(codes.PermissionDenied, "no identity issued for %q", want)
	}
	resp := &workload.JWTSVIDResponse{}
	for _, id := range ids {
		tok, err := w.a.jwtSVID(ctx, id, req.Audience)
		if err != nil {
			w.a.cfg.Logger.Warn("agent: JWT-SVID unavailable", "spiffe_id", id, "error", err.Error())
			if errors.Is(err, ErrRejected) {
				return nil, status.Errorf(codes.PermissionDenied, "JWT-SVID for %q refused by the server", id)
			}
			return nil, status.Errorf(codes.Unavailable, "could not fetch JWT-SVID for %q", id)
		}
		resp.Svids = append(resp.Svids, &workload.JWTSVID{SpiffeId: id, Svid: tok})
	}
	return resp, nil
}

func checkAudience(aud []string) error {
	if len(aud) == 0 {
		return status.Error(codes.InvalidArgument, "audience must be specified")
	}
	if len(aud) > maxAudiences {
		return status.Errorf(codes.InvalidArgument, "at most %d audiences", maxAudiences)
	}
	for _, x := range aud {
		if x == "" || len(x) > maxAudienceLen {
			return status.Error(codes.InvalidArgument, "invalid audience")
		}
	}
	return nil
}

// ValidateJWTSVID validates a JWT-SVID against the JWT bundle of its trust
// domain (ours or a federated one) and returns its claims.
func (w *workloadAPI) ValidateJWTSVID(ctx context.Context, req *workload.ValidateJWTSVIDRequest) (*workload.ValidateJWTSVIDResponse, error) {
	if req.Audience == "" {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	if req.Svid == "" {
		return nil, status.Error(codes.InvalidArgument, "svid must be specified")
	}
	if len(req.Svid) > maxTokenLen || len(req.Audience) > maxAudienceLen {
		return nil, status.Error(codes.InvalidArgument, "request too large")
	}
	sel, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	w.a.mu.Lock()
	matched := len(w.a.matchingLocked(sel)) > 0
	var bundles *jwtbundle.Set
	if w.a.bundle.jwt != nil {
		bundles = w.a.jwtBundlesLocked()
	}
	w.a.mu.Unlock()
	if !matched {
		return nil, errNoIdentity
	}
	if bundles == nil {
		return nil, status.Error(codes.Unavailable, "no JWT bundle yet")
	}
	svid, err := validateJWT(req.Svid, req.Audience, bundles)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	claims, err := structpb.NewStruct(svid.Claims)
	if err != nil {
		return nil, status.Error(codes.Internal, "could not encode claims")
	}
	return &workload.ValidateJWTSVIDResponse{SpiffeId: svid.ID.String(), Claims: claims}, nil
}

// validateJWT verifies token's signature with bundle and its audience and
// expiry (go-spiffe's jwtsvid does the work).
func validateJWT(token, audience string, bundle jwtbundle.Source) (*jwtsvid.SVID, error) {
	svid, err := jwtsvid.ParseAndValidate(token, bundle, []string{audience})
	if err != nil {
		return nil, fmt.Errorf("agent: invalid JWT-SVID: %w", err)
	}
	return svid, nil
}
