package keys

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
)

const (
	kekSize = 32
	// maxKEKFile bounds what LoadKEK reads from a key file.
	maxKEKFile = 4 << 10
	// maxSealed bounds the plaintext Seal accepts and the blob Open reads:
	// what is sealed here is key material, a few kilobytes at most.
	maxSealed = 64 << 10
	nonceSize = 12
	tagSize   = 16
	// devKEKFile is the name of the development KEK in the data directory.
	devKEKFile = "kek"
)

// errOpen is returned by Open for every blob that does not authenticate: a
// wrong key, wrong additional data or a modified blob look the same.
var errOpen = errors.New("keys: sealed data does not authenticate (wrong key-encryption key, wrong record, or modified)")

// KEK seals secret material (signing keys, CA keys) at rest with AES-256-GCM.
// It is safe for concurrent use. Its String and LogValue show only its id.
type KEK struct {
	id   string
	aead cipher.AEAD
	key  []byte // kept for Derive only; never printed
}

// KEKConfig says where the key-encryption key comes from. The first of File,
// Env and DataDir that is set is used.
type KEKConfig struct {
	// File is the path to a file holding the key: 32 raw bytes, or base64
	// (standard or URL alphabet, padded or not) of 32 bytes; a trailing
	// newline is fine.
	File string
	// Env is the name of an environment variable holding base64 of 32 bytes,
	// used when File is empty.
	Env string
	// DataDir is the development default, used when File and Env are both
	// empty: the key is read from <DataDir>/kek, generated there (mode 0600)
	// if missing, and a warning is logged.
	DataDir string
	// Getenv reads the environment; nil means os.Getenv.
	Getenv func(string) string
	// Logger receives the development-key warning; nil discards.
	Logger *slog.Logger
}

// LoadKEK loads the key-encryption key cfg points at.
func LoadKEK(cfg KEKConfig) (*KEK, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	getenv := cfg.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	switch {
	case cfg.File != "":
		key, err := readKEKFile(cfg.File, log)
		if err != nil {
			return nil, err
		}
		return NewKEK(key)
	case cfg.Env != "":
		v := getenv(cfg.Env)
		if v == "" {
			return nil, fmt.Errorf("keys: environment variable %s is empty or unset", cfg.Env)
		}
		if len(v) > maxKEKFile {
			return nil, fmt.Errorf("keys: environment variable %s is too long for a key-encryption key", cfg.Env)
		}
		key, err := decodeKEKBase64([]byte(v))
		if err != nil {
			return nil, fmt.Errorf("keys: environment variable %s: %w", cfg.Env, err)
		}
		return NewKEK(key)
	case cfg.DataDir != "":
		return devKEK(cfg.DataDir, log)
	default:
		return nil, errors.New("keys: no key-encryption key configured: set a key file, an environment variable or a data directory")
	}
}

// NewKEK returns a KEK for a 32-byte key. It keeps a copy of key.
func NewKEK(key []byte) (*KEK, error) {
	if len(key) != kekSize {
		return nil, fmt.Errorf("keys: key-encryption key is %d bytes, want %d", len(key), kekSize)
	}
	k := bytes.Clone(key)
	block, err := aes.NewCipher(k)
	if err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	h := sha256.New()
	h.Write([]byte("postern kek id"))
	h.Write(k)
	return &KEK{id: hex.EncodeToString(h.Sum(nil)[:8]), aead: aead, key: k}, nil
}

// ID returns a stable, non-secret identifier of the key: the first 8 bytes,
// in hex, of SHA-256("postern kek id" || key).
func (k *KEK) ID() string { return k.id }

// String returns the key's id, never the key.
func (k *KEK) String() string { return "KEK(" + k.id + ")" }

// GoString returns the key's id, never the key.
func (k *KEK) GoString() string { return k.String() }

// LogValue logs the key's id, never the key.
func (k *KEK) LogValue() slog.Value { return slog.StringValue(k.id) }

// Seal encrypts and authenticates plaintext, binding additionalData, and
// returns a random 96-bit nonce followed by the ciphertext and tag.
func (k *KEK) Seal(plaintext, additionalData []byte) ([]byte, error) {
	if len(plaintext) > maxSealed-nonceSize-tagSize {
		return nil, fmt.Errorf("keys: seal: plaintext of %d bytes exceeds %d", len(plaintext), maxSealed-nonceSize-tagSize)
	}
	out := make([]byte, nonceSize, nonceSize+len(plaintext)+tagSize)
	if _, err := rand.Read(out); err != nil {
		return nil, fmt.Errorf("keys: seal: %w", err)
	}
	return k.aead.Seal(out, out, plaintext, additionalData), nil
}

// Open authenticates and decrypts a blob made by Seal with the same
// additionalData. Its errors never contain the blob, the plaintext or the key.
func (k *KEK) Open(sealed, additionalData []byte) ([]byte, error) {
	if len(sealed) > maxSealed {
		return nil, fmt.Errorf("keys: sealed data of %d bytes exceeds %d", len(sealed), maxSealed)
	}
	if len(sealed) < nonceSize+tagSize {
		return nil, fmt.Errorf("keys: sealed data of %d bytes is too short", len(sealed))
	}
	pt, err := k.aead.Open(nil, sealed[:nonceSize], sealed[nonceSize:], additionalData)
	if err != nil {
		return nil, errOpen
	}
	return pt, nil
}

// Derive returns a 32-byte sub-key for label (HKDF-SHA256 of the KEK), for
// uses other than sealing such as keyed hashing of client secrets. Distinct
// labels give independent keys.
func (k *KEK) Derive(label string) []byte {
	out, err := hkdf.Key(sha256.New, k.key, []byte("postern kek derive"), label, 32)
	if err != nil { // only possible for lengths over 255*32 bytes
		panic("keys: hkdf: " + err.Error())
	}
	return out
}

// readKEKFile reads a key file, warning when others may read it.
func readKEKFile(path string, log *slog.Logger) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("keys: key-encryption key file: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Mode().Perm()&0o077 != 0 {
		log.Warn("keys: key-encryption key file is readable by group or others", "path", path, "mode", fi.Mode().Perm().String())
	}
	b, err := io.ReadAll(io.LimitReader(f, maxKEKFile+1))
	if err != nil {
		return nil, fmt.Errorf("keys: key-encryption key file %s: %w", path, err)
	}
	defer clear(b)
	if len(b) > maxKEKFile {
		return nil, fmt.Errorf("keys: key-encryption key file %s is larger than %d bytes", path, maxKEKFile)
	}
	key, err := parseKEK(b)
	if err != nil {
		return nil, fmt.Errorf("keys: key-encryption key file %s: %w", path, err)
	}
	return key, nil
}

// parseKEK reads the contents of a key file: 32 raw bytes, or base64 of 32
// bytes with optional trailing white space. Its errors hold no key bytes.
func parseKEK(b []byte) ([]byte, error) {
	if len(b) == kekSize {
		if isBase64Text(b) {
			// Random bytes are all base64 characters with probability
			// 2^-64: this is base64 of 24 bytes, a mistake.
			return nil, errors.New("holds 32 base64 characters (24 bytes), want 32 bytes")
		}
		return bytes.Clone(b), nil
	}
	return decodeKEKBase64(b)
}

// decodeKEKBase64 decodes base64 (either alphabet, padded or not) of exactly
// 32 bytes, ignoring surrounding white space.
func decodeKEKBase64(b []byte) ([]byte, error) {
	s := bytes.TrimSpace(b)
	if !isBase64Text(s) {
		return nil, errors.New("is neither 32 raw bytes nor base64")
	}
	var enc *base64.Encoding
	switch {
	case bytes.ContainsAny(s, "-_"):
		enc = base64.URLEncoding
	default:
		enc = base64.StdEncoding
	}
	if !bytes.HasSuffix(s, []byte("=")) {
		enc = enc.WithPadding(base64.NoPadding)
	}
	key := make([]byte, enc.DecodedLen(len(s)))
	n, err := enc.Strict().Decode(key, s)
	if err != nil {
		clear(key)
		return nil, errors.New("is not valid base64")
	}
	if n != kekSize {
		clear(key)
		return nil, fmt.Errorf("decodes to %d bytes, want %d", n, kekSize)
	}
	return key[:n], nil
}

// isBase64Text reports whether b is non-empty and only base64 characters of
// either alphabet plus padding.
func isBase64Text(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9',
			c == '+', c == '/', c == '-', c == '_', c == '=':
		default:
			return false
		}
	}
	return true
}

// writeNewFile creates path with data (mode 0600) unless it exists
// (fs.ErrExist): through a synced temporary file and a hard link, so path
// never holds partial data.
func writeNewFile(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".kek-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o600)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Link(tmp, path); err != nil {
		return err // fs.ErrExist when another process won
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync() // the new name survives a crash
		d.Close()
	}
	return nil
}

// devKEK loads or creates the development key <dir>/kek.
func devKEK(dir string, log *slog.Logger) (*KEK, error) {
	path := filepath.Join(dir, devKEKFile)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("keys: data directory: %w", err)
	}
	key := make([]byte, kekSize)
	defer clear(key)
	rand.Read(key)
	// Written in full and synced under a temporary name, then linked into
	// place: a crash never leaves a half-written key, and of two processes
	// starting at once one creates the key and the other reads it.
	err := writeNewFile(path, []byte(base64.StdEncoding.EncodeToString(key)+"\n"))
	switch {
	case err == nil:
		log.Warn("keys: generated a development key-encryption key in the data directory; configure a key file or environment variable for production", "path", path)
		return NewKEK(key)
	case errors.Is(err, fs.ErrExist):
		b, err := readKEKFile(path, log)
		if err != nil {
			return nil, err
		}
		defer clear(b)
		log.Warn("keys: using the development key-encryption key from the data directory; configure a key file or environment variable for production", "path", path)
		return NewKEK(b)
	default:
		return nil, fmt.Errorf("keys: creating development key-encryption key: %w", err)
	}
}
