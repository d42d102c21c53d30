// Package strictyaml checks YAML documents against the Go types they
// configure before they are decoded, so that a mistake is reported with its
// line instead of being ignored or reported as a JSON error.
//
// Configuration in Postern is YAML decoded through its JSON form, as in
// Kubernetes, so that json tags and UnmarshalJSON methods apply. A plain
// JSON decode matches keys case-insensitively, lets a later duplicate key
// win silently and reports problems without a line; a YAML 1.1 reader
// (sigs.k8s.io/yaml) also turns an unquoted on, off, yes or no into a
// boolean. This package closes those gaps: keys must match a field's json
// tag exactly and appear once; YAML aliases are refused (they make files
// hard to review and can expand exponentially); scalars must have the
// field's kind, resolved by YAML 1.2; and each problem carries its line.
package strictyaml

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"unicode"

	"go.yaml.in/yaml/v3"
)

// Checker is implemented by scalar types that validate their own YAML node
// (a duration string, a port), so that a bad value is reported at its line.
// It returns "" for a good node and the problem otherwise.
type Checker interface {
	CheckYAML(n *yaml.Node) string
}

var (
	rawMessageType = reflect.TypeFor[json.RawMessage]()
	checkerType    = reflect.TypeFor[Checker]()
)

// Walker checks a YAML node tree against a Go type.
//
// A null value (`key:` with nothing after it, or `~`) is refused outside
// free-form parts: it is what is left when every entry under a key was
// commented out, and decoding it as "field left out" can turn a narrow
// rule into one that matches anything.
type Walker struct {
	// Report is called with each problem and its 1-based line.
	Report func(line int, msg string)
	// Visit, when set, is called with the path of each field and element
	// ("spec.rules[0].from") and the line that names it.
	Visit func(path string, line int)
	// RefuseEmptyLists reports an explicit empty list ([]) in a struct
	// field, unless the field's tag says `strictyaml:"emptyok"`: in
	// policies an absent list means "any", and [] reads like "none".
	RefuseEmptyLists bool
}

// Walk checks n against t; path names n in messages ("" for the document).
func (w *Walker) Walk(n *yaml.Node, t reflect.Type, path string) {
	w.walk(n, t, path, n.Line)
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// walk checks n against t; line is where path is reported (the key's line
// for a mapping entry).
func (w *Walker) walk(n *yaml.Node, t reflect.Type, path string, line int) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.AliasNode {
		w.Report(n.Line, "YAML aliases are not allowed")
		return
	}
	if path != "" && w.Visit != nil {
		w.Visit(path, line)
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		if t != rawMessageType && t.Kind() != reflect.Interface {
			w.Report(n.Line, describe(path)+": empty value; give it a value or leave the key out")
		}
		return
	}
	if t.Implements(checkerType) {
		if msg := reflect.Zero(t).Interface().(Checker).CheckYAML(n); msg != "" {
			w.Report(n.Line, path+": "+msg)
		}
		return
	}
	where := describe(path)
	switch {
	case t == rawMessageType || t.Kind() == reflect.Interface:
		w.noAliases(n)
	case t.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			w.Report(n.Line, where+": want a mapping")
			return
		}
		fields := map[string]reflect.StructField{}
		for i := 0; i < t.NumField(); i++ {
			sf := t.Field(i)
			tag, _, _ := strings.Cut(sf.Tag.Get("json"), ",")
			if !sf.IsExported() || tag == "-" || tag == "" {
				continue
			}
			fields[tag] = sf
		}
		w.mapping(n, where, "field", func(k, v *yaml.Node) {
			sf, ok := fields[k.Value]
			if !ok {
				w.Report(k.Line, fmt.Sprintf("unknown field %q in %s", k.Value, where))
				return
			}
			p := join(path, k.Value)
			if w.RefuseEmptyLists && v.Kind == yaml.SequenceNode && len(v.Content) == 0 && sf.Tag.Get("strictyaml") != "emptyok" {
				w.Report(k.Line, p+": empty list; list values, or leave the key out")
				return
			}
			w.walk(v, sf.Type, p, k.Line)
		})
	case t.Kind() == reflect.Map:
		if n.Kind != yaml.MappingNode {
			w.Report(n.Line, where+": want a mapping")
			return
		}
		w.mapping(n, where, "key", func(k, v *yaml.Node) {
			w.walk(v, t.Elem(), join(path, k.Value), k.Line)
		})
	case t.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			w.Report(n.Line, where+": want a list")
			return
		}
		for i, c := range n.Content {
			w.walk(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i), c.Line)
		}
	case t.Kind() == reflect.String:
		// A date is a string in YAML 1.2's core schema; yaml.v3 tags it.
		if n.Kind != yaml.ScalarNode || (n.Tag != "!!str" && n.Tag != "!!timestamp") {
			w.Report(n.Line, where+": want a string")
		}
	case t.Kind() == reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
			w.Report(n.Line, where+": want true or false")
		}
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		if _, ok := Int(n); !ok {
			w.Report(n.Line, where+": want an integer ("+intForms+")")
		}
	case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
		if _, ok := Int(n); !ok && (n.Kind != yaml.ScalarNode || n.Tag != "!!float") {
			w.Report(n.Line, where+": want a number")
		}
	}
}

func describe(path string) string {
	if path == "" {
		return "the document"
	}
	return path
}

const intForms = "decimal without leading zeros, 0o octal or 0x hex"

// Int returns the value of an integer scalar written as YAML 1.2 writes
// one: decimal ([-+]?[0-9]+) without leading zeros, 0o octal or 0x hex. A
// leading-zero decimal is refused rather than guessed at (YAML 1.1, and
// yaml.v3, read 0443 as octal 291), and so are 1.1's 0b, _ and base 60.
// The value is a decimal string, so uint64 values fit too.
func Int(n *yaml.Node) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
		return "", false
	}
	v := n.Value
	sign := ""
	if v != "" && (v[0] == '-' || v[0] == '+') {
		if v[0] == '-' {
			sign = "-"
		}
		v = v[1:]
	}
	base := 10
	switch {
	case strings.HasPrefix(v, "0o"):
		base, v = 8, v[2:]
	case strings.HasPrefix(v, "0x"):
		base, v = 16, v[2:]
	case len(v) > 1 && v[0] == '0':
		return "", false
	}
	if v == "" || strings.ContainsAny(v, "_+-") {
		return "", false
	}
	if sign == "-" {
		i, err := strconv.ParseInt(sign+v, base, 64)
		if err != nil {
			return "", false
		}
		return strconv.FormatInt(i, 10), true
	}
	u, err := strconv.ParseUint(v, base, 64)
	if err != nil {
		return "", false
	}
	return strconv.FormatUint(u, 10), true
}

// mapping calls each with every entry of a mapping node whose key is a
// string seen for the first time, and reports the others.
func (w *Walker) mapping(n *yaml.Node, where, what string, each func(k, v *yaml.Node)) {
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			w.Report(k.Line, where+": keys must be strings")
			continue
		}
		if seen[k.Value] {
			w.Report(k.Line, fmt.Sprintf("duplicate %s %q in %s", what, k.Value, where))
			continue
		}
		seen[k.Value] = true
		each(k, v)
	}
}

func (w *Walker) noAliases(n *yaml.Node) {
	if n.Kind == yaml.AliasNode {
		w.Report(n.Line, "YAML aliases are not allowed")
		return
	}
	for _, c := range n.Content {
		w.noAliases(c)
	}
}

// Problem is one fault of a YAML file.
type Problem struct {
	Line    int
	Message string
}

// Error is every problem Unmarshal found in one file.
type Error struct {
	// File is the name the problems are reported under.
	File     string
	Problems []Problem
}

// Error lists the problems as "file:line: message" ("line N: message"
// without a file name), one per line.
func (e *Error) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		switch {
		case e.File == "" && p.Line > 0:
			fmt.Fprintf(&b, "line %d: %s", p.Line, p.Message)
		case e.File == "":
			b.WriteString(p.Message)
		case p.Line > 0:
			fmt.Fprintf(&b, "%s:%d: %s", e.File, p.Line, p.Message)
		default:
			fmt.Fprintf(&b, "%s: %s", e.File, p.Message)
		}
	}
	return b.String()
}

var lineRE = regexp.MustCompile(`line (\d+)`)

// ParseError turns a yaml.v3 parse error into a Problem with its line.
func ParseError(err error) Problem {
	msg := err.Error()
	line := 0
	if m := lineRE.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		// yaml.v3 reports "did not find expected ..." at the 0-based
		// line of the construct being parsed.
		if strings.Contains(msg, "did not find expected") {
			line++
		}
	}
	msg = strings.TrimPrefix(msg, "yaml: ")
	msg = strings.TrimSpace(lineRE.ReplaceAllString(msg, ""))
	msg = strings.TrimPrefix(msg, ": ")
	return Problem{Line: line, Message: "invalid YAML: " + msg}
}

// DecodeJSON decodes the node tree into out through its JSON form, so that
// the types' json tags and UnmarshalJSON methods apply, with unknown fields
// refused. The JSON form is built from the node's own resolved tags (YAML
// 1.2, what the Walker checked), not by re-reading the text as YAML 1.1:
// there, an unquoted on, off, y, n, yes or no in a list of strings would
// silently become "true" or "false".
func DecodeJSON(n *yaml.Node, out any) error {
	var b bytes.Buffer
	if err := appendJSON(&b, n, 0); err != nil {
		return err // a *LineError
	}
	dec := json.NewDecoder(&b)
	dec.DisallowUnknownFields()
	if err := dec.Decode(out); err != nil {
		return errors.New(strings.TrimPrefix(err.Error(), "json: "))
	}
	return nil
}

// maxDepth bounds the nesting DecodeJSON follows.
const maxDepth = 64

// appendJSON writes n as JSON.
func appendJSON(b *bytes.Buffer, n *yaml.Node, depth int) error {
	if depth > maxDepth {
		return &LineError{n.Line, fmt.Sprintf("nested more than %d levels deep", maxDepth)}
	}
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) == 0 {
			b.WriteString("null")
			return nil
		}
		return appendJSON(b, n.Content[0], depth)
	case yaml.AliasNode:
		return &LineError{n.Line, "YAML aliases are not allowed"}
	case yaml.MappingNode:
		b.WriteByte('{')
		seen := map[string]string{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.ShortTag() == "!!merge" {
				return &LineError{k.Line, "YAML merge keys (<<) are not allowed"}
			}
			if k.Kind != yaml.ScalarNode {
				return &LineError{k.Line, "keys must be strings"}
			}
			// encoding/json matches object keys to struct fields
			// case-insensitively (K, the Kelvin sign, and ſ included), so
			// two keys that fold alike would let the later one win
			// silently.
			f := fold(k.Value)
			if first, ok := seen[f]; ok {
				return &LineError{k.Line, fmt.Sprintf("key %q repeats %q (keys may not differ only in case)", clip(k.Value), clip(first))}
			}
			seen[f] = k.Value
			if i > 0 {
				b.WriteByte(',')
			}
			writeString(b, k.Value)
			b.WriteByte(':')
			if err := appendJSON(b, v, depth+1); err != nil {
				return err
			}
		}
		b.WriteByte('}')
		return nil
	case yaml.SequenceNode:
		b.WriteByte('[')
		for i, c := range n.Content {
			if i > 0 {
				b.WriteByte(',')
			}
			if err := appendJSON(b, c, depth+1); err != nil {
				return err
			}
		}
		b.WriteByte(']')
		return nil
	case yaml.ScalarNode:
		return appendScalar(b, n)
	}
	return &LineError{n.Line, "unexpected YAML node"}
}

// fold is the key under encoding/json's case-insensitive matching.
func fold(s string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case '\u212a': // Kelvin sign
			return 'k'
		case '\u017f': // long s
			return 's'
		}
		return unicode.ToLower(r)
	}, s)
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// LineError is a problem DecodeJSON found at a line of the document.
type LineError struct {
	Line int
	Msg  string
}

func (e *LineError) Error() string { return fmt.Sprintf("line %d: %s", e.Line, e.Msg) }

// appendScalar writes a scalar by its resolved tag.
func appendScalar(b *bytes.Buffer, n *yaml.Node) error {
	switch tag := n.ShortTag(); tag {
	case "!!null":
		b.WriteString("null")
	case "!!str", "!!timestamp", "!!binary":
		writeString(b, n.Value)
	// The messages do not repeat the value: it may be part of a key.
	case "!!bool":
		switch n.Value {
		case "true", "True", "TRUE":
			b.WriteString("true")
		case "false", "False", "FALSE":
			b.WriteString("false")
		default:
			return &LineError{n.Line, "not a boolean (true or false)"}
		}
	case "!!int":
		v, ok := Int(n)
		if !ok {
			return &LineError{n.Line, "not an integer in range (" + intForms + ")"}
		}
		b.WriteString(v)
	case "!!float":
		var v float64
		if err := n.Decode(&v); err != nil || math.IsInf(v, 0) || math.IsNaN(v) {
			return &LineError{n.Line, "not a finite number"}
		}
		b.WriteString(strconv.FormatFloat(v, 'g', -1, 64))
	default:
		return &LineError{n.Line, fmt.Sprintf("unsupported YAML tag %q", clip(tag))}
	}
	return nil
}

func writeString(b *bytes.Buffer, s string) {
	q, _ := json.Marshal(s) // a string always marshals
	b.Write(q)
}

// Unmarshal decodes data, one YAML document, into out (a pointer to a
// struct) after checking it with a Walker. An empty document leaves out as
// it is. The error is an *Error naming file (which may be "").
func Unmarshal(file string, data []byte, out any) error {
	fail := func(ps ...Problem) error { return &Error{File: file, Problems: ps} }
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
		return nil
	} else if err != nil {
		return fail(ParseError(err))
	}
	var more yaml.Node
	if err := dec.Decode(&more); err == nil {
		return fail(Problem{Line: more.Line, Message: "a second YAML document; the file must hold one"})
	} else if !errors.Is(err, io.EOF) {
		return fail(ParseError(err))
	}
	if len(doc.Content) == 0 {
		return nil
	}
	root := doc.Content[0]
	if root.Kind == yaml.ScalarNode && root.ShortTag() == "!!null" {
		return nil // "---" alone: an empty document
	}
	var ps []Problem
	w := Walker{Report: func(line int, msg string) { ps = append(ps, Problem{line, msg}) }}
	w.Walk(root, reflect.TypeOf(out), "")
	if len(ps) > 0 {
		return fail(ps...)
	}
	if err := DecodeJSON(root, out); err != nil {
		if le, ok := errors.AsType[*LineError](err); ok {
			return fail(Problem{Line: le.Line, Message: le.Msg})
		}
		return fail(Problem{Line: root.Line, Message: err.Error()})
	}
	return nil
}
