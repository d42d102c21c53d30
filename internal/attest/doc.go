// Package attest proves what a workload is before it gets an SVID. It
// provides three attestation methods and the selectors they produce:
//
//   - join tokens: single-use, expiring random tokens created for one
//     explicit SPIFFE ID and kept in the store only as a SHA-256 hash
//     (CreateJoinToken, ConsumeJoinToken);
//   - Kubernetes projected service-account tokens (PSAT), verified with
//     package token against the cluster's OIDC issuer, by discovery or a
//     JWKS file (K8sAttestor);
//   - unix peer credentials of the process on the other end of a unix
//     socket (SO_PEERCRED), with its executable's path and SHA-256
//     (UnixAttestor, PeerFromConn).
//
// Selectors are (type, value) pairs such as {"unix", "uid:1000"} or
// {"k8s", "ns:prod"}; Matches decides whether a Workload's selectors are all
// among an attested workload's.
//
// Every refusal wraps ErrAttestation. Its text is the one public message;
// the wrapped cause says why and is meant for logs. Failures that are not a
// verdict on the caller (the store or the cluster's key set unavailable) do
// not wrap ErrAttestation, so callers can answer "try again" instead of
// "denied".
//
// The package serves nothing: package nodeapi and package agent call it. It
// does not decide which SPIFFE ID a Workload maps to beyond the defaults
// documented here, and it does not issue certificates.
package attest
