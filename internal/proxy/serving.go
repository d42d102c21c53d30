package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// AdminHandler serves a component's admin listener: GET /healthz (alive),
// GET /readyz (ready reports true; 503 otherwise) and GET /metrics from reg.
// The sidecar and the gateway share it.
func AdminHandler(ready func() bool, reg prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return mux
}

// Listening is one http.Server with its listener; TLS serves with the
// server's TLSConfig.
type Listening struct {
	Server   *http.Server
	Listener net.Listener
	TLS      bool
}

func (l Listening) serve() error {
	if l.TLS {
		return l.Server.ServeTLS(l.Listener, "", "")
	}
	return l.Server.Serve(l.Listener)
}

// ServeAndDrain serves data and admin until ctx is done or one of them
// fails, then calls draining (so readiness turns 503), shuts the data
// servers down in parallel and the admin server last, all within timeout,
// and waits for every server to return. It returns the first serve error.
func ServeAndDrain(ctx context.Context, data []Listening, admin Listening, timeout time.Duration, draining func(), logger *slog.Logger) error {
	all := append(append([]Listening(nil), data...), admin)
	errc := make(chan error, len(all))
	for _, l := range all {
		go func() { errc <- l.serve() }()
	}
	n := len(all)
	var runErr error
	select {
	case err := <-errc:
		n--
		runErr = err
	case <-ctx.Done():
	}
	draining()
	dctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, l := range data {
		wg.Go(func() {
			if err := l.Server.Shutdown(dctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
				logger.Warn("drain cut short", slog.String("error", err.Error()))
			}
		})
	}
	wg.Wait()
	_ = admin.Server.Shutdown(dctx)
	for range n {
		if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) && runErr == nil {
			runErr = err
		}
	}
	if runErr != nil && errors.Is(runErr, http.ErrServerClosed) {
		return nil
	}
	return runErr
}
