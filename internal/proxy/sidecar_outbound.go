package proxy

import (
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"postern.dev/postern/internal/exchange"
)

// newOutbound builds the outbound half: an exchange client for the STS
// (mutual TLS with the sidecar's SVID, the STS checked by its SPIFFE ID)
// and the outbound handler over the sidecar's context store.
func (s *Sidecar) newOutbound(td spiffeid.TrustDomain, opts SidecarOptions) (*Outbound, error) {
	stsID, err := spiffeid.FromString(s.cfg.STS.SPIFFEID)
	if err != nil {
		return nil, err
	}
	ex, err := exchange.New(exchange.Config{
		TokenEndpoint: s.cfg.STS.TokenEndpoint,
		Roots:         s.identity,
		TrustDomain:   td,
		ServerID:      stsID,
		SVID:          s.identity,
		Now:           opts.Now,
		Logger:        opts.Logger,
	})
	if err != nil {
		return nil, err
	}
	s.closers = append(s.closers, ex.Close)
	return NewOutbound(OutboundOptions{
		Config:      s.cfg.Outbound,
		Contexts:    s.contexts,
		Exchange:    ex,
		SVID:        s.identity,
		Bundle:      s.identity,
		Registerer:  s.registry,
		Logger:      opts.Logger,
		Now:         opts.Now,
		Revocations: s.revoked,
	})
}
