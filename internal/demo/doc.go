// Package demo runs the whole Postern system on loopback in one process and
// tells its story: an example OIDC identity provider, the control plane
// (postern server with an embedded store in a temporary directory), the edge
// gateway and three example services (order-processing, inventory and
// finance), each behind its own sidecar, configured from the quickstart
// example's resources and policies. Story then plays six steps (a user's
// request through the gateway, a per-hop exchange, the confused deputy
// stopped, a captured token replayed, plaintext and forged tokens refused,
// the user's session revoked and refused at the next hop),
// checking each outcome and collecting the evidence: decoded token claims,
// decision ids and HTTP statuses.
//
// It is a demonstration and an end-to-end smoke test, not a deployment: the
// identity provider mints tokens for its two demo users to anyone who asks,
// and everything it creates lives in a temporary directory removed by Close.
package demo
