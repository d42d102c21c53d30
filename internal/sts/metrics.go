package sts

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Grants and outcomes counted by the token endpoint's metrics.
var (
	metricGrants   = [...]string{"token-exchange", "client-credentials", "jwt-bearer", "other"}
	metricOutcomes = [...]string{"issue", "deny"}
)

// metrics are the token endpoint's counters: plain atomics on the hot
// path, turned into Prometheus metrics only when scraped.
type metrics struct {
	requests [len(metricGrants)][len(metricOutcomes)]atomic.Uint64
	errors   map[string]*atomic.Uint64 // by OAuth error code, fixed at construction
	latency  prometheus.Histogram
}

func newMetrics() *metrics {
	m := &metrics{errors: map[string]*atomic.Uint64{}}
	for _, c := range []string{codeInvalidRequest, codeInvalidClient, codeInvalidGrant, codeUnauthorizedClient,
		codeUnsupportedGrantType, codeInvalidScope, codeInvalidTarget, codeAccessDenied, codeServerError} {
		m.errors[c] = &atomic.Uint64{}
	}
	m.latency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "postern_sts_token_request_duration_seconds",
		Help:    "Time to answer a token request, from the parsed form to the written response.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1},
	})
	return m
}

func grantIndex(grant string) int {
	switch grant {
	case GrantTokenExchange:
		return 0
	case GrantClientCredentials:
		return 1
	case GrantJWTBearer:
		return 2
	}
	return 3
}

func (m *metrics) observe(grant string, oerr *Error, d time.Duration) {
	outcome := 0
	if oerr != nil {
		outcome = 1
		if c, ok := m.errors[oerr.Code]; ok {
			c.Add(1)
		}
	}
	m.requests[grantIndex(grant)][outcome].Add(1)
	m.latency.Observe(d.Seconds())
}

var (
	descRequests = prometheus.NewDesc("postern_sts_token_requests_total",
		"Token requests answered, by grant type and outcome (issue or deny).", []string{"grant", "outcome"}, nil)
	descErrors = prometheus.NewDesc("postern_sts_token_errors_total",
		"Token requests refused, by OAuth error code.", []string{"error"}, nil)
)

// Describe implements prometheus.Collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- descRequests
	ch <- descErrors
	m.latency.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	for g, grant := range metricGrants {
		for o, outcome := range metricOutcomes {
			ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(m.requests[g][o].Load()), grant, outcome)
		}
	}
	for code, c := range m.errors {
		ch <- prometheus.MustNewConstMetric(descErrors, prometheus.CounterValue, float64(c.Load()), code)
	}
	m.latency.Collect(ch)
}

// Collector returns the token endpoint's metrics for a Prometheus registry.
func (s *Service) Collector() prometheus.Collector { return s.metrics }
