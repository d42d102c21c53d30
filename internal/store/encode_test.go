package store

import (
	"bytes"
	"testing"
)

func TestChainRoundTrip(t *testing.T) {
	t.Parallel()
	a, b := newCertDER(t, "a"), newCertDER(t, "b")
	for _, tc := range []struct {
		name  string
		chain [][]byte
	}{
		{"nil", nil},
		{"one", [][]byte{a}},
		{"two", [][]byte{a, b}},
		{"sixteen", [][]byte{a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			enc, err := encodeChain(tc.chain)
			mustNil(t, err)
			got, err := decodeChain(enc)
			mustNil(t, err)
			equal(t, "chain", got, tc.chain)
		})
	}
}

func TestDecodeChainMalformed(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"short length", []byte{0, 0, 1}},
		{"zero length", []byte{0, 0, 0, 0}},
		{"truncated", []byte{0, 0, 0, 3, 1, 2}},
		{"huge length", []byte{0xff, 0xff, 0xff, 0xff, 1}},
		{"seventeen", bytes.Repeat([]byte{0, 0, 0, 1, 7}, 17)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeChain(tc.in)
			wantErr(t, err, "malformed stored certificate chain")
		})
	}
}

// FuzzDecodeChain checks that decodeChain never panics and accepts exactly
// what encodeChain produces.
func FuzzDecodeChain(f *testing.F) {
	a, b := newCertDER(f, "a"), newCertDER(f, "b")
	for _, chain := range [][][]byte{{a}, {a, b}, {b, a, b}} {
		enc, err := encodeChain(chain)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(enc)
		f.Add(enc[:len(enc)-1])
	}
	f.Add([]byte{})
	f.Add([]byte{0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		chain, err := decodeChain(in)
		if err != nil {
			return
		}
		enc, err := encodeChain(chain)
		if err != nil {
			t.Fatalf("decoded chain does not encode: %v", err)
		}
		if !bytes.Equal(enc, in) {
			t.Fatalf("re-encoding %x gives %x", in, enc)
		}
	})
}
