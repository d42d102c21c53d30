package proxy

import (
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"postern.dev/postern/internal/exchange"
)

// noUpstream labels requests that named no configured upstream ("-" is not
// a host name, so no upstream can be called that).
const noUpstream = "-"

// outboundMetrics is a prometheus.Collector over atomic counters: a request
// costs one atomic addition and one histogram observation (itself atomic),
// no map lookup and no lock. Exchange statistics are read from the
// exchange client at scrape time.
type outboundMetrics struct {
	names    []string
	index    map[string]int
	counts   [][600]atomic.Uint64 // [upstream][status code]
	latency  []prometheus.Observer
	hist     *prometheus.HistogramVec
	stats    func() exchange.Stats
	requests *prometheus.Desc
	calls    *prometheus.Desc
	hits     *prometheus.Desc
	misses   *prometheus.Desc
	stale    *prometheus.Desc
}

func newOutboundMetrics(upstreams []string, stats func() exchange.Stats) *outboundMetrics {
	names := append(append([]string(nil), upstreams...), noUpstream)
	m := &outboundMetrics{
		names:  names,
		index:  map[string]int{},
		counts: make([][600]atomic.Uint64, len(names)),
		stats:  stats,
		hist: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "postern", Subsystem: "outbound", Name: "request_duration_seconds",
			Help:    "Time from the application's request to the end of the upstream's response, token exchange included.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10},
		}, []string{"upstream"}),
		requests: prometheus.NewDesc("postern_outbound_requests_total",
			"Outbound requests by upstream (- for none) and status code answered to the application.", []string{"upstream", "code"}, nil),
		calls: prometheus.NewDesc("postern_exchange_requests_total",
			"Calls to the token service by result: issued, refused, unavailable.", []string{"result"}, nil),
		hits: prometheus.NewDesc("postern_exchange_cache_hits_total",
			"Tokens served from the exchange cache without calling the token service.", nil, nil),
		misses: prometheus.NewDesc("postern_exchange_cache_misses_total",
			"Token requests that needed the token service (or joined a call in flight).", nil, nil),
		stale: prometheus.NewDesc("postern_exchange_cache_stale_served_total",
			"Cached tokens served past their refresh point because the token service was unavailable.", nil, nil),
	}
	m.latency = make([]prometheus.Observer, len(names))
	for i, n := range names {
		m.index[n] = i
		m.latency[i] = m.hist.WithLabelValues(n)
	}
	return m
}

func (m *outboundMetrics) observe(up *upstream, code int, d time.Duration) {
	i := len(m.names) - 1
	if up != nil {
		i = up.metric
	}
	if code >= 100 && code < 600 {
		m.counts[i][code].Add(1)
	}
	m.latency[i].Observe(d.Seconds())
}

// Describe implements prometheus.Collector.
func (m *outboundMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.hist.Describe(ch)
	ch <- m.requests
	if m.stats != nil {
		ch <- m.calls
		ch <- m.hits
		ch <- m.misses
		ch <- m.stale
	}
}

// Collect implements prometheus.Collector.
func (m *outboundMetrics) Collect(ch chan<- prometheus.Metric) {
	m.hist.Collect(ch)
	for i, name := range m.names {
		for code := 100; code < 600; code++ {
			if n := m.counts[i][code].Load(); n > 0 {
				ch <- prometheus.MustNewConstMetric(m.requests, prometheus.CounterValue, float64(n), name, strconv.Itoa(code))
			}
		}
	}
	if m.stats == nil {
		return
	}
	s := m.stats()
	ch <- prometheus.MustNewConstMetric(m.calls, prometheus.CounterValue, float64(s.Issued), "issued")
	ch <- prometheus.MustNewConstMetric(m.calls, prometheus.CounterValue, float64(s.Refused), "refused")
	ch <- prometheus.MustNewConstMetric(m.calls, prometheus.CounterValue, float64(s.Unavailable), "unavailable")
	ch <- prometheus.MustNewConstMetric(m.hits, prometheus.CounterValue, float64(s.CacheHits))
	ch <- prometheus.MustNewConstMetric(m.misses, prometheus.CounterValue, float64(s.CacheMisses))
	ch <- prometheus.MustNewConstMetric(m.stale, prometheus.CounterValue, float64(s.StaleServed))
}
