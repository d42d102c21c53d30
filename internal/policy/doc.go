// Package policy is Postern's resource model and authorization engine: it
// loads the Kubernetes-style YAML resources operators write (Workload,
// TrustedIssuer, ExchangePolicy, AuthorizationPolicy, Federation), rejects
// anything it does not fully understand with file, line and reason, and
// compiles them into an immutable Engine that decides, on every request,
// whether a workload accepts a call (Authorize) and whether the STS may
// issue a token (Exchange). It also implements `postern policy
// lint|test|explain` (Lint, RunTests, Explain) and hot reload with
// last-known-good semantics (Watcher). It does not verify tokens or certificates: callers pass in
// verified identities and claims.
//
// # Loading
//
// LoadDir reads the .yaml/.yml files of one directory (not recursively,
// hidden files skipped, each at most 1 MiB); a file may hold several
// documents separated by "---". Every document has apiVersion
// postern.dev/v1, kind, metadata.name (unique per kind) and spec. Unknown
// kinds and fields, wrong types, duplicate keys or names, YAML aliases, bad
// globs, CEL that does not compile or does not return a bool, and
// conflicting fields are all problems; no field is ever ignored. PolicyTest
// documents (the test files of `postern policy test`) are skipped by LoadDir.
//
// # AuthorizationPolicy
//
// The language is Istio's security.istio.io/v1 AuthorizationPolicy:
//
//	apiVersion: postern.dev/v1
//	kind: AuthorizationPolicy
//	metadata: {name: inventory-writes}
//	spec:
//	  selector:
//	    matchLabels: {app: inventory}
//	    spiffeIDs: ["spiffe://shop.local/ns/shop/sa/inventory"]
//	  action: ALLOW               # ALLOW (default), DENY or AUDIT
//	  mode: Enforce               # or DryRun
//	  rules:
//	  - from:
//	    - source:
//	        principals: ["spiffe://shop.local/ns/shop/sa/order-processing"]
//	        requestPrincipals: ["https://idp.shop.local/*"]
//	    to:
//	    - operation: {methods: [POST], paths: ["/items/{id}/reserve"]}
//	    when:
//	    - key: request.auth.claims[scope]
//	      values: ["orders:write"]
//	    - key: actors[-1]           # the first actor: the gateway
//	      values: ["spiffe://shop.local/ns/edge/sa/gateway"]
//	    condition: 'subject.email.endsWith("@shop.example")'
//
// Evaluation follows Istio: enforced DENY policies first (any matching rule
// denies), then ALLOW policies (any matching rule allows); AUDIT policies
// do not change the decision but set Decision.Audit. A policy matches when
// any of its rules does; a rule matches when all of its parts do: any of
// its from sources, any of its to operations, all of its when conditions
// and its CEL condition. Within a source or operation every field must
// match; a field matches when the value matches any entry, a not-field when
// it matches none. A rule with no parts matches every request; a policy
// with no rules matches nothing (an ALLOW policy with no rules is Istio's
// "allow nothing").
//
// Value forms: principals, notPrincipals, selector.spiffeIDs, the values
// of source.principal and actors keys, and ExchangePolicy clients and
// audiences are SPIFFE IDs or globs of them: "*" (any non-empty value), a
// prefix ending in the only '*' as in Istio ("spiffe://td/ns/shop/*": every
// ID that starts so), and otherwise '*' within one "/"-separated segment
// ("spiffe://td/ns/*/sa/gateway") and "**" for any number of segments
// ("spiffe://td/ns/**/gateway"). Namespaces, requestPrincipals ("iss/sub"),
// header and claim values use Istio's forms: exact, "prefix*", "*suffix"
// and "*". Hosts use the same forms, case-insensitively, ignoring a :port.
// Paths are exact, Istio's "/prefix*" and "*suffix", or templates whose
// segments are literals, globs ("*.json"), {name} or {*} (exactly one
// segment) and {**} (any number of segments); a query string is ignored.
//
// when keys: request.auth.claims[name] (nested: [a][b]), request.auth.principal
// ("iss/sub"), request.auth.audiences (aud), request.auth.presenter (azp),
// request.headers[name], source.principal, source.namespace, and the act
// chain: actors[N] (actors[0] is the immediate previous actor, actors[-1]
// the first actor) and actors (any actor). A claim that is a list matches
// when any element does; the space-delimited scope and scp claims are split
// into scopes. This is how a service defends against a confused deputy:
// "the immediate caller is order-processing AND the end user has scope
// orders:write AND the gateway is the first actor" is a from principal, a
// scope claim condition and an actors[-1] condition in one rule.
//
// The CEL condition of a rule sees: subject (the token's claims, a map),
// issuer, actors (newest first), workload, peer, hasToken, method, path,
// host, port (int) and headers. ExchangePolicy's when sees subject, issuer
// and actors with the same meaning, plus client, audience, scopes
// (requested) and grantType. CEL programs run with a cost limit.
//
// # Fail closed
//
// A condition the engine cannot evaluate — a missing claim or header, an
// act chain shorter than the index, a request without a token for a claim
// condition, a CEL runtime error or an exhausted cost limit — is neither
// true nor false. Rules are evaluated in three-valued logic: such a rule
// does not match in an ALLOW policy and matches in a DENY (or AUDIT)
// policy, and the decision's Reason says so. No predicate is ever dropped.
//
// # Differences from Istio
//
//   - Deny by default: a workload that no enforced ALLOW policy selects
//     denies every request (Istio allows it).
//   - Tokens are required: an ALLOW rule only matches requests that carry a
//     verified token, unless it sets allowWithoutToken (below). Istio
//     requires a JWT only when requestPrincipals is used.
//   - Selectors: there are no namespaces for policies. A policy without
//     selector applies to every workload of the trust domain; selector
//     takes matchLabels and/or spiffeIDs (both must match when both are
//     given). An empty selector is rejected.
//   - principals are full SPIFFE IDs ("spiffe://td/ns/x/sa/y"), not Istio's
//     "td/ns/x/sa/y", and accept segment globs.
//   - Missing values fail closed as described above; in Istio a missing
//     header or claim simply makes values not match and notValues match.
//   - The act chain is a first-class key (actors, actors[N]), and the scope
//     and scp claims are split on spaces.
//   - ports may be numbers or numeric strings (Istio: strings only).
//   - CUSTOM actions, ipBlocks/remoteIpBlocks and the
//     source.ip/destination.* keys are not supported (rejected at load).
//   - Path templates {name} are accepted besides Istio's {*} and {**}.
//
// # Adoption: dry-run and exemptions
//
// mode: DryRun on a policy (AuthorizationPolicy or ExchangePolicy) makes it
// evaluated but not enforced: Decision.DryRun lists, for every dry-run
// policy selecting the workload, whether it matched and what it would have
// done, and the decision that would result if all dry-run policies were
// enforced. Proxies write these lines to the audit log, so a policy can be
// watched against real traffic before it is switched to Enforce.
//
// Health probes and similar token-less requests are exempted explicitly
// and narrowly: an ALLOW rule with allowWithoutToken: true matches requests
// without a token, but it must list exact paths in every to operation, and
// may not use requestPrincipals, token-based when keys or a CEL condition.
// DENY rules with token-based conditions still apply to such requests (their
// conditions cannot be evaluated, so they match): exclude the probe paths
// with notPaths in those rules.
//
//	rules:
//	- allowWithoutToken: true
//	  to: [{operation: {methods: [GET], paths: [/healthz, /readyz]}}]
//
// # ExchangePolicy
//
// DENY policies first (any enforced match denies), then ALLOW policies in
// name order; the first whose clients, grantTypes, subjectIssuers and
// audiences match and whose when is true decides, and its scopes ceiling,
// claims and maxLifetime are returned. An empty requested audience is
// resolved only when the matching ALLOW policies name exactly one audience
// and no glob. "self" in subjectIssuers means CompileOptions.SelfIssuer.
//
// # Performance
//
// Compile indexes policies per known Workload (by selector and action), so
// Authorize for a known workload only looks at the policies that select it;
// it allocates nothing unless a CEL condition, an Explain trace or a
// dry-run policy is involved. Decision ids are a random per-Engine prefix
// plus an atomic counter (DecisionID), formatted only when printed. The
// Engine is immutable; Watcher swaps it through an atomic pointer.
package policy
