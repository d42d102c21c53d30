package strictyaml

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

type duration time.Duration

func (d *duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	*d = duration(v)
	return err
}

func (duration) CheckYAML(n *yaml.Node) string {
	if _, err := time.ParseDuration(n.Value); n.Tag != "!!str" || err != nil {
		return fmt.Sprintf("invalid duration %q", n.Value)
	}
	return ""
}

type config struct {
	DataDir string            `json:"dataDir"`
	Port    int               `json:"port,omitempty"`
	Rate    float64           `json:"rate,omitempty"`
	Debug   bool              `json:"debug,omitempty"`
	TTL     duration          `json:"ttl,omitempty"`
	Tags    []string          `json:"tags,omitempty"`
	Labels  map[string]string `json:"labels,omitempty"`
	Extra   json.RawMessage   `json:"extra,omitempty"`
	Nested  *struct {
		Name string `json:"name"`
	} `json:"nested,omitempty"`
	hidden string
}

func TestUnmarshal(t *testing.T) {
	var c config
	in := "dataDir: data\nport: 8443\nrate: 2.5\ndebug: true\nttl: 5m\ntags: [a, b]\nlabels: {x: y}\nextra: {any: [1, 2]}\nnested: {name: n}\n"
	if err := Unmarshal("c.yaml", []byte(in), &c); err != nil {
		t.Fatal(err)
	}
	if c.DataDir != "data" || c.Port != 8443 || c.Rate != 2.5 || !c.Debug || time.Duration(c.TTL) != 5*time.Minute ||
		len(c.Tags) != 2 || c.Labels["x"] != "y" || string(c.Extra) != `{"any":[1,2]}` || c.Nested.Name != "n" {
		t.Errorf("decoded %+v", c)
	}
	for _, empty := range []string{"", "# only a comment\n", "---\n"} {
		c := config{DataDir: "kept"}
		if err := Unmarshal("c.yaml", []byte(empty), &c); err != nil || c.DataDir != "kept" {
			t.Errorf("%q: err %v, DataDir %q", empty, err, c.DataDir)
		}
	}
}

func TestUnmarshalProblems(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		// JSON decoding alone matches keys case-insensitively and lets the
		// last duplicate win: here it would have used "typo".
		{"case-insensitive duplicate", "dataDir: data\ndatadir: typo\n", `c.yaml:2: unknown field "datadir" in the document`},
		{"duplicate", "dataDir: a\ndataDir: b\n", `c.yaml:2: duplicate field "dataDir" in the document`},
		{"duplicate map key", "labels:\n  x: a\n  x: b\n", `c.yaml:3: duplicate key "x" in labels`},
		{"unknown nested", "nested:\n  name: n\n  nmae: m\n", `c.yaml:3: unknown field "nmae" in nested`},
		{"unexported", "hidden: x\n", `c.yaml:1: unknown field "hidden" in the document`},
		{"wrong kinds", "port: eighty\ndebug: yes please\ntags: a\nlabels: [a]\nrate: fast\n",
			"c.yaml:1: port: want an integer (decimal without leading zeros, 0o octal or 0x hex)\nc.yaml:2: debug: want true or false\nc.yaml:3: tags: want a list\nc.yaml:4: labels: want a mapping\nc.yaml:5: rate: want a number"},
		{"string wanted", "dataDir: 12\n", `c.yaml:1: dataDir: want a string`},
		{"checker", "\nttl: 5 minutes\n", `c.yaml:2: ttl: invalid duration "5 minutes"`},
		{"alias", "dataDir: &a x\ntags: [*a]\n", `c.yaml:2: YAML aliases are not allowed`},
		{"alias in raw", "extra: {a: &x 1, b: *x}\n", `c.yaml:1: YAML aliases are not allowed`},
		{"not a mapping", "- a\n", `c.yaml:1: the document: want a mapping`},
		{"two documents", "dataDir: a\n---\ndataDir: b\n", `c.yaml:2: a second YAML document; the file must hold one`},
		{"syntax", "dataDir: a\n  port: 1\n", `c.yaml:2: invalid YAML: mapping values are not allowed in this context`},
		{"not finite", "rate: .inf\n", `c.yaml:1: not a finite number`},
		{"merge key", "extra: {<<: {a: 1}}\n", `c.yaml:1: YAML merge keys (<<) are not allowed`},
		// yaml.v3 reads 0443 as octal 291 where YAML 1.2 reads 443: refused
		// rather than guessed.
		{"leading zero", "port: 0443\n", "c.yaml:1: port: want an integer (decimal without leading zeros, 0o octal or 0x hex)"},
		{"underscore", "port: 1_000\n", "c.yaml:1: port: want an integer (decimal without leading zeros, 0o octal or 0x hex)"},
		{"binary", "port: 0b11\n", "c.yaml:1: port: want an integer (decimal without leading zeros, 0o octal or 0x hex)"},
		{"null field", "dataDir:\nport: 1\n", "c.yaml:1: dataDir: empty value; give it a value or leave the key out"},
		{"null map value", "labels: {a: ~}\n", "c.yaml:1: labels.a: empty value; give it a value or leave the key out"},
		// encoding/json would match both keys to one field and keep the
		// later, the Kelvin sign included.
		{"keys differing in case in raw JSON", "extra: {keys: [1], Keys: [2]}\n", `c.yaml:1: key "Keys" repeats "keys" (keys may not differ only in case)`},
		{"kelvin sign", "extra: {keys: [1], \"\\u212Aeys\": [2]}\n", "c.yaml:1: key \"\u212aeys\" repeats \"keys\" (keys may not differ only in case)"},
		{"no value in messages", "extra: {d: !!float 123SECRET}\n", "c.yaml:1: not a finite number"},
		{"non-string key", "{[a]: b}\n", `c.yaml:1: the document: keys must be strings`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c config
			err := Unmarshal("c.yaml", []byte(tc.in), &c)
			var se *Error
			if !errors.As(err, &se) {
				t.Fatalf("err = %v, want an *Error", err)
			}
			if err.Error() != tc.want {
				t.Errorf("err =\n%s\nwant\n%s", err, tc.want)
			}
		})
	}
}

// What the Walker checked is what is decoded: YAML 1.2, where on, off, y,
// n, yes and no are strings. Re-reading the text as YAML 1.1 (as
// sigs.k8s.io/yaml does) turned them into "true" and "false", so a policy
// value "off" could never match.
func TestYAML12Scalars(t *testing.T) {
	var c config
	in := "tags: [on, off, y, n, yes, no, 'True', '012', 2001-12-14]\nport: 0x10\nrate: 1e3\nlabels: {a: off}\nextra: [yes, 0o17, ~, false]\n"
	if err := Unmarshal("c.yaml", []byte(in), &c); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(c.Tags); got != "[on off y n yes no True 012 2001-12-14]" {
		t.Errorf("tags = %s", got)
	}
	if c.Port != 16 || c.Rate != 1000 || c.Labels["a"] != "off" || string(c.Extra) != `["yes",15,null,false]` {
		t.Errorf("decoded %+v (extra %s)", c, c.Extra)
	}
}

func TestErrorWithoutFile(t *testing.T) {
	var c config
	err := Unmarshal("", []byte("bogus: 1\n"), &c)
	if err == nil || err.Error() != `line 1: unknown field "bogus" in the document` {
		t.Errorf("err = %v", err)
	}
}

func TestWalkerVisit(t *testing.T) {
	var root yaml.Node
	if err := yaml.Unmarshal([]byte("dataDir: d\nnested:\n  name: n\ntags:\n- a\n"), &root); err != nil {
		t.Fatal(err)
	}
	lines := map[string]int{}
	w := Walker{
		Report: func(line int, msg string) { t.Errorf("line %d: %s", line, msg) },
		Visit:  func(path string, line int) { lines[path] = line },
	}
	w.Walk(root.Content[0], reflect.TypeFor[config](), "")
	want := map[string]int{"dataDir": 1, "nested": 2, "nested.name": 3, "tags": 4, "tags[0]": 5}
	if fmt.Sprint(lines) != fmt.Sprint(want) {
		t.Errorf("visited %v, want %v", lines, want)
	}
}

// FuzzUnmarshal: whatever the bytes, no panic; what is accepted decodes
// the same through sigs.k8s.io/yaml alone, which is no stricter.
func FuzzUnmarshal(f *testing.F) {
	f.Add([]byte("dataDir: data\nport: 8443\nttl: 5m\ntags: [a]\nlabels: {x: y}\nextra: {a: 1}\nnested: {name: n}\n"))
	f.Add([]byte("dataDir: a\ndatadir: b\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Add([]byte("---\n---\n"))
	f.Add([]byte("port: 0443\nrate: .inf\ndebug: yes\n"))
	f.Add([]byte("dataDir:\nlabels: {a: ~}\ntags: []\n"))
	f.Add([]byte("extra: {keys: [1], \"\\u212Aeys\": [2], <<: {a: 1}}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 4096 {
			return
		}
		var c config
		if err := Unmarshal("f.yaml", b, &c); err != nil {
			if !strings.HasPrefix(err.Error(), "f.yaml") {
				t.Fatalf("error without the file name: %v", err)
			}
			return
		}
	})
}
