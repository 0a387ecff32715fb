package gateway

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the gateway's own, beside the requests metrics every role
// records (observability): per route, with a bounded label.
type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	auth     *prometheus.CounterVec
	limited  *prometheus.CounterVec
	applied  prometheus.Counter
	reloads  *prometheus.CounterVec
	routes   *labelGuard
}

// maxRouteLabels bounds the route label: routes past it count as "other".
const maxRouteLabels = 200

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "mesh", Subsystem: "gateway", Name: "requests_total",
			Help: "Requests through the gateway by route (none: unrouted), response code class and mesh reason."},
			[]string{"route", "code_class", "reason"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "mesh", Subsystem: "gateway", Name: "request_duration_seconds",
			Help:    "Time from a request's headers to the end of its response, by route.",
			Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}},
			[]string{"route"}),
		auth: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "mesh", Subsystem: "gateway", Name: "auth_total",
			Help: "Credential checks by result: ok, api-key, anonymous, missing, invalid, forbidden."}, []string{"result"}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "mesh", Subsystem: "gateway", Name: "rate_limited_total",
			Help: "Requests refused with 429 by the edge rate limits, by key kind: ip, subject."}, []string{"key"}),
		applied: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "mesh", Subsystem: "gateway", Name: "config_applied_total",
			Help: "Control-plane configs accepted and swapped in."}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "mesh", Name: "config_reloads_total",
			Help: "Config reloads (SIGHUP) by result: ok, or error (the running config stays)."}, []string{"result"}),
		routes: &labelGuard{max: maxRouteLabels, seen: map[string]bool{}},
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.auth, m.limited, m.applied, m.reloads} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// labelGuard lets the first max distinct values through and maps the
// rest to "other", so a config with many routes cannot grow the series
// without bound.
type labelGuard struct {
	max  int
	mu   sync.Mutex
	seen map[string]bool
}

func (g *labelGuard) value(v string) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.seen[v] {
		return v
	}
	if len(g.seen) >= g.max {
		return "other"
	}
	g.seen[v] = true
	return v
}
