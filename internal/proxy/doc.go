// Package proxy is the data plane shared by postern sidecar and postern
// gateway: the inbound chain (mutual TLS with SPIFFE authorization, one
// bearer token verified once and cached until it expires, the
// AuthorizationPolicy engine, header hygiene, forwarding to the local
// application) and the outbound chain (plain HTTP from the application,
// per-hop token exchange with a cache, mutual TLS to upstreams whose SPIFFE
// ID is checked, keep-alive pools).
//
// It does not issue anything: tokens come from the STS (package exchange),
// certificates from a SPIFFE source (the Workload API or files).
package proxy
