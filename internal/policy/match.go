package policy

import (
	"errors"
	"strings"
)

// Matchers compare one request value with one pattern. They are compiled at
// load and never allocate while matching.

type matchKind uint8

const (
	mExact  matchKind = iota
	mPrefix           // "abc*"
	mSuffix           // "*abc"
	mAny              // "*": any non-empty value
	mGlob             // segment glob: "*" within a "/"-separated segment, "**" or {**} across segments, {name} one segment
)

type segKind uint8

const (
	segLiteral segKind = iota
	segGlob            // contains '*' matching within the segment
	segOne             // {name} or {*}: exactly one non-empty segment
	segMany            // ** or {**}: zero or more segments
)

type seg struct {
	kind segKind
	s    string
}

// matcher is one compiled pattern.
type matcher struct {
	kind matchKind
	s    string
	fold bool // case-insensitive (hosts)
	segs []seg
	raw  string
}

func (m *matcher) String() string { return m.raw }

var (
	errStarPosition = errors.New("'*' is allowed only at the start or the end")
	errEmpty        = errors.New("empty value")
)

// parseIstio parses Istio's value forms: exact, "prefix*", "*suffix", "*".
func parseIstio(s string) (matcher, error) {
	m := matcher{raw: s}
	switch {
	case s == "":
		return m, errEmpty
	case s == "*":
		m.kind = mAny
	case strings.Count(s, "*") == 0:
		m.kind, m.s = mExact, s
	case strings.Count(s, "*") == 1 && strings.HasSuffix(s, "*"):
		m.kind, m.s = mPrefix, s[:len(s)-1]
	case strings.Count(s, "*") == 1 && strings.HasPrefix(s, "*"):
		m.kind, m.s = mSuffix, s[1:]
	default:
		return m, errStarPosition
	}
	return m, nil
}

// parseHost parses a host pattern (Istio forms, case-insensitive).
func parseHost(s string) (matcher, error) {
	m, err := parseIstio(strings.ToLower(s))
	m.fold = true
	m.raw = s
	return m, err
}

// parseSegGlob parses a glob over "/"-separated segments.
func parseSegGlob(s string, templates bool) (matcher, error) {
	m := matcher{raw: s, kind: mGlob}
	if strings.Contains(s, "***") {
		return m, errors.New("'***' is not a valid glob")
	}
	names := map[string]bool{}
	for part := range strings.SplitSeq(s, "/") {
		switch {
		case part == "**":
			m.segs = append(m.segs, seg{kind: segMany})
		case templates && strings.ContainsAny(part, "{}"):
			if len(part) < 3 || part[0] != '{' || part[len(part)-1] != '}' || strings.ContainsAny(part[1:len(part)-1], "{}") {
				return m, errors.New("a {param} must be a whole path segment")
			}
			name := part[1 : len(part)-1]
			switch {
			case name == "**":
				m.segs = append(m.segs, seg{kind: segMany})
			case name == "*":
				m.segs = append(m.segs, seg{kind: segOne})
			case validParamName(name):
				if names[name] {
					return m, errors.New("duplicate path parameter {" + name + "}")
				}
				names[name] = true
				m.segs = append(m.segs, seg{kind: segOne})
			default:
				return m, errors.New("invalid path parameter {" + name + "}")
			}
		case strings.Contains(part, "**"):
			return m, errors.New("'**' must be a whole segment")
		case strings.Contains(part, "*"):
			m.segs = append(m.segs, seg{kind: segGlob, s: part})
		default:
			m.segs = append(m.segs, seg{kind: segLiteral, s: part})
		}
	}
	return m, nil
}

func validParamName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9' {
			continue
		}
		return false
	}
	return true
}

// parseSPIFFEGlob parses a SPIFFE ID pattern: "*" (any), an exact SPIFFE ID,
// a prefix ending in the only '*' (as in Istio), or a segment glob starting
// with spiffe://.
func parseSPIFFEGlob(s string) (matcher, error) {
	if s == "*" {
		return matcher{raw: s, kind: mAny}, nil
	}
	if !strings.HasPrefix(s, "spiffe://") {
		return matcher{raw: s}, errors.New("must be a SPIFFE ID (spiffe://trust-domain/path) or a glob of one")
	}
	if !strings.Contains(s, "*") {
		if err := validSPIFFEID(s); err != nil {
			return matcher{raw: s}, err
		}
		return matcher{raw: s, kind: mExact, s: s}, nil
	}
	if strings.Count(s, "*") == 1 && strings.HasSuffix(s, "*") {
		return matcher{raw: s, kind: mPrefix, s: s[:len(s)-1]}, nil // Istio's prefix form
	}
	return parseSegGlob(s, false)
}

// parseAudience parses an audience pattern: "*", exact or segment glob.
func parseAudience(s string) (matcher, error) {
	switch {
	case s == "":
		return matcher{raw: s}, errEmpty
	case s == "*":
		return matcher{raw: s, kind: mAny}, nil
	case !strings.Contains(s, "*"):
		return matcher{raw: s, kind: mExact, s: s}, nil
	case strings.Count(s, "*") == 1 && strings.HasSuffix(s, "*"):
		return matcher{raw: s, kind: mPrefix, s: s[:len(s)-1]}, nil
	}
	return parseSegGlob(s, false)
}

// parsePath parses a path pattern: Istio's exact, "/prefix*", "*suffix" and
// "*", or a template with {name}, {*}, {**} segments and '*' within segments.
func parsePath(s string) (matcher, error) {
	if s == "" {
		return matcher{raw: s}, errEmpty
	}
	if !strings.ContainsAny(s, "{}") {
		if m, err := parseIstio(s); err == nil {
			if m.kind == mExact && s[0] != '/' {
				return m, errors.New("path must start with '/'")
			}
			return m, nil
		}
	}
	if s[0] != '/' {
		return matcher{raw: s}, errors.New("path must start with '/'")
	}
	return parseSegGlob(s, true)
}

// match reports whether v matches. An empty v never matches "*".
func (m *matcher) match(v string) bool {
	switch m.kind {
	case mExact:
		if m.fold {
			return strings.EqualFold(v, m.s)
		}
		return v == m.s
	case mPrefix:
		if m.fold {
			return len(v) >= len(m.s) && strings.EqualFold(v[:len(m.s)], m.s)
		}
		return strings.HasPrefix(v, m.s)
	case mSuffix:
		if m.fold {
			return len(v) >= len(m.s) && strings.EqualFold(v[len(v)-len(m.s):], m.s)
		}
		return strings.HasSuffix(v, m.s)
	case mAny:
		return v != ""
	case mGlob:
		return matchSegs(m.segs, v)
	}
	return false
}

// matchJoined reports whether a+"/"+b matches, without building the string.
// Only the Istio forms are supported (requestPrincipals uses them).
func (m *matcher) matchJoined(a, b string) bool {
	n := len(a) + 1 + len(b)
	switch m.kind {
	case mExact:
		return len(m.s) == n && m.s[:len(a)] == a && m.s[len(a)] == '/' && m.s[len(a)+1:] == b
	case mPrefix:
		return len(m.s) <= n && joinedHasPrefix(a, b, m.s)
	case mSuffix:
		return len(m.s) <= n && joinedHasSuffix(a, b, m.s)
	case mAny:
		return true
	}
	return false
}

func joinedHasPrefix(a, b, p string) bool {
	if len(p) <= len(a) {
		return strings.HasPrefix(a, p)
	}
	return p[:len(a)] == a && p[len(a)] == '/' && strings.HasPrefix(b, p[len(a)+1:])
}

func joinedHasSuffix(a, b, p string) bool {
	if len(p) <= len(b) {
		return strings.HasSuffix(b, p)
	}
	k := len(p) - len(b) // part of p covering "/" and the end of a
	return p[k:] == b && p[k-1] == '/' && strings.HasSuffix(a, p[:k-1])
}

// nextSeg returns the segment of s starting at pos and the start of the next
// one (len(s)+1 after the last segment).
func nextSeg(s string, pos int) (string, int) {
	if i := strings.IndexByte(s[pos:], '/'); i >= 0 {
		return s[pos : pos+i], pos + i + 1
	}
	return s[pos:], len(s) + 1
}

// matchSegs is the classic wildcard algorithm at segment level ("**" is the
// star), with single-star backtracking: O(len(segs)*len(s)) segment tests.
func matchSegs(segs []seg, s string) bool {
	pi, pos := 0, 0
	starP, starPos := -1, 0
	for pos <= len(s) {
		if pi < len(segs) && segs[pi].kind == segMany {
			starP, starPos = pi, pos
			pi++
			continue
		}
		cur, next := nextSeg(s, pos)
		if pi < len(segs) && segs[pi].matchSeg(cur) {
			pi++
			pos = next
			continue
		}
		if starP >= 0 {
			pi = starP + 1
			_, starPos = nextSeg(s, starPos)
			pos = starPos
			continue
		}
		return false
	}
	for pi < len(segs) && segs[pi].kind == segMany {
		pi++
	}
	return pi == len(segs)
}

func (g *seg) matchSeg(v string) bool {
	switch g.kind {
	case segLiteral:
		return v == g.s
	case segOne:
		return v != ""
	case segGlob:
		return wildcard(g.s, v)
	}
	return false
}

// wildcard matches v against p where '*' matches any run of bytes.
func wildcard(p, v string) bool {
	pi, vi := 0, 0
	starP, starV := -1, 0
	for vi < len(v) {
		switch {
		case pi < len(p) && p[pi] == '*':
			starP, starV = pi, vi
			pi++
		case pi < len(p) && p[pi] == v[vi]:
			pi++
			vi++
		case starP >= 0:
			pi = starP + 1
			starV++
			vi = starV
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}

func matchAny(ms []matcher, v string) bool {
	for i := range ms {
		if ms[i].match(v) {
			return true
		}
	}
	return false
}

func matchAnyJoined(ms []matcher, a, b string) bool {
	for i := range ms {
		if ms[i].matchJoined(a, b) {
			return true
		}
	}
	return false
}

func patterns(ms []matcher) string {
	var b strings.Builder
	b.WriteByte('[')
	for i := range ms {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(ms[i].raw)
	}
	b.WriteByte(']')
	return b.String()
}

// namespaceOf returns the namespace of a Kubernetes-style SPIFFE ID
// (spiffe://td/ns/NS/...), or "".
func namespaceOf(id string) string {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return ""
	}
	i := strings.IndexByte(rest, '/')
	if i < 0 {
		return ""
	}
	rest, ok = strings.CutPrefix(rest[i:], "/ns/")
	if !ok {
		return ""
	}
	if j := strings.IndexByte(rest, '/'); j >= 0 {
		return rest[:j]
	}
	return rest
}
