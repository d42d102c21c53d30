// Package ca is the trust domain's X.509 certificate authority. It issues
// X.509-SVIDs that follow the SPIFFE X.509-SVID specification, keeps the
// signing authorities (self-signed ECDSA P-256 roots, or one intermediate
// imported from the organisation's own PKI) in a Store with their private
// keys sealed by a Sealer, rotates self-signed roots with overlap, and
// publishes the trust bundle as PEM, as a go-spiffe x509bundle and in the
// SPIFFE bundle format (with the trust domain's JWT keys) for federation.
//
// # Authorities and their life
//
// Every authority has an activation time. The authority that signs at a
// given instant is, among those that may sign in the configured mode, the one
// with the latest activation time not after that instant (ties: the larger
// id), so replicas sharing a store agree without coordination. Every
// authority that has not passed its publication end is in the bundle: the
// next root (published before it signs), the current one, and retired ones.
//
// Self-signed roots live Config.CATTL (30 days by default). At half of the
// current root's life Run prepares the next root and publishes it; it starts
// signing at two thirds of the current root's life (so it is in every bundle
// for at least a sixth of a root's life, five days by default, before the
// first SVID it signs appears). The retired root stays in the bundle until
// its own NotAfter: every SVID it signed is clamped to that instant, so none
// outlives it. Rotate forces the switch at once. Expired records are kept in
// the store a while so that spiffe_sequence, which is derived from the
// authorities' timestamps, never goes back.
//
// With Config.UpstreamCert and UpstreamKey the CA signs only with that
// imported intermediate; the bundle carries the top of its chain (the
// organisation's root). Postern never creates a root in that mode and never
// rotates the upstream: replacing it is the operator's job (new files and a
// restart); Run logs a warning once a sixth of its life is left, and issuance
// fails closed once it expired.
//
// # What it does not do
//
// It does not decide who may have which identity: callers pass the attested
// SPIFFE ID, and a CSR's subject and SANs are ignored. It does not serve HTTP
// itself beyond BundleHandler, and it keeps no revocation lists: SVIDs are
// short-lived instead.
package ca
