package store

import (
	"context"
	"strings"
	"testing"
)

func TestParseDSN(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		dsn, engine, target, err string
	}{
		{"postgres://u:p@db:5432/postern?sslmode=verify-full", "postgres", "postgres://u:p@db:5432/postern?sslmode=verify-full", ""},
		{"postgresql://db/postern", "postgres", "postgresql://db/postern", ""},
		{"sqlite:///var/lib/postern/postern.db", "sqlite", "/var/lib/postern/postern.db", ""},
		{"sqlite:data/postern.db", "sqlite", "data/postern.db", ""},
		{"sqlite::memory:", "sqlite", ":memory:", ""},
		{":memory:", "sqlite", ":memory:", ""},
		{"/var/lib/postern/postern.db", "sqlite", "/var/lib/postern/postern.db", ""},
		{"postern.db", "sqlite", "postern.db", ""},
		{"", "", "", "store: open: empty dsn"},
		{"sqlite:", "", "", "store: open: sqlite dsn has no path"},
		{"sqlite://", "", "", "store: open: a sqlite:// dsn needs an absolute path, as in sqlite:///var/lib/postern/postern.db"},
		{"sqlite://host/postern.db", "", "", "store: open: a sqlite:// dsn needs an absolute path, as in sqlite:///var/lib/postern/postern.db"},
		{"sqlite:///x.db?_pragma=journal_mode(OFF)", "", "", "store: open: sqlite dsn takes no query or fragment"},
		{"x.db?mode=ro", "", "", "store: open: sqlite dsn takes no query or fragment"},
		{"mysql://u:secret@db/postern", "", "", "store: open: unsupported dsn scheme (want postgres://, postgresql:// or sqlite:)"},
	} {
		t.Run(tc.dsn, func(t *testing.T) {
			engine, target, err := parseDSN(tc.dsn)
			wantErr(t, err, tc.err)
			equal(t, "engine", engine, tc.engine)
			equal(t, "target", target, tc.target)
		})
	}
}

func TestOpenPostgresMalformedDSN(t *testing.T) {
	t.Parallel()
	for _, dsn := range []string{
		"postgres://user:s3cret@db:notaport/postern",
		"host=db password=s3cret port=notaport",
	} {
		s, err := OpenPostgres(context.Background(), dsn)
		wantErr(t, err, "store: open postgres: malformed dsn")
		if s != nil {
			t.Fatal("store returned with an error")
		}
	}
}

func TestOpenPostgresUnreachable(t *testing.T) {
	t.Parallel()
	// Port 1 on loopback: nothing listens there.
	_, err := Open(context.Background(), "postgres://user:s3cret@127.0.0.1:1/postern?connect_timeout=5")
	if err == nil {
		t.Fatal("Open succeeded")
	}
	if !strings.HasPrefix(err.Error(), "store: open postgres: ") || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("error = %q", err)
	}
}

func TestMigrations(t *testing.T) {
	t.Parallel()
	names := map[string][]string{}
	for _, d := range []dialect{sqliteDialect(), postgresDialect()} {
		ms, err := loadMigrations(d.dir)
		if err != nil {
			t.Fatalf("%s: %v", d.name, err)
		}
		for _, m := range ms {
			names[d.name] = append(names[d.name], m.name)
		}
	}
	equal(t, "postgres migrations", names["postgres"], names["sqlite"])
	equal(t, "sqlite migrations", names["sqlite"], []string{"0001_init", "0002_agents"})
}
