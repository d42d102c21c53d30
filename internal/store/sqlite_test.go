package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// openSQLiteFile opens a store in a new file under t.TempDir.
func openSQLiteFile(t testing.TB) Store {
	t.Helper()
	s, err := OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "postern.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestSQLiteFile(t *testing.T) {
	t.Parallel()
	testStore(t, func(t *testing.T) Store { return openSQLiteFile(t) })
}

func TestSQLiteMemory(t *testing.T) {
	t.Parallel()
	testStore(t, func(t *testing.T) Store {
		s, err := Open(context.Background(), "sqlite::memory:")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}

// pragma returns the value of a PRAGMA on the store's writer connection.
func pragma(t *testing.T, s Store, name string) string {
	t.Helper()
	var v string
	if err := s.(*sqlStore).w.QueryRow("PRAGMA " + name).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestSQLiteSettings(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "postern.db")
	s, err := OpenSQLite(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mustNil(t, s.UseJTI(context.Background(), "iss", "j", base)) // creates the -wal file

	for name, want := range map[string]string{
		"journal_mode": "wal",
		"foreign_keys": "1",
		"busy_timeout": "10000",
		"synchronous":  "2",
	} {
		if got := pragma(t, s, name); got != want {
			t.Errorf("PRAGMA %s = %q, want %q", name, got, want)
		}
	}
	var qo string
	mustNil(t, s.(*sqlStore).r.QueryRow("PRAGMA query_only").Scan(&qo))
	equal(t, "reader query_only", qo, "1")

	for _, name := range []string{"postern.db", "postern.db-wal", "postern.db-shm"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != 0o600 {
			t.Errorf("%s: mode %v, want 0600", name, got)
		}
	}
}

func TestSQLiteReopen(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "postern.db")
	dsn := "sqlite://" + path

	s, err := Open(ctx, dsn)
	mustNil(t, err)
	key := SigningKey{ID: "k1", Algorithm: "ES256", Public: []byte{1}, Sealed: []byte{2}, KEKID: "kek", CreatedAt: base}
	mustNil(t, s.PutSigningKey(ctx, key))
	mustNil(t, s.UseJTI(ctx, "iss", "j1", base))
	mustNil(t, s.PutJoinToken(ctx, JoinToken{Hash: "h", SPIFFEID: "spiffe://x/y", ExpiresAt: base.Add(time.Hour)}))
	mustNil(t, s.Close())

	for i := range 2 { // the second reopen finds nothing to migrate either
		s, err = Open(ctx, dsn)
		mustNil(t, err)
		keys, err := s.SigningKeys(ctx)
		mustNil(t, err)
		equal(t, "keys", keys, []SigningKey{utcKey(key)})
		wantErr(t, s.UseJTI(ctx, "iss", "j1", base), "store: identifier already used")
		if i == 0 {
			_, err = s.ConsumeJoinToken(ctx, "h", base)
			mustNil(t, err)
		} else {
			_, err = s.ConsumeJoinToken(ctx, "h", base)
			wantErr(t, err, "store: not found")
		}
		var versions int
		mustNil(t, s.(*sqlStore).r.QueryRow("SELECT COUNT(*) FROM schema_migrations").Scan(&versions))
		equal(t, "schema_migrations rows", versions, 2)
		mustNil(t, s.Close())
	}
}

func TestOpenSQLiteErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing", "postern.db")
	for _, tc := range []struct {
		name, path, want string
	}{
		{"empty path", "", "store: open sqlite: empty path"},
		{"missing directory", missing, "store: open sqlite: open " + missing + ": no such file or directory"},
		{"a directory", dir, "store: open sqlite: open " + dir + ": is a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := OpenSQLite(context.Background(), tc.path)
			wantErr(t, err, tc.want)
			if s != nil {
				t.Fatal("store returned with an error")
			}
		})
	}
	if _, err := os.Stat(filepath.Dir(missing)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the missing directory was created: %v", err)
	}
}

// TestSQLitePathEscaping checks that characters the driver would read as
// the start of its parameters are part of the file name.
func TestSQLitePathEscaping(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "a b?_pragma=x#%41.db")
	s, err := OpenSQLite(context.Background(), path)
	mustNil(t, err)
	mustNil(t, s.UseJTI(context.Background(), "iss", "j", base))
	mustNil(t, s.Close())
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("database not at %q: %v", path, err)
	}
	entries, err := os.ReadDir(dir)
	mustNil(t, err)
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "a b?_pragma=x#%41.db") {
			t.Errorf("unexpected file %q", e.Name())
		}
	}
}

// TestSQLiteTwoStoresOneFile is two processes sharing one database: their
// writers contend for the file lock and must wait, not fail.
func TestSQLiteTwoStoresOneFile(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "postern.db")
	var stores [2]Store
	var wg sync.WaitGroup
	var openErrs [2]error
	for i := range stores {
		wg.Go(func() { stores[i], openErrs[i] = OpenSQLite(ctx, path) })
	}
	wg.Wait()
	for i, err := range openErrs {
		mustNil(t, err)
		defer stores[i].Close()
	}

	const jtis, perJTI = 20, 4
	var mu sync.Mutex
	wins := map[string]int{}
	for i := range jtis * perJTI {
		wg.Go(func() {
			jti := fmt.Sprint(i % jtis)
			err := stores[i%2].UseJTI(ctx, "iss", jti, base)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins[jti]++
			case !errors.Is(err, ErrReplay):
				t.Errorf("UseJTI: %v", err)
			}
		})
	}
	wg.Wait()
	for i := range jtis {
		if n := wins[fmt.Sprint(i)]; n != 1 {
			t.Errorf("jti %d accepted %d times", i, n)
		}
	}
}

// TestSQLiteConcurrentMixed runs readers and writers of every kind together.
func TestSQLiteConcurrentMixed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openSQLiteFile(t)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 20 {
				id := fmt.Sprintf("%d-%d", g, i)
				for _, err := range []error{
					s.PutSigningKey(ctx, SigningKey{ID: id, Algorithm: "ES256", CreatedAt: base}),
					s.PutRevocation(ctx, Revocation{Kind: "jti", ID: id, ExpiresAt: base.Add(time.Duration(i) * time.Second)}),
					s.UseJTI(ctx, "iss", id, base),
					s.PutJoinToken(ctx, JoinToken{Hash: id, SPIFFEID: "spiffe://x/y", ExpiresAt: base.Add(time.Hour)}),
					func() error { _, err := s.ConsumeJoinToken(ctx, id, base); return err }(),
					func() error { _, err := s.SigningKeys(ctx); return err }(),
					func() error { _, err := s.Revocations(ctx, base); return err }(),
					s.Purge(ctx, base.Add(10*time.Second)),
				} {
					if err != nil {
						t.Errorf("goroutine %d op %d: %v", g, i, err)
					}
				}
			}
		})
	}
	wg.Wait()
	keys, err := s.SigningKeys(ctx)
	mustNil(t, err)
	equal(t, "keys", len(keys), 8*20)
}
