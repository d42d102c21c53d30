// Package gateway is the edge of a Postern trust domain: postern gateway.
// It terminates TLS for end users (HTTP/1.1 and HTTP/2), verifies their
// OAuth/OIDC access tokens from TrustedIssuers (JWTs by signature with keys
// from an inline JWKS, a JWKS URI or OIDC discovery; opaque tokens by RFC
// 7662 introspection), routes by host and path prefix, enforces required
// scopes, AuthorizationPolicy-style conditions on the user's claims and
// per-client rate limits, then exchanges the user's token at the STS for a
// token addressed to the route's upstream and forwards the request over
// mutual TLS. The external token never goes upstream.
//
// It is built on the data plane of package proxy: the upstream leg is a
// proxy.Outbound (per-hop exchange with its cache, SPIFFE-checked mutual TLS
// pools, header hygiene), so the gateway adds only the edge-specific steps.
//
// It does not log users in (that is the identity provider's job), issue
// tokens or certificates, or discover services: upstreams are configured.
package gateway
