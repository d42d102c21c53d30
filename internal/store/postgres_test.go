package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
)

// pgDSN returns the DSN of the test PostgreSQL server, or skips the test.
func pgDSN(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv("POSTERN_TEST_POSTGRES")
	if dsn == "" {
		t.Skip("POSTERN_TEST_POSTGRES is unset; skipping PostgreSQL tests")
	}
	return dsn
}

// newPGSchema creates a uniquely named schema, drops it when the test ends,
// and returns a DSN whose search_path is that schema, so that tests run in
// parallel with each other and with other packages' tests.
func newPGSchema(t testing.TB) string {
	t.Helper()
	ctx := context.Background()
	dsn := pgDSN(t)
	schema := "postern_test_" + hex.EncodeToString(randomBytes(t, 8))
	exec := func(sql string) error {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, sql)
		return err
	}
	if err := exec("CREATE SCHEMA " + schema); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		if err := exec("DROP SCHEMA " + schema + " CASCADE"); err != nil {
			t.Errorf("drop schema: %v", err)
		}
	})
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			t.Fatalf("POSTERN_TEST_POSTGRES: %v", err)
		}
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		return u.String()
	}
	return dsn + " search_path=" + schema
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// openPG opens a store on dsn and closes it when the test ends.
func openPG(t testing.TB, dsn string) Store {
	t.Helper()
	s, err := Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestPostgres(t *testing.T) {
	t.Parallel()
	pgDSN(t)
	testStore(t, func(t *testing.T) Store { return openPG(t, newPGSchema(t)) })
}

// TestPostgresReplicas opens several stores on one schema at once, as
// replicas starting together do: migrations run once, and the replicas
// share UseJTI and ConsumeJoinToken atomically.
func TestPostgresReplicas(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := newPGSchema(t)
	const replicas = 4
	stores := make([]Store, replicas)
	errs := make([]error, replicas)
	var wg sync.WaitGroup
	for i := range replicas {
		wg.Go(func() { stores[i], errs[i] = Open(ctx, dsn) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("replica %d: %v", i, err)
		}
		t.Cleanup(func() { _ = stores[i].Close() })
	}
	var versions int
	mustNil(t, stores[0].(*sqlStore).r.QueryRow("SELECT COUNT(*) FROM schema_migrations").Scan(&versions))
	equal(t, "schema_migrations rows", versions, 2)

	mustNil(t, stores[0].PutJoinToken(ctx, JoinToken{Hash: "shared", SPIFFEID: "spiffe://x/y", ExpiresAt: base.Add(1e12)}))
	const jtis, perJTI = 10, 8
	var mu sync.Mutex
	wins := map[string]int{}
	joins := 0
	for i := range jtis * perJTI {
		wg.Go(func() {
			jti := fmt.Sprint(i % jtis)
			s := stores[i%replicas]
			err := s.UseJTI(ctx, "iss", jti, base)
			_, jerr := s.ConsumeJoinToken(ctx, "shared", base)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins[jti]++
			case !errors.Is(err, ErrReplay):
				t.Errorf("UseJTI: %v", err)
			}
			switch {
			case jerr == nil:
				joins++
			case !errors.Is(jerr, ErrNotFound):
				t.Errorf("ConsumeJoinToken: %v", jerr)
			}
		})
	}
	wg.Wait()
	for i := range jtis {
		if n := wins[fmt.Sprint(i)]; n != 1 {
			t.Errorf("jti %d accepted %d times", i, n)
		}
	}
	equal(t, "join token uses", joins, 1)
}

func TestPostgresReopen(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := newPGSchema(t)
	s, err := Open(ctx, dsn)
	mustNil(t, err)
	key := SigningKey{ID: "k1", Algorithm: "ES256", Public: []byte{1}, Sealed: []byte{2}, KEKID: "kek", CreatedAt: base}
	mustNil(t, s.PutSigningKey(ctx, key))
	mustNil(t, s.UseJTI(ctx, "iss", "j1", base))
	mustNil(t, s.Close())

	s = openPG(t, dsn)
	keys, err := s.SigningKeys(ctx)
	mustNil(t, err)
	equal(t, "keys", keys, []SigningKey{utcKey(key)})
	wantErr(t, s.UseJTI(ctx, "iss", "j1", base), "store: identifier already used")
}
