// Package federation keeps the trust bundles of federated trust domains
// current: for every Federation resource it fetches the other trust
// domain's SPIFFE bundle from its bundle endpoint (SPIFFE Trust Domain and
// Bundle §4, Federation §5) and refreshes it as the bundle's refresh hint
// asks, within bounds. The endpoint is authenticated with Web PKI
// (https_web: the system roots or the Federation's caBundle) or with its
// X.509-SVID (https_spiffe: verified by go-spiffe against the last good
// bundle of that trust domain, starting from the Federation's bootstrap
// bundle). A fetch that fails keeps the last good bundle and is retried with
// backoff; nothing is ever served that did not come from an authenticated
// endpoint or from the operator.
//
// Manager.Bundles is what the node API hands to agents, which serve the
// bundles to workloads as federated bundles. The package does not serve our
// own bundle (internal/ca does) and does not decide which workloads may
// talk to which trust domain: every federated bundle goes to every agent.
package federation
