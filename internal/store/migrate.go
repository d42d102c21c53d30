package store

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"
)

// migrationFiles holds the schema of both engines, one numbered file per
// version: migrations/<engine>/NNNN_name.sql.
//
//go:embed migrations/sqlite/*.sql migrations/postgres/*.sql
var migrationFiles embed.FS

// dialect is what differs between the engines when migrating.
type dialect struct {
	name string // "sqlite" or "postgres"
	dir  string // directory in migrationFiles
	// bookkeeping creates the schema_migrations table if it is missing.
	bookkeeping string
	// lock, when set, runs first in every migration transaction and
	// serialises migrations between processes sharing the database.
	lock string
}

// sqliteDialect returns the SQLite dialect.
func sqliteDialect() dialect {
	return dialect{
		name: "sqlite",
		dir:  "migrations/sqlite",
		bookkeeping: `CREATE TABLE IF NOT EXISTS schema_migrations (
  version    INTEGER NOT NULL PRIMARY KEY,
  name       TEXT    NOT NULL,
  applied_at TEXT    NOT NULL DEFAULT CURRENT_TIMESTAMP
) STRICT`,
		// The SQLite writer begins transactions IMMEDIATE, which takes the
		// database's write lock: that is the lock.
	}
}

// postgresDialect returns the PostgreSQL dialect.
func postgresDialect() dialect {
	return dialect{
		name: "postgres",
		dir:  "migrations/postgres",
		bookkeeping: `CREATE TABLE IF NOT EXISTS schema_migrations (
  version    INTEGER     NOT NULL PRIMARY KEY,
  name       TEXT        NOT NULL,
  applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)`,
		// A transaction-scoped advisory lock keyed by the schema, so that
		// replicas starting together migrate one after the other, and
		// stores in different schemas of one database do not wait on each
		// other.
		lock: `SELECT pg_advisory_xact_lock(hashtext('postern.store.migrate:' || coalesce(current_schema(), '')))`,
	}
}

// migration is one numbered schema change.
type migration struct {
	version int
	name    string
	sql     string
}

// loadMigrations reads the migrations in dir, ordered by version, and checks
// that the versions run 1, 2, 3... without gaps or duplicates.
func loadMigrations(dir string) ([]migration, error) {
	entries, err := fs.ReadDir(migrationFiles, dir)
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, e := range entries { // ReadDir sorts by name
		name := e.Name()
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || !strings.HasSuffix(name, ".sql") {
			return nil, fmt.Errorf("bad migration file name %q", name)
		}
		if v != len(ms)+1 {
			return nil, fmt.Errorf("migration %q: want version %d", name, len(ms)+1)
		}
		b, err := migrationFiles.ReadFile(path.Join(dir, name))
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: strings.TrimSuffix(name, ".sql"), sql: string(b)})
	}
	return ms, nil
}

// migrate applies the dialect's pending migrations to db, each in its own
// transaction together with its schema_migrations row. It is safe to run from
// several processes at once: each transaction takes the dialect's lock and
// then checks whether its version is already applied.
//
// Versions in schema_migrations newer than this binary knows are left alone,
// so an older replica keeps running during a rolling upgrade; migrations are
// therefore written to be additive.
func migrate(ctx context.Context, db *sql.DB, d dialect) error {
	ms, err := loadMigrations(d.dir)
	if err != nil {
		return fmt.Errorf("store: migrate %s: %w", d.name, err)
	}
	for _, m := range ms {
		if err := applyMigration(ctx, db, d, m); err != nil {
			return fmt.Errorf("store: migrate %s to version %d: %w", d.name, m.version, err)
		}
	}
	return nil
}

func applyMigration(ctx context.Context, db *sql.DB, d dialect, m migration) (err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	if d.lock != "" {
		if _, err := tx.ExecContext(ctx, d.lock); err != nil {
			return fmt.Errorf("lock: %w", err)
		}
	}
	if _, err := tx.ExecContext(ctx, d.bookkeeping); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE version = $1`, m.version).Scan(&n); err != nil {
		return fmt.Errorf("read schema_migrations: %w", err)
	}
	if n == 0 {
		if _, err := tx.ExecContext(ctx, m.sql); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name) VALUES ($1, $2)`, m.version, m.name); err != nil {
			return fmt.Errorf("record version: %w", err)
		}
	}
	return tx.Commit()
}
