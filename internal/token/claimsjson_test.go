package token

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

// claimSetSeeds are real and awkward claim sets: what the fast paths must
// handle, and what they must leave to encoding/json.
func claimSetSeeds(t testing.TB) [][]byte {
	var out [][]byte
	for _, c := range []*Claims{validClaims(), fullClaims(), {}, {Audience: []string{""}}, {Cnf: &Confirmation{}}} {
		b, err := c.marshalGeneric()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	for _, s := range []string{
		`{}`, ` { "iss" : "a" , "aud" : [ ] } `, `null`, `[]`, `{"aud":["a",1]}`, `{"exp":1.5e9,"nbf":0.5}`,
		`{"exp":-0}`, `{"exp":1e400}`, `{"exp":01}`, `{"exp":1.}`, `{"exp":"1"}`,
		`{"act":{"sub":"a","act":{}}}`, `{"act":{"sub":"a","x":1}}`, `{"act":{"sub":"a","act":null}}`,
		`{"act":{"sub":"a","sub":"b"}}`, `{"cnf":{"x5t#S256":"x","jkt":"y"}}`, `{"cnf":{}}`,
		`{"iss":"a","iss":"b","ISS":"c"}`, `{"x":1,"x":2}`, `{"x":"\ud800"}`, `{"a":"[{\"]"}`,
		`{"iss":"caf\u00e9"}`, "{\"iss\":\"caf\xc3\xa9\"}", "{\"iss\":\"\xff\"}", "{\"iss\":\"a\tb\"}",
		`{"x":null}`, `{"iss":null}`, `{"x":[1,{"y":"}"}],"z":true}`, `{"x":}`, `{"x":1 2}`, `{"x":[}]}`,
		`{"iss":"a"} x`, `{"iss":"a",}`, `{,}`, `{"\u0069ss":"a"}`, `{"x":truex}`, `{"x":tru}`, `{"x":-}`, `{"x":false,"y":-1.5e3,"z":"s"}`,
	} {
		out = append(out, []byte(s))
	}
	return out
}

// checkFastDecode holds decodeClaimsFast to the general decoder: when it
// accepts b, the general decoder must accept b too and agree on every claim.
func checkFastDecode(t *testing.T, b []byte) {
	t.Helper()
	if checkDepth(b, maxJSONDepth) != nil {
		return // UnmarshalJSON refuses before either path runs
	}
	var fast Claims
	if !decodeClaimsFast(b, &fast) {
		return
	}
	var slow Claims
	if err := slow.unmarshalGeneric(b); err != nil {
		t.Fatalf("fast path accepted %q, encoding/json refuses it: %v", b, err)
	}
	if !reflect.DeepEqual(fast, slow) {
		t.Fatalf("paths disagree on %q:\nfast %#v\nslow %#v", b, fast, slow)
	}
}

// checkAppend holds appendClaims to encoding/json: its bytes must decode to
// the same claims as marshalGeneric's.
func checkAppend(t *testing.T, c *Claims) {
	t.Helper()
	want, werr := c.marshalGeneric()
	got, gerr := c.MarshalJSON()
	if (werr == nil) != (gerr == nil) {
		t.Fatalf("encoders disagree on failure: %v / %v", werr, gerr)
	}
	if werr != nil {
		return
	}
	if !json.Valid(got) {
		t.Fatalf("MarshalJSON wrote invalid JSON %q", got)
	}
	var a, b any
	if err := json.Unmarshal(want, &a); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(got, &b); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("encoders disagree:\nappend  %s\ngeneric %s", got, want)
	}
}

func TestClaimsFastDecode(t *testing.T) {
	accepted := 0
	for _, b := range claimSetSeeds(t) {
		checkFastDecode(t, b)
		var c Claims
		if decodeClaimsFast(b, &c) {
			accepted++
		}
	}
	// The tokens Postern issues must take the fast path, or it is not one.
	for _, c := range []*Claims{validClaims(), fullClaims()} {
		b, err := c.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		var got Claims
		if !decodeClaimsFast(b, &got) {
			t.Errorf("fast path refused a claim set Postern writes: %s", b)
		}
	}
	if accepted < 5 {
		t.Errorf("fast path accepted only %d seeds", accepted)
	}
}

func TestClaimsAppend(t *testing.T) {
	weird := "q\"b\\s/\n\r\t\x01<>&\u2028\u2029\xff\xc3é😀"
	for _, c := range []*Claims{
		validClaims(), fullClaims(), {}, {Audience: []string{""}}, {Audience: []string{weird, ""}},
		{Issuer: weird, Subject: weird, Scope: weird, Act: &Actor{Subject: weird, Issuer: weird, Actor: &Actor{Subject: "x"}}},
		{Cnf: &Confirmation{}}, {Extra: map[string]any{"iss": "ignored", "x": weird}},
		{Extra: map[string]any{"only": 1.0}},
	} {
		checkAppend(t, c)
	}
	if _, err := (&Claims{Extra: map[string]any{"bad": make(chan int)}}).MarshalJSON(); err == nil {
		t.Error("MarshalJSON encoded a channel")
	}
	cyclic := &Actor{Subject: "a"}
	cyclic.Actor = cyclic
	if _, err := (&Claims{Act: cyclic}).MarshalJSON(); err == nil {
		t.Error("MarshalJSON encoded a cyclic actor chain")
	}
	// What the encoder writes, the fast decoder reads, HTML characters
	// included.
	b, err := (&Claims{Issuer: "a<b>&c", Extra: map[string]any{"org": "Smith & Co"}}).MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	var back Claims
	if !decodeClaimsFast(b, &back) || back.Issuer != "a<b>&c" || back.Extra["org"] != "Smith & Co" {
		t.Errorf("fast decode of %s: %+v", b, back)
	}
}

// FuzzClaimsFastDecode: whatever the fast decoder accepts, encoding/json
// decodes to the same claims.
func FuzzClaimsFastDecode(f *testing.F) {
	for _, b := range claimSetSeeds(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		checkFastDecode(t, b)
	})
}

// FuzzClaimsAppend: claims decoded from arbitrary input encode with
// appendClaims to what encoding/json's encoding means.
func FuzzClaimsAppend(f *testing.F) {
	for _, b := range claimSetSeeds(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var c Claims
		if c.UnmarshalJSON(bytes.TrimSpace(b)) != nil {
			return
		}
		checkAppend(t, &c)
	})
}
