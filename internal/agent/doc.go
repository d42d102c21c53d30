// Package agent is the Postern node agent: it attests itself to `postern
// server` (join token or Kubernetes projected service-account token), keeps
// its own X.509-SVID fresh, and serves the SPIFFE Workload API
// (SpiffeWorkloadAPI over gRPC on a unix socket) to local workloads, each
// attested by its unix peer credentials.
//
// The agent holds, per Workload entry the server lets it serve, a private key
// it generated and the X.509-SVID the server signed for it; it renews each at
// half-life (with jitter, exponential backoff on server errors) and streams
// every rotation and bundle change to the attached callers whose selectors
// match. JWT-SVIDs are fetched on demand and cached per (SPIFFE ID, audience
// set) until half their lifetime. While the server is unreachable the agent
// keeps serving what it holds until it expires.
//
// Federated trust domains' bundles (from the server's Federation resources)
// are fetched with the trust bundle and served beside it: in
// FetchX509Bundles, FetchJWTBundles, the federated_bundles of
// FetchX509SVID, and for ValidateJWTSVID. Every attached workload gets every
// federated bundle.
//
// It does not serve CRLs or WIT-SVIDs, and it does not implement attestation itself: the peer
// attestor (internal/attest) and the node API client (internal/nodeapi) are
// reached through the small PeerAttestor and Server interfaces.
package agent
