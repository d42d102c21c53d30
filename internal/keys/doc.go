// Package keys manages the control plane's secret key material: the
// key-encryption key (KEK) that seals private keys at rest, and the lifecycle
// of the JWT signing keys.
//
// A KEK is 32 bytes loaded from a file, an environment variable or, for
// development only, generated in the data directory. It seals with AES-256-GCM
// and derives sub-keys with HKDF.
//
// A Manager holds the signing keys in memory behind an atomic pointer, so
// Current and PublicKey never lock. Keys live in the store, sealed by the KEK.
// The schedule is a pure function of the stored records and the clock:
//
//   - the current key is the one with the latest ActivateAt not after now
//     (ties: the smaller kid) that has not been retired;
//   - there is always a next key, published as soon as it is created and at
//     least LeadTime before it activates (normally a whole RotationPeriod);
//   - a key that stopped signing stays published for MaxTokenLifetime plus
//     five minutes of clock skew, then it is deleted from the store.
//
// Several replicas may share a store: each re-reads the store before it
// writes, the rules above pick the same keys on every replica, and surplus
// next keys created by a race are deleted by the next tick.
//
// The package does not sign or verify tokens (see package token) nor serve
// HTTP: JWKS and MaxAge give the HTTP layer what it serves.
package keys
