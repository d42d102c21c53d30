package gateway

import (
	"crypto/sha256"
	"encoding/hex"
	"math"
	"sync"
	"time"
)

// maxKeyBytes bounds a rate-limit key kept as it is; longer ones are hashed.
const maxKeyBytes = 256

// limiter is a token bucket per client key, with a bounded number of
// buckets. It is safe for concurrent use.
type limiter struct {
	rate, burst float64
	max         int
	now         func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newLimiter(c *RateLimitConfig, now func() time.Time) *limiter {
	if c == nil {
		return nil
	}
	return &limiter{rate: c.RequestsPerSecond, burst: float64(c.Burst), max: c.MaxClients, now: now, buckets: map[string]*bucket{}}
}

// allow takes one token from key's bucket. When there is none it returns
// false and how long until there will be one.
func (l *limiter) allow(key string) (bool, time.Duration) {
	if len(key) > maxKeyBytes {
		sum := sha256.Sum256([]byte(key))
		key = hex.EncodeToString(sum[:])
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[key]
	if b == nil {
		if len(l.buckets) >= l.max {
			l.evict(now)
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	} else if d := now.Sub(b.last); d > 0 {
		b.tokens = math.Min(l.burst, b.tokens+d.Seconds()*l.rate)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	wait := time.Duration((1 - b.tokens) / l.rate * float64(time.Second))
	return false, wait
}

// evict drops the buckets that have refilled (they equal a new one), then,
// if still full, a tenth of them at random (map order).
func (l *limiter) evict(now time.Time) {
	for k, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst {
			delete(l.buckets, k)
		}
	}
	for k := range l.buckets {
		if len(l.buckets) < l.max-l.max/10 {
			break
		}
		delete(l.buckets, k)
	}
}

// len returns the number of buckets held.
func (l *limiter) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

// retryAfter formats a wait as whole seconds for Retry-After, at least 1.
func retryAfter(d time.Duration) int {
	s := int(math.Ceil(d.Seconds()))
	if s < 1 {
		s = 1
	}
	return s
}
