package proxy

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Decision labels of the inbound request counter.
const (
	decisionAllow        = "allow"
	decisionDeny         = "deny"
	decisionUnauthorized = "unauthenticated"
	decisionError        = "error"
)

// InboundMetrics are the inbound chain's Prometheus metrics. Counters are
// resolved to their label values once, so a request costs a few atomic
// additions and no map lookup.
type InboundMetrics struct {
	allow, deny, unauthenticated, failed prometheus.Counter
	latency                              prometheus.Observer
}

// NewInboundMetrics registers the inbound metrics with reg (nil: a private
// registry, for tests).
func NewInboundMetrics(reg prometheus.Registerer) (*InboundMetrics, error) {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	reqs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "postern", Subsystem: "inbound", Name: "requests_total",
		Help: "Inbound requests by decision: allow, deny (policy), unauthenticated (token or peer fault), error (the app could not be reached).",
	}, []string{"decision"})
	lat := prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "postern", Subsystem: "inbound", Name: "request_duration_seconds",
		Help:    "Time from the request's arrival to the end of its response, including the app.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10},
	})
	for _, c := range []prometheus.Collector{reqs, lat} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return &InboundMetrics{
		allow:           reqs.WithLabelValues(decisionAllow),
		deny:            reqs.WithLabelValues(decisionDeny),
		unauthenticated: reqs.WithLabelValues(decisionUnauthorized),
		failed:          reqs.WithLabelValues(decisionError),
		latency:         lat,
	}, nil
}

func (m *InboundMetrics) observe(decision string, d time.Duration) {
	if m == nil {
		return
	}
	switch decision {
	case decisionAllow:
		m.allow.Inc()
	case decisionDeny:
		m.deny.Inc()
	case decisionUnauthorized:
		m.unauthenticated.Inc()
	default:
		m.failed.Inc()
	}
	m.latency.Observe(d.Seconds())
}

// registerSidecarGauges registers the gauges computed at scrape time: the
// SVID's remaining lifetime, JWKS readiness and the caches' sizes.
func registerSidecarGauges(reg prometheus.Registerer, svid x509svid.Source, now func() time.Time, jwksReady func() bool, verdicts func() int, contexts func() int) error {
	gauges := []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "postern", Subsystem: "sidecar", Name: "svid_expiry_seconds",
			Help: "Seconds until the sidecar's X.509-SVID expires (negative: expired; -1 when none is held).",
		}, func() float64 {
			s, err := svid.GetX509SVID()
			if err != nil || s == nil || len(s.Certificates) == 0 {
				return -1
			}
			return s.Certificates[0].NotAfter.Sub(now()).Seconds()
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "postern", Subsystem: "sidecar", Name: "jwks_ready",
			Help: "1 once the token service's signing keys are loaded.",
		}, func() float64 {
			if jwksReady() {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "postern", Subsystem: "inbound", Name: "verdict_cache_entries",
			Help: "Verified tokens held in the verdict cache.",
		}, func() float64 { return float64(verdicts()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "postern", Subsystem: "inbound", Name: "contexts",
			Help: "User contexts handed to the app (X-Postern-Context) and not yet expired or evicted.",
		}, func() float64 { return float64(contexts()) }),
	}
	for _, g := range gauges {
		if err := reg.Register(g); err != nil {
			return err
		}
	}
	return nil
}

// registerRevocationMetrics exports the state of the revocation list.
func registerRevocationMetrics(reg prometheus.Registerer, l *RevocationList) error {
	for _, c := range []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "postern", Subsystem: "sidecar", Name: "revocations",
			Help: "Revoked token ids and sessions held from the token service's revocation list.",
		}, func() float64 { return float64(l.Len()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "postern", Subsystem: "sidecar", Name: "revocation_list_age_seconds",
			Help: "Seconds since the revocation list was last fetched (-1 before the first fetch).",
		}, func() float64 {
			if a := l.Age(); a >= 0 {
				return a.Seconds()
			}
			return -1
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "postern", Subsystem: "sidecar", Name: "revocation_list_failures_total",
			Help: "Failed fetches of the revocation list (the last good list stays in force).",
		}, func() float64 { return float64(l.Failures()) }),
	} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
