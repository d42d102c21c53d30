package attest

import "postern.dev/postern/internal/policy"

// Selector types.
const (
	// SelectorUnix is the type of selectors from unix peer credentials:
	// uid:<n>, gid:<n>, user:<name>, group:<name>, path:<exe>, sha256:<hex>.
	SelectorUnix = "unix"
	// SelectorK8s is the type of selectors from a Kubernetes projected
	// service-account token: ns:<namespace>, sa:<service-account>,
	// pod-name:<name>, pod-uid:<uid>, node-name:<node>.
	SelectorK8s = "k8s"
)

// Selector is one attested property, e.g. {Type: "unix", Value: "uid:1000"}.
type Selector struct{ Type, Value string }

// AgentServable reports whether an agent can ever attest a caller as a
// Workload with these selectors: some selectors, all of a type agents
// attest (unix). Only such Workloads are handed to agents; the others
// attest directly (join token, Kubernetes token).
func AgentServable(sel []policy.AttestationSelector) bool {
	if len(sel) == 0 {
		return false
	}
	for _, s := range sel {
		if s.Type != SelectorUnix {
			return false
		}
	}
	return true
}

// Matches reports whether every wanted selector is in have. Comparison is
// exact (case-sensitive). An empty want never matches: a Workload without
// selectors is never chosen by attestation.
func Matches(have []Selector, want []policy.AttestationSelector) bool {
	if len(want) == 0 {
		return false
	}
	for _, w := range want {
		found := false
		for _, h := range have {
			if h.Type == w.Type && h.Value == w.Value {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
