package policy

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
)

// Problem is one thing wrong with a resource file: where it is and why it is
// rejected.
type Problem struct {
	File    string // file name as given to Parse or found by LoadDir
	Line    int    // 1-based line, 0 when the problem concerns the whole file
	Message string // lowercase reason
}

// String returns "file:line: message" (or "file: message" without a line,
// or just the message for problems not tied to a file).
func (p Problem) String() string {
	if p.File == "" {
		return p.Message
	}
	if p.Line <= 0 {
		return p.File + ": " + p.Message
	}
	return p.File + ":" + strconv.Itoa(p.Line) + ": " + p.Message
}

// Problems lists every problem found while loading or compiling a set of
// resources. It is the error type returned by LoadDir, Parse and Compile;
// use errors.As(err, &policy.Problems{}) to get at the list.
type Problems []Problem

// Error joins all problems on one line each.
func (ps Problems) Error() string {
	var b strings.Builder
	b.WriteString("policy: ")
	switch len(ps) {
	case 0:
		b.WriteString("no problems")
	case 1:
		b.WriteString(ps[0].String())
	default:
		b.WriteString(strconv.Itoa(len(ps)))
		b.WriteString(" problems:")
		for _, p := range ps {
			b.WriteString("\n")
			b.WriteString(p.String())
		}
	}
	return b.String()
}

func (ps Problems) sorted() Problems {
	slices.SortStableFunc(ps, func(a, b Problem) int {
		if c := cmp.Compare(a.File, b.File); c != 0 {
			return c
		}
		return cmp.Compare(a.Line, b.Line)
	})
	return ps
}

func (ps Problems) err() error {
	if len(ps) == 0 {
		return nil
	}
	return ps.sorted()
}
