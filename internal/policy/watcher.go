package policy

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// WatcherConfig configures a Watcher. Zero values mean defaults.
type WatcherConfig struct {
	// Dir is the directory of resource files.
	Dir string
	// Interval between polls (default 2s). Changes are detected by a hash
	// of the files' names and contents; there is no fsnotify.
	Interval time.Duration
	// Options are passed to Compile.
	Options CompileOptions
	// Logger receives reload results (default: discard).
	Logger *slog.Logger
	// OnUpdate, if set, is called with every new Engine after it is
	// installed (not for the first load).
	OnUpdate func(*Engine)
}

// Watcher keeps the Engine of a directory current with last-known-good
// semantics: a set that does not load or compile is logged (file:line) and
// the previous Engine stays in place. A bad update never replaces the last
// good set, and never opens access.
type Watcher struct {
	cfg    WatcherConfig
	engine atomic.Pointer[Engine]

	mu       sync.Mutex // serializes reloads
	lastHash [sha256.Size]byte
}

// NewWatcher loads dir once; it fails if that first load fails.
func NewWatcher(cfg WatcherConfig) (*Watcher, error) {
	if cfg.Dir == "" {
		return nil, errors.New("policy: watcher needs a directory")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	w := &Watcher{cfg: cfg}
	h, err := hashDir(cfg.Dir)
	if err != nil {
		return nil, err
	}
	e, err := loadEngine(cfg.Dir, cfg.Options)
	if err != nil {
		return nil, err
	}
	w.lastHash = h
	w.engine.Store(e)
	return w, nil
}

func loadEngine(dir string, opts CompileOptions) (*Engine, error) {
	set, err := LoadDir(dir)
	if err != nil {
		return nil, err
	}
	return Compile(set, opts)
}

// Engine returns the current Engine; never nil.
func (w *Watcher) Engine() *Engine { return w.engine.Load() }

// Run polls the directory until ctx is done.
func (w *Watcher) Run(ctx context.Context) {
	t := time.NewTicker(w.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_, _ = w.Reload()
		}
	}
}

// Reload checks the directory now. It reports whether a new Engine was
// installed, and the reason it was not when the directory changed but does
// not load (a Problems value) or cannot be read.
func (w *Watcher) Reload() (bool, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	log := w.cfg.Logger
	h, err := hashDir(w.cfg.Dir)
	if err != nil {
		log.Error("policy reload failed; keeping the last good policy set", "dir", w.cfg.Dir, "error", err)
		return false, err
	}
	if h == w.lastHash {
		return false, nil
	}
	w.lastHash = h // a broken set is reported once, not at every poll
	e, err := loadEngine(w.cfg.Dir, w.cfg.Options)
	if err != nil {
		var ps Problems
		if errors.As(err, &ps) {
			for _, p := range ps {
				log.Error("policy rejected; keeping the last good policy set", "file", p.File, "line", p.Line, "problem", p.Message)
			}
		} else {
			log.Error("policy reload failed; keeping the last good policy set", "dir", w.cfg.Dir, "error", err)
		}
		return false, err
	}
	w.engine.Store(e)
	st := e.Stats()
	log.Info("policy set reloaded", "dir", w.cfg.Dir, "workloads", st.Workloads, "trusted_issuers", st.TrustedIssuers,
		"exchange_policies", st.ExchangePolicies, "authorization_policies", st.AuthorizationPolicies, "federations", st.Federations)
	if w.cfg.OnUpdate != nil {
		w.cfg.OnUpdate(e)
	}
	return true, nil
}

// hashDir hashes the names and contents of the files LoadDir would read.
func hashDir(dir string) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	l := &loader{}
	files, err := l.readDir(dir)
	if err != nil {
		return sum, err
	}
	h := sha256.New()
	for _, f := range files {
		fmt.Fprintf(h, "%d:%s\n%d:", len(f.name), f.name, len(f.data))
		h.Write(f.data)
	}
	for _, p := range l.problems {
		fmt.Fprintf(h, "problem:%s\n", p)
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}
