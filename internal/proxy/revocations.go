package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"postern.dev/postern/internal/token"
)

// Revocation list defaults and bounds.
const (
	DefaultRevocationPoll = 5 * time.Second
	maxRevocationBody     = 32 << 20 // ~300,000 entries
	maxRevokedIDBytes     = 256
)

// RevocationList is the token service's list of revoked token ids (jti) and
// sessions (sid), polled from its revocation list endpoint, so that a
// sidecar refuses a revoked token, or any token of a revoked session,
// within one poll rather than when the token expires.
//
// On a failed poll the last good list stays in force (a failure never
// clears it); before the first successful poll the list is empty. It is
// safe for concurrent use.
type RevocationList struct {
	url      string
	client   *http.Client
	interval time.Duration
	leeway   time.Duration
	logger   *slog.Logger
	now      func() time.Time

	set      atomic.Pointer[revokedSet]
	etag     string // touched by Refresh only, which Run serialises
	lastOK   atomic.Int64
	failures atomic.Uint64
	failing  atomic.Bool
}

type revokedSet struct {
	jtis, sids map[string]time.Time
}

// RevocationListConfig configures a RevocationList.
type RevocationListConfig struct {
	// URL is the revocation list endpoint (https). Required.
	URL string
	// Client calls it; it must authenticate with the workload's SVID and
	// check the token service's. Required.
	Client *http.Client
	// Interval between polls; default DefaultRevocationPoll.
	Interval time.Duration
	// Leeway keeps an entry past its until: the clock skew tolerated on
	// token expiry, so a revoked token is refused for as long as it could
	// still verify here.
	Leeway time.Duration
	Logger *slog.Logger
	Now    func() time.Time
}

// NewRevocationList returns an empty list; Run fills it.
func NewRevocationList(cfg RevocationListConfig) (*RevocationList, error) {
	if cfg.URL == "" || cfg.Client == nil {
		return nil, errors.New("proxy: revocation list needs a URL and an HTTP client")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultRevocationPoll
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Leeway < 0 {
		return nil, errors.New("proxy: revocation list leeway must not be negative")
	}
	l := &RevocationList{url: cfg.URL, client: cfg.Client, interval: cfg.Interval, leeway: cfg.Leeway, logger: cfg.Logger, now: cfg.Now}
	l.set.Store(&revokedSet{})
	return l, nil
}

// Revoked reports whether c's jti or sid is on the list.
func (l *RevocationList) Revoked(c *token.Claims) bool {
	s := l.set.Load()
	if len(s.jtis) == 0 && len(s.sids) == 0 {
		return false
	}
	now := l.now()
	if until, ok := s.jtis[c.ID]; ok && c.ID != "" && now.Before(until) {
		return true
	}
	if until, ok := s.sids[c.SessionID]; ok && c.SessionID != "" && now.Before(until) {
		return true
	}
	return false
}

// Len returns the number of entries held.
func (l *RevocationList) Len() int {
	s := l.set.Load()
	return len(s.jtis) + len(s.sids)
}

// Failures returns the number of failed polls so far.
func (l *RevocationList) Failures() uint64 { return l.failures.Load() }

// Age returns the time since the last successful poll, or -1 before it.
func (l *RevocationList) Age() time.Duration {
	t := l.lastOK.Load()
	if t == 0 {
		return -1
	}
	return l.now().Sub(time.Unix(0, t))
}

// Run polls until ctx is done.
func (l *RevocationList) Run(ctx context.Context) {
	t := time.NewTicker(l.interval)
	defer t.Stop()
	for {
		err := l.Refresh(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			l.failures.Add(1)
			if !l.failing.Swap(true) {
				l.logger.Warn("could not fetch the revocation list; keeping the last one",
					slog.String("url", l.url), slog.String("error", err.Error()))
			}
		case l.failing.Swap(false):
			l.logger.Info("revocation list fetched again", slog.Int("entries", l.Len()))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Refresh fetches the list once. Not safe for concurrent use with itself.
func (l *RevocationList) Refresh(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, l.url, nil)
	if err != nil {
		return err
	}
	if l.etag != "" {
		req.Header.Set("If-None-Match", l.etag)
	}
	resp, err := l.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNotModified:
		if l.etag == "" {
			return errors.New("revocation list: 304 to a request without If-None-Match")
		}
		l.lastOK.Store(l.now().UnixNano())
		return nil
	case http.StatusOK:
	default:
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("revocation list: status %d", resp.StatusCode)
	}
	set, err := parseRevocationList(io.LimitReader(resp.Body, maxRevocationBody+1), l.now(), l.leeway)
	if err != nil {
		return err
	}
	l.set.Store(set)
	l.etag = resp.Header.Get("ETag")
	l.lastOK.Store(l.now().UnixNano())
	return nil
}

// parseRevocationList decodes a list, dropping entries expired for more
// than leeway (and keeping the others until their until plus leeway). Members it
// does not know are ignored (the list may grow), but an entry of a kind it
// cannot apply fails the whole list, as anything malformed does: the last
// good list then stays in force.
func parseRevocationList(r io.Reader, now time.Time, leeway time.Duration) (*revokedSet, error) {
	body, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("revocation list: %w", err)
	}
	if len(body) > maxRevocationBody {
		return nil, fmt.Errorf("revocation list: over %d bytes", maxRevocationBody)
	}
	var doc struct {
		Revoked *[]struct {
			Kind  string `json:"kind"`
			ID    string `json:"id"`
			Until *int64 `json:"until"`
		} `json:"revoked"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("revocation list: %w", err)
	}
	if doc.Revoked == nil {
		return nil, errors.New(`revocation list: no "revoked" member`)
	}
	set := &revokedSet{jtis: map[string]time.Time{}, sids: map[string]time.Time{}}
	for i, e := range *doc.Revoked {
		if e.ID == "" || len(e.ID) > maxRevokedIDBytes || e.Until == nil {
			return nil, fmt.Errorf("revocation list: entry %d has no id, an id over %d bytes, or no until", i, maxRevokedIDBytes)
		}
		if e.Kind != "jti" && e.Kind != "sid" {
			// A kind this sidecar cannot apply: taking the rest of the list
			// would let the tokens it names pass, so the whole list is
			// refused and the last good one stays.
			return nil, fmt.Errorf("revocation list: entry %d has kind %q, neither jti nor sid", i, clipKind(e.Kind))
		}
		until := time.Unix(*e.Until, 0).Add(leeway)
		if !now.Before(until) {
			continue
		}
		if e.Kind == "jti" {
			set.jtis[e.ID] = until
		} else {
			set.sids[e.ID] = until
		}
	}
	return set, nil
}

func clipKind(s string) string {
	if len(s) > 32 {
		return s[:32] + "..."
	}
	return s
}
