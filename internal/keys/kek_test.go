package keys

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// randomKey returns 32 random bytes that are not all base64 characters.
func randomKey(t testing.TB) []byte {
	t.Helper()
	for {
		k := make([]byte, kekSize)
		rand.Read(k)
		if !isBase64Text(k) {
			return k
		}
	}
}

func newTestKEK(t testing.TB) *KEK {
	t.Helper()
	k, err := NewKEK(randomKey(t))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writeFile(t *testing.T, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "kek")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNewKEK(t *testing.T) {
	for _, n := range []int{0, 16, 31, 33, 64} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			_, err := NewKEK(make([]byte, n))
			want := fmt.Sprintf("keys: key-encryption key is %d bytes, want 32", n)
			if err == nil || err.Error() != want {
				t.Fatalf("err = %v, want %q", err, want)
			}
		})
	}
	key := bytes.Repeat([]byte{7}, 32)
	k, err := NewKEK(key)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(append([]byte("postern kek id"), key...))
	if want := hex.EncodeToString(sum[:8]); k.ID() != want {
		t.Errorf("ID = %s, want %s", k.ID(), want)
	}
	key[0] = 8 // NewKEK keeps its own copy
	if k2, _ := NewKEK(bytes.Repeat([]byte{7}, 32)); k2.ID() != k.ID() {
		t.Error("ID changed after caller modified its key slice")
	}
	var logs bytes.Buffer
	slog.New(slog.NewTextHandler(&logs, nil)).Info("x", "kek", k)
	if !strings.Contains(logs.String(), "kek="+k.ID()+"\n") {
		t.Errorf("logged %q", logs.String())
	}
	for _, s := range []string{fmt.Sprint(k), fmt.Sprintf("%+v", k), fmt.Sprintf("%#v", k)} {
		if s != "KEK("+k.ID()+")" {
			t.Errorf("formatted KEK = %q", s)
		}
	}
}

func TestLoadKEK(t *testing.T) {
	key := randomKey(t)
	kek, _ := NewKEK(key)
	std := base64.StdEncoding.EncodeToString(key)
	url := base64.URLEncoding.EncodeToString(key)
	rawStd := base64.RawStdEncoding.EncodeToString(key)
	rawURL := base64.RawURLEncoding.EncodeToString(key)
	short := base64.StdEncoding.EncodeToString(key[:31])
	env := map[string]string{
		"KEK_STD":   std + "\n",
		"KEK_RAW":   rawURL,
		"KEK_SHORT": short,
		"KEK_JUNK":  "not base64!",
	}
	getenv := func(k string) string { return env[k] }
	missing := filepath.Join(t.TempDir(), "nope")

	tests := []struct {
		name    string
		cfg     KEKConfig
		wantErr string
	}{
		{name: "file raw", cfg: KEKConfig{File: writeFile(t, key)}},
		{name: "file std", cfg: KEKConfig{File: writeFile(t, []byte(std))}},
		{name: "file std newline", cfg: KEKConfig{File: writeFile(t, []byte(std+"\n"))}},
		{name: "file std crlf", cfg: KEKConfig{File: writeFile(t, []byte(std+"\r\n"))}},
		{name: "file url", cfg: KEKConfig{File: writeFile(t, []byte(url+"\n"))}},
		{name: "file raw std", cfg: KEKConfig{File: writeFile(t, []byte(rawStd))}},
		{name: "file raw url", cfg: KEKConfig{File: writeFile(t, []byte(rawURL+"\n"))}},
		{name: "file wins over env", cfg: KEKConfig{File: writeFile(t, key), Env: "KEK_JUNK", Getenv: getenv}},
		{name: "env std", cfg: KEKConfig{Env: "KEK_STD", Getenv: getenv}},
		{name: "env raw url", cfg: KEKConfig{Env: "KEK_RAW", Getenv: getenv}},
		{name: "file 31 bytes", cfg: KEKConfig{File: writeFile(t, key[:31])},
			wantErr: "is neither 32 raw bytes nor base64"},
		{name: "file 33 bytes", cfg: KEKConfig{File: writeFile(t, append(bytes.Clone(key), 0))},
			wantErr: "is neither 32 raw bytes nor base64"},
		{name: "file base64 of 31 bytes", cfg: KEKConfig{File: writeFile(t, []byte(short+"\n"))},
			wantErr: "decodes to 31 bytes, want 32"},
		{name: "file base64 of 24 bytes", cfg: KEKConfig{File: writeFile(t, []byte(base64.StdEncoding.EncodeToString(key[:24])))},
			wantErr: "holds 32 base64 characters (24 bytes), want 32 bytes"},
		{name: "file bad base64", cfg: KEKConfig{File: writeFile(t, []byte(std[:40]+"===="))},
			wantErr: "is not valid base64"},
		{name: "file mixed alphabets", cfg: KEKConfig{File: writeFile(t, []byte(strings.Repeat("+-", 22)))},
			wantErr: "is not valid base64"},
		{name: "file empty", cfg: KEKConfig{File: writeFile(t, nil)},
			wantErr: "is neither 32 raw bytes nor base64"},
		{name: "file too large", cfg: KEKConfig{File: writeFile(t, bytes.Repeat([]byte("A"), maxKEKFile+1))},
			wantErr: "is larger than 4096 bytes"},
		{name: "file missing", cfg: KEKConfig{File: missing},
			wantErr: "keys: key-encryption key file: open " + missing + ": no such file or directory"},
		{name: "env unset", cfg: KEKConfig{Env: "KEK_UNSET", Getenv: getenv},
			wantErr: "keys: environment variable KEK_UNSET is empty or unset"},
		{name: "env short", cfg: KEKConfig{Env: "KEK_SHORT", Getenv: getenv},
			wantErr: "keys: environment variable KEK_SHORT: decodes to 31 bytes, want 32"},
		{name: "env junk", cfg: KEKConfig{Env: "KEK_JUNK", Getenv: getenv},
			wantErr: "keys: environment variable KEK_JUNK: is neither 32 raw bytes nor base64"},
		{name: "nothing", cfg: KEKConfig{},
			wantErr: "keys: no key-encryption key configured: set a key file, an environment variable or a data directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := LoadKEK(tt.cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.HasSuffix(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want suffix %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), std) || strings.Contains(err.Error(), rawURL) {
					t.Fatalf("error leaks key: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.ID() != kek.ID() {
				t.Fatalf("ID = %s, want %s", got.ID(), kek.ID())
			}
		})
	}
}

func TestLoadKEKFileModeWarning(t *testing.T) {
	p := writeFile(t, randomKey(t))
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	if _, err := LoadKEK(KEKConfig{File: p, Logger: slog.New(slog.NewTextHandler(&logs, nil))}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "readable by group or others") {
		t.Fatalf("no warning in %q", logs.String())
	}
}

func TestLoadKEKDevDefault(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	k1, err := LoadKEK(KEKConfig{DataDir: dir, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "generated a development key-encryption key") {
		t.Fatalf("no generation warning: %q", logs.String())
	}
	fi, err := os.Stat(filepath.Join(dir, "kek"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode = %v, want 0600", fi.Mode().Perm())
	}
	// The file is base64, so an operator can move it to an environment variable.
	b, _ := os.ReadFile(filepath.Join(dir, "kek"))
	k3, err := LoadKEK(KEKConfig{Env: "K", Getenv: func(string) string { return string(b) }})
	if err != nil || k3.ID() != k1.ID() {
		t.Fatalf("env from dev file: %v, %v", k3, err)
	}
	logs.Reset()
	k2, err := LoadKEK(KEKConfig{DataDir: dir, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if k2.ID() != k1.ID() {
		t.Fatalf("second load ID %s, want %s", k2.ID(), k1.ID())
	}
	if !strings.Contains(logs.String(), "using the development key-encryption key") {
		t.Fatalf("no use warning: %q", logs.String())
	}
	if strings.Contains(logs.String(), strings.TrimSpace(string(b))) {
		t.Fatal("log leaks the key")
	}
}

func TestSealOpen(t *testing.T) {
	k := newTestKEK(t)
	other := newTestKEK(t)
	secret := []byte("very secret private key material")
	ad := []byte("record-1")
	sealed, err := k.Seal(secret, ad)
	if err != nil {
		t.Fatal(err)
	}
	if len(sealed) != nonceSize+len(secret)+tagSize {
		t.Fatalf("sealed length %d", len(sealed))
	}
	if bytes.Contains(sealed, secret) {
		t.Fatal("sealed holds the plaintext")
	}
	again, _ := k.Seal(secret, ad)
	if bytes.Equal(again[:nonceSize], sealed[:nonceSize]) {
		t.Fatal("nonce repeated")
	}
	got, err := k.Open(sealed, ad)
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("Open = %q, %v", got, err)
	}

	const authErr = "keys: sealed data does not authenticate (wrong key-encryption key, wrong record, or modified)"
	tests := []struct {
		name    string
		kek     *KEK
		sealed  []byte
		ad      []byte
		wantErr string
	}{
		{"wrong additional data", k, sealed, []byte("record-2"), authErr},
		{"no additional data", k, sealed, nil, authErr},
		{"other kek", other, sealed, ad, authErr},
		{"flipped nonce", k, flip(sealed, 0), ad, authErr},
		{"flipped ciphertext", k, flip(sealed, nonceSize+3), ad, authErr},
		{"flipped tag", k, flip(sealed, len(sealed)-1), ad, authErr},
		{"truncated", k, sealed[:len(sealed)-1], ad, authErr},
		{"too short", k, sealed[:nonceSize+tagSize-1], ad, "keys: sealed data of 27 bytes is too short"},
		{"empty", k, nil, ad, "keys: sealed data of 0 bytes is too short"},
		{"too long", k, make([]byte, maxSealed+1), ad, "keys: sealed data of 65537 bytes exceeds 65536"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.kek.Open(tt.sealed, tt.ad)
			if err == nil || err.Error() != tt.wantErr || got != nil {
				t.Fatalf("Open = %q, %v; want error %q", got, err, tt.wantErr)
			}
		})
	}
	if _, err := k.Seal(make([]byte, maxSealed), nil); err == nil ||
		err.Error() != "keys: seal: plaintext of 65536 bytes exceeds 65508" {
		t.Fatalf("Seal oversize: %v", err)
	}
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 1
	return c
}

func TestDerive(t *testing.T) {
	key := randomKey(t)
	k, _ := NewKEK(key)
	k2, _ := NewKEK(key)
	a, b := k.Derive("client-secret"), k.Derive("other")
	if len(a) != 32 || len(b) != 32 {
		t.Fatal("derived key length")
	}
	if !bytes.Equal(a, k2.Derive("client-secret")) {
		t.Fatal("Derive is not deterministic")
	}
	if bytes.Equal(a, b) || bytes.Equal(a, key) {
		t.Fatal("derived keys not independent")
	}
}

func FuzzParseKEK(f *testing.F) {
	key := bytes.Repeat([]byte{0xf0}, 32)
	f.Add(key)
	f.Add([]byte(base64.StdEncoding.EncodeToString(key) + "\n"))
	f.Add([]byte(base64.RawURLEncoding.EncodeToString(key)))
	f.Add([]byte(base64.StdEncoding.EncodeToString(key[:24])))
	f.Add([]byte(""))
	f.Add([]byte("===="))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := parseKEK(b)
		if err != nil {
			if k != nil {
				t.Fatal("key with error")
			}
			return
		}
		if len(k) != kekSize {
			t.Fatalf("parsed %d bytes", len(k))
		}
	})
}

func FuzzOpen(f *testing.F) {
	k, _ := NewKEK(bytes.Repeat([]byte{1}, 32))
	s, _ := k.Seal([]byte("seed"), []byte("ad"))
	f.Add(s, []byte("ad"))
	f.Add([]byte{}, []byte{})
	f.Add(make([]byte, 28), []byte("ad"))
	f.Fuzz(func(t *testing.T, sealed, ad []byte) {
		pt, err := k.Open(sealed, ad)
		if err == nil && len(pt) != len(sealed)-nonceSize-tagSize {
			t.Fatal("plaintext length")
		}
	})
}

// TestLoadKEKDevDefaultConcurrent: processes starting together on a new
// data directory agree on one development key, and no temporary file is
// left behind.
func TestLoadKEKDevDefaultConcurrent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	const n = 8
	ids := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k, err := LoadKEK(KEKConfig{DataDir: dir, Logger: slog.New(slog.DiscardHandler)})
			errs[i] = err
			if err == nil {
				ids[i] = k.ID()
			}
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil || ids[i] != ids[0] {
			t.Fatalf("loader %d: id %q, error %v; loader 0: %q", i, ids[i], errs[i], ids[0])
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "kek" {
		t.Errorf("data directory holds %v, want only kek", entries)
	}
}
