// Package exchange is the sidecar's client of the token service: it obtains
// per-hop tokens by RFC 8693 token exchange (on behalf of a user) or by the
// client-credentials grant (for the workload itself), authenticating to the
// STS with the workload's own X.509-SVID (tls_client_auth), so every token it
// gets is bound to that certificate.
//
// Tokens are cached per (subject token, audience, own certificate) until a
// configurable fraction of their lifetime (80% by default); concurrent
// identical requests collapse into one STS call; and while the STS cannot be
// reached, a cached token that has not expired keeps being served.
//
// It does not verify or parse the tokens it receives (the STS is trusted over
// mutual TLS; the next hop verifies them) and it does not decide anything:
// refusals come from the STS's ExchangePolicy and are returned as *Error.
package exchange
