package store

import (
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"
	"unicode/utf8"
)

// Bounds on what the store accepts. Records come from the control plane's own
// code, but some fields (issuers, jtis, SPIFFE IDs) originate in untrusted
// requests, so every field is bounded.
const (
	// maxTextLen bounds identifiers and other text fields; 2048 bytes is the
	// longest SPIFFE ID the SPIFFE specification allows.
	maxTextLen = 2048
	// maxBlobLen bounds each byte field (a certificate, a sealed key).
	maxBlobLen = 64 << 10
	// maxChainLen bounds the number of certificates in Authority.ChainDER.
	maxChainLen = 16
)

// timeArg converts t to its stored form: Unix nanoseconds, or NULL for the
// zero time. Times outside the int64 nanosecond range are rejected rather than
// silently wrapped.
func timeArg(field string, t time.Time) (any, error) {
	if t.IsZero() {
		return nil, nil
	}
	// An int64 of Unix nanoseconds holds the years 1677 to 2262.
	if t.Before(time.Unix(0, math.MinInt64)) || t.After(time.Unix(0, math.MaxInt64)) {
		return nil, fmt.Errorf("%s: time outside the storable range (years 1677 to 2262)", field)
	}
	return t.UnixNano(), nil
}

// nowArg is timeArg for a "now" argument, which must not be zero.
func nowArg(now time.Time) (int64, error) {
	if now.IsZero() {
		return 0, errors.New("now is the zero time")
	}
	v, err := timeArg("now", now)
	if err != nil {
		return 0, err
	}
	return v.(int64), nil
}

// scanTime converts a stored time back: NULL is the zero time, anything else
// a UTC time with nanosecond precision.
func scanTime(v sql.NullInt64) time.Time {
	if !v.Valid {
		return time.Time{}
	}
	return time.Unix(0, v.Int64).UTC()
}

// bytesArg converts b to its stored form: NULL when empty.
func bytesArg(field string, b []byte) (any, error) {
	if len(b) == 0 {
		return nil, nil
	}
	if len(b) > maxBlobLen {
		return nil, fmt.Errorf("%s is longer than %d bytes", field, maxBlobLen)
	}
	return b, nil
}

// scanBytes normalises a scanned byte field: empty is nil. The result never
// aliases driver memory.
func scanBytes(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

// checkText validates a text field: bounded, valid UTF-8 without NUL (which
// PostgreSQL cannot store), and non-empty when required.
func checkText(field, s string, required bool) error {
	switch {
	case s == "" && required:
		return fmt.Errorf("%s is empty", field)
	case len(s) > maxTextLen:
		return fmt.Errorf("%s is longer than %d bytes", field, maxTextLen)
	case !utf8.ValidString(s):
		return fmt.Errorf("%s is not valid UTF-8", field)
	case strings.IndexByte(s, 0) >= 0:
		return fmt.Errorf("%s contains a NUL byte", field)
	}
	return nil
}

// encodeChain encodes a certificate chain as a sequence of 4-byte big-endian
// lengths each followed by that many bytes. An empty chain encodes as nil.
func encodeChain(chain [][]byte) ([]byte, error) {
	if len(chain) == 0 {
		return nil, nil
	}
	if len(chain) > maxChainLen {
		return nil, fmt.Errorf("chain has more than %d certificates", maxChainLen)
	}
	n := 0
	for i, c := range chain {
		if len(c) == 0 {
			return nil, fmt.Errorf("chain certificate %d is empty", i)
		}
		if len(c) > maxBlobLen {
			return nil, fmt.Errorf("chain certificate %d is longer than %d bytes", i, maxBlobLen)
		}
		n += 4 + len(c)
	}
	out := make([]byte, 0, n)
	for _, c := range chain {
		out = binary.BigEndian.AppendUint32(out, uint32(len(c)))
		out = append(out, c...)
	}
	return out, nil
}

// errBadChain reports a stored chain that does not decode; it means the
// database was altered outside the store.
var errBadChain = errors.New("malformed stored certificate chain")

// decodeChain reverses encodeChain. It accepts exactly what encodeChain
// produces and copies every certificate out of b.
func decodeChain(b []byte) ([][]byte, error) {
	if len(b) == 0 {
		return nil, nil
	}
	var chain [][]byte
	for len(b) > 0 {
		if len(chain) == maxChainLen || len(b) < 4 {
			return nil, errBadChain
		}
		n := binary.BigEndian.Uint32(b)
		b = b[4:]
		if n == 0 || n > maxBlobLen || uint64(n) > uint64(len(b)) {
			return nil, errBadChain
		}
		chain = append(chain, append([]byte(nil), b[:n]...))
		b = b[n:]
	}
	return chain, nil
}
