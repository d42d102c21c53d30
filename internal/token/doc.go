// Package token is the one place where Postern parses, verifies and signs
// JWTs. It provides the claims model (the RFC 8693 act chain, the RFC 8705
// cnf confirmation, Postern's session id), a Verifier with an algorithm
// allow-list, typ, iss, aud, exp, nbf and size checks, a Signer, and key sets:
// static ones and a remote JWKS cache with discovery, background refresh,
// rate-limited refresh on an unknown kid and last-good-keys on failure.
//
// It does not decide who may have a token (package policy and package sts do)
// and it never takes a verification key from a token's own headers.
package token
