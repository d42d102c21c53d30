// Package sts is Postern's Security Token Service: the OAuth 2.0 token
// endpoint with the token-exchange (RFC 8693), client-credentials and
// jwt-bearer (RFC 7523) grants, client authentication by mutual TLS
// (RFC 8705), JWT-SVID (jwt-spiffe), private_key_jwt and client_secret_basic,
// introspection (RFC 7662), revocation (RFC 7009) of tokens and whole token
// families, the JWKS and the RFC 8414 discovery documents.
//
// Every decision about who may act for whom towards whom is delegated to the
// ExchangePolicy engine of package policy. The hot path touches no store:
// clients, policies, keys and revocations are held in memory.
//
// It does not terminate TLS (package server does, verifying client
// certificates against the trust bundle) and it does not issue X.509-SVIDs
// (package ca does).
package sts
