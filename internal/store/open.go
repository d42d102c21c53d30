package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// Connection settings.
const (
	// sqliteBusyTimeout is how long a SQLite connection waits for a lock held
	// by another process before failing with SQLITE_BUSY, in milliseconds.
	sqliteBusyTimeout = 10000
	// sqliteReaders is the number of read connections to a SQLite file.
	sqliteReaders = 4
	// postgresConns is the size of the PostgreSQL connection pool.
	postgresConns = 10
)

// Open opens the store named by dsn and applies any pending migrations.
//
// Accepted forms:
//
//	postgres://user@host:5432/db?sslmode=verify-full   PostgreSQL (also postgresql://)
//	sqlite:///var/lib/postern/postern.db               SQLite file, absolute path
//	sqlite:data/postern.db                             SQLite file, relative path
//	/var/lib/postern/postern.db                        SQLite file (a plain path)
//	sqlite::memory:                                    SQLite in memory (also :memory:)
//
// A PostgreSQL DSN is anything pgx accepts; see OpenPostgres. A SQLite DSN
// takes no query parameters; see OpenSQLite. Error messages never quote a
// PostgreSQL DSN, which may hold a password.
//
// Both engines behave alike, beyond what the Store interface says:
//
//   - Times are stored as Unix nanoseconds and come back in UTC, equal to
//     what was stored to the nanosecond; the zero time comes back zero.
//     Times outside the years 1677 to 2262 are refused.
//   - Empty byte fields and chains come back nil.
//   - Text fields are at most 2048 bytes of UTF-8 without NUL, byte fields
//     at most 64 KiB, a ChainDER at most 16 certificates; identifiers,
//     SigningKey.Algorithm, ClientSecret.Hash, JoinToken.SPIFFEID and
//     JoinToken.ExpiresAt are required. Lists are ordered byte-wise.
//   - A zero expiry passed to UseJTI or PutRevocation means "never expires":
//     such records are never purged.
//   - UseJTI keeps a pair until Purge removes it, even past its exp.
//   - PutRevocation of an existing (Kind, ID) only ever extends its expiry.
//   - Revocations, ConsumeJoinToken and Purge refuse a zero now.
func Open(ctx context.Context, dsn string) (Store, error) {
	engine, target, err := parseDSN(dsn)
	if err != nil {
		return nil, err
	}
	if engine == "postgres" {
		return OpenPostgres(ctx, target)
	}
	return OpenSQLite(ctx, target)
}

// parseDSN splits dsn into an engine, "sqlite" or "postgres", and what to
// pass to that engine's Open function.
func parseDSN(dsn string) (engine, target string, err error) {
	switch {
	case dsn == "":
		return "", "", errors.New("store: open: empty dsn")
	case strings.HasPrefix(dsn, "postgres://"), strings.HasPrefix(dsn, "postgresql://"):
		return "postgres", dsn, nil
	case strings.HasPrefix(dsn, "sqlite:"):
		p := strings.TrimPrefix(dsn, "sqlite:")
		if rest, ok := strings.CutPrefix(p, "//"); ok {
			if !strings.HasPrefix(rest, "/") {
				return "", "", errors.New("store: open: a sqlite:// dsn needs an absolute path, as in sqlite:///var/lib/postern/postern.db")
			}
			p = rest
		}
		if p == "" {
			return "", "", errors.New("store: open: sqlite dsn has no path")
		}
		if strings.ContainsAny(p, "?#") {
			return "", "", errors.New("store: open: sqlite dsn takes no query or fragment")
		}
		return "sqlite", p, nil
	case strings.Contains(dsn, "://"):
		return "", "", errors.New("store: open: unsupported dsn scheme (want postgres://, postgresql:// or sqlite:)")
	case strings.ContainsAny(dsn, "?#"):
		return "", "", errors.New("store: open: sqlite dsn takes no query or fragment")
	default:
		return "sqlite", dsn, nil
	}
}

// OpenSQLite opens (creating if needed) the SQLite database at path and
// applies any pending migrations. The path ":memory:" opens a private
// in-memory database, for tests and demos.
//
// A new file is created with mode 0600 (SQLite gives its -wal and -shm files
// the same mode); the directory must exist. The database runs in WAL mode
// with foreign keys on, synchronous=FULL and a 10 s busy timeout. Writes go
// through one connection, so concurrent writers in this process queue
// instead of failing with SQLITE_BUSY; reads use a small pool of read-only
// connections. Several processes may share the file: they wait on each other
// for up to the busy timeout.
//
// An in-memory database lives in a single connection for both reads and
// writes and disappears on Close.
func OpenSQLite(ctx context.Context, path string) (Store, error) {
	if path == "" {
		return nil, errors.New("store: open sqlite: empty path")
	}
	if path == ":memory:" {
		db, err := openSQLiteDB(ctx, ":memory:", url.Values{
			"_busy_timeout": {fmt.Sprint(sqliteBusyTimeout)},
			"_foreign_keys": {"1"},
		}, 1)
		if err != nil {
			return nil, err
		}
		if err := migrate(ctx, db, sqliteDialect()); err != nil {
			db.Close()
			return nil, err
		}
		return &sqlStore{w: db, r: db}, nil
	}

	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("store: open sqlite: %w", err)
	}
	// Create the file ourselves so that it gets mode 0600; SQLite would
	// create it with 0644. An existing file keeps its mode.
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store: open sqlite: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("store: open sqlite: %w", err)
	}
	// A file: URI, so that any character in the path is escaped rather than
	// read by the driver as the start of its parameters.
	uri := (&url.URL{Scheme: "file", Path: abs}).String()

	w, err := openSQLiteDB(ctx, uri, url.Values{
		"_busy_timeout": {fmt.Sprint(sqliteBusyTimeout)},
		"_journal_mode": {"WAL"},
		"_synchronous":  {"FULL"},
		"_foreign_keys": {"1"},
		"_txlock":       {"immediate"},
	}, 1)
	if err != nil {
		return nil, err
	}
	if err := migrate(ctx, w, sqliteDialect()); err != nil {
		w.Close()
		return nil, err
	}
	r, err := openSQLiteDB(ctx, uri, url.Values{
		"_busy_timeout": {fmt.Sprint(sqliteBusyTimeout)},
		"_foreign_keys": {"1"},
		"_query_only":   {"1"},
	}, sqliteReaders)
	if err != nil {
		w.Close()
		return nil, err
	}
	return &sqlStore{w: w, r: r}, nil
}

// openSQLiteDB opens a pool of at most conns connections to name with the
// driver parameters params, and checks that a connection opens.
func openSQLiteDB(ctx context.Context, name string, params url.Values, conns int) (*sql.DB, error) {
	db, err := sql.Open("sqlite", name+"?"+params.Encode())
	if err != nil {
		return nil, fmt.Errorf("store: open sqlite: %w", err)
	}
	db.SetMaxOpenConns(conns)
	db.SetMaxIdleConns(conns)
	db.SetConnMaxLifetime(0)
	db.SetConnMaxIdleTime(0)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: open sqlite: %w", err)
	}
	return db, nil
}

// OpenPostgres connects to the PostgreSQL database named by dsn, a URL
// (postgres://...) or keyword/value string as pgx accepts it, and applies
// any pending migrations. Replicas may call it at the same time: migrations
// are serialised by an advisory lock.
//
// The store's tables live in the first schema of the connection's
// search_path; set it with a search_path parameter in the DSN to keep
// Postern in its own schema. The pool holds up to 10 connections.
func OpenPostgres(ctx context.Context, dsn string) (Store, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		// pgx's message quotes the DSN, with the password redacted only
		// on a best-effort basis: say nothing more.
		return nil, errors.New("store: open postgres: malformed dsn")
	}
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(postgresConns)
	db.SetMaxIdleConns(postgresConns)
	db.SetConnMaxIdleTime(5 * time.Minute)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: open postgres: %w", err)
	}
	if err := migrate(ctx, db, postgresDialect()); err != nil {
		db.Close()
		return nil, err
	}
	return &sqlStore{w: db, r: db}, nil
}
