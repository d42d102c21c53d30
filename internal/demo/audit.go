package demo

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// maxRecords bounds the audit lines a recorder keeps (the oldest go first).
const maxRecords = 4096

// record is one audit line: the component that wrote it, its message and
// its attributes as strings.
type record struct {
	component string
	msg       string
	attrs     map[string]string
}

// recorder keeps the audit lines of every component so the story can show
// the decision ids behind each step. It is safe for concurrent use.
type recorder struct {
	mu      sync.Mutex
	records []record
	changed chan struct{} // closed and replaced on every new record
}

func newRecorder() *recorder { return &recorder{changed: make(chan struct{})} }

func (r *recorder) add(rec record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.records) >= maxRecords {
		r.records = slices.Delete(r.records, 0, len(r.records)-maxRecords+1)
	}
	r.records = append(r.records, rec)
	close(r.changed)
	r.changed = make(chan struct{})
}

// find returns the last record matching component (any if empty), msg and
// every attribute of want, waiting up to wait for one to arrive: a sidecar
// writes its audit line after the response has left.
func (r *recorder) find(ctx context.Context, wait time.Duration, component, msg string, want map[string]string) (record, bool) {
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		r.mu.Lock()
		ch := r.changed
		for i := len(r.records) - 1; i >= 0; i-- {
			rec := r.records[i]
			if rec.matches(component, msg, want) {
				r.mu.Unlock()
				return rec, true
			}
		}
		r.mu.Unlock()
		select {
		case <-ch:
		case <-t.C:
			return record{}, false
		case <-ctx.Done():
			return record{}, false
		}
	}
}

func (rec record) matches(component, msg string, want map[string]string) bool {
	if (component != "" && rec.component != component) || rec.msg != msg {
		return false
	}
	for k, v := range want {
		if rec.attrs[k] != v {
			return false
		}
	}
	return true
}

// handler returns a slog.Handler that records every line as written by
// component and passes it on to next (which may be nil).
func (r *recorder) handler(component string, next slog.Handler) slog.Handler {
	return &recordHandler{r: r, component: component, next: next}
}

type recordHandler struct {
	r         *recorder
	component string
	attrs     []slog.Attr
	next      slog.Handler
}

func (h *recordHandler) Enabled(ctx context.Context, l slog.Level) bool { return true }

func (h *recordHandler) Handle(ctx context.Context, rec slog.Record) error {
	m := make(map[string]string, len(h.attrs)+rec.NumAttrs())
	for _, a := range h.attrs {
		m[a.Key] = a.Value.Resolve().String()
	}
	rec.Attrs(func(a slog.Attr) bool {
		m[a.Key] = a.Value.Resolve().String()
		return true
	})
	h.r.add(record{component: h.component, msg: rec.Message, attrs: m})
	if h.next != nil && h.next.Enabled(ctx, rec.Level) {
		return h.next.Handle(ctx, rec)
	}
	return nil
}

func (h *recordHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	n := *h
	n.attrs = append(slices.Clip(h.attrs), attrs...)
	if h.next != nil {
		n.next = h.next.WithAttrs(attrs)
	}
	return &n
}

func (h *recordHandler) WithGroup(name string) slog.Handler {
	// Audit lines use no groups; attributes after a group keep their
	// plain keys here, which is all the story looks at.
	n := *h
	if h.next != nil {
		n.next = h.next.WithGroup(name)
	}
	return &n
}
