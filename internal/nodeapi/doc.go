// Package nodeapi is the node API of the control plane: the HTTPS endpoints
// under /node/v1/ that node agents (and sidecars without an agent) call to
// attest, to obtain and renew X.509-SVIDs, to list the Workloads they serve
// and to obtain JWT-SVIDs for them, and the Go Client that calls them.
//
// # Endpoints
//
//   - POST /node/v1/attest: a join token or a Kubernetes projected
//     service-account token (PSAT) and a CSR in, an X.509-SVID for the
//     attested identity out. No client certificate is needed.
//   - POST /node/v1/renew: mutual TLS with a current X.509-SVID of this trust
//     domain; a new SVID for the same identity.
//   - GET /node/v1/workloads, POST /node/v1/x509svids, POST /node/v1/jwtsvid:
//     mutual TLS with an agent's SVID (spiffe://<td>/postern/agent/...); only
//     for Workloads whose agents list allows that agent.
//   - GET /node/v1/federated-bundles: mutual TLS with an agent's SVID; the
//     SPIFFE bundle of every federated trust domain, {"bundles": {"<trust
//     domain>": <bundle>}}, for the agent to serve to its workloads.
//
// Bodies are JSON of at most 64 KiB, decoded strictly (unknown fields are
// errors). Errors are {"error": code, "error_description": text} with status
// 400, 401, 403 or 503. Every issuance and every refusal is written to the
// audit log with the identity concerned; tokens and CSRs never are.
//
// # What it does not do
//
// It does not verify join tokens or PSATs itself: a JoinTokens and a
// K8sAttestor (package attest provides them) do. It does not sign: the CA
// and the signing keys are given to it. A CSR's subject and SANs are
// ignored: an SVID carries only the identity the caller proved.
package nodeapi
