package observability

import (
	"errors"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

const namespace = "mesh"

// durationBuckets span 100µs (a local hop) to 10s (a slow upstream).
var durationBuckets = []float64{
	0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
	0.1, 0.25, 0.5, 1, 2.5, 5, 10,
}

// Label values that stand for "not known" or "too many".
const (
	labelNone    = "none"    // no mesh reason: the upstream answered
	labelUnknown = "unknown" // no upstream chosen
	labelOther   = "other"   // a value past a label's cardinality cap
)

// requestMetrics are the RED metrics Instrument records.
type requestMetrics struct {
	requests  *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	inFlight  *prometheus.GaugeVec
	bytesIn   *prometheus.CounterVec
	bytesOut  *prometheus.CounterVec
	upstreams *labelGuard
	reasons   *labelGuard
}

var requestLabels = []string{"direction", "local_service", "upstream_service", "code_class", "reason"}

func newRequestMetrics(reg prometheus.Registerer) (*requestMetrics, error) {
	m := &requestMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "requests_total",
			Help: "Requests that crossed a listener, by direction, local and upstream service, response code class and mesh reason.",
		}, requestLabels),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "request_duration_seconds",
			Help:    "Time from receiving a request's headers to the end of its response.",
			Buckets: durationBuckets,
		}, requestLabels),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "requests_in_flight",
			Help: "Requests being handled now, by direction and local service.",
		}, []string{"direction", "local_service"}),
		bytesIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "request_bytes_total",
			Help: "Request body bytes read from callers.",
		}, requestLabels),
		bytesOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "response_bytes_total",
			Help: "Response body bytes written to callers.",
		}, requestLabels),
		upstreams: newLabelGuard(1000),
		reasons:   newLabelGuard(64),
	}
	if err := errors.Join(register(reg, &m.requests), register(reg, &m.duration), register(reg, &m.inFlight),
		register(reg, &m.bytesIn), register(reg, &m.bytesOut)); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers *c with reg. When an equal collector is registered
// already (an Observer rebuilt on a config reload), *c becomes that one,
// so that counters carry on instead of failing the reload.
func register[T prometheus.Collector](reg prometheus.Registerer, c *T) error {
	err := reg.Register(*c)
	if err == nil {
		return nil
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(T); ok {
			*c = existing
			return nil
		}
	}
	return err
}

// seriesKey picks one request series of a listener.
type seriesKey struct {
	upstream string
	class    uint8 // status / 100; 0 when no status was written
	reason   string
}

// series are the request metrics of one label set, resolved once.
type series struct {
	requests prometheus.Counter
	duration prometheus.Observer
	bytesIn  prometheus.Counter
	bytesOut prometheus.Counter
}

var codeClasses = [...]string{"none", "1xx", "2xx", "3xx", "4xx", "5xx"}

// seriesCache maps label sets to resolved series for one listener. The map
// is copy-on-write so that the request path reads it without locks or
// allocations; it only grows when a new label set appears.
type seriesCache struct {
	m         *requestMetrics
	direction string
	local     string
	mu        sync.Mutex
	cur       atomic.Pointer[map[seriesKey]*series]
}

func (c *seriesCache) get(k seriesKey) *series {
	if m := c.cur.Load(); m != nil {
		if s, ok := (*m)[k]; ok {
			return s
		}
	}
	return c.add(k)
}

func (c *seriesCache) add(k seriesKey) *series {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.cur.Load()
	if old != nil {
		if s, ok := (*old)[k]; ok {
			return s
		}
	}
	class := "none"
	if int(k.class) < len(codeClasses) {
		class = codeClasses[k.class]
	}
	lv := []string{c.direction, c.local, k.upstream, class, k.reason}
	s := &series{
		requests: c.m.requests.WithLabelValues(lv...),
		duration: c.m.duration.WithLabelValues(lv...),
		bytesIn:  c.m.bytesIn.WithLabelValues(lv...),
		bytesOut: c.m.bytesOut.WithLabelValues(lv...),
	}
	next := make(map[seriesKey]*series, 1)
	if old != nil {
		next = make(map[seriesKey]*series, len(*old)+1)
		for kk, v := range *old {
			next[kk] = v
		}
	}
	next[k] = s
	c.cur.Store(&next)
	return s
}

// labelGuard bounds the values one label takes: values must be short and
// made of [a-z0-9._-], and past max distinct values every new one becomes
// "other". A caller or an app can then never blow up the series count.
type labelGuard struct {
	max  int
	mu   sync.Mutex
	seen atomic.Pointer[map[string]struct{}]
}

func newLabelGuard(max int) *labelGuard {
	g := &labelGuard{max: max}
	m := map[string]struct{}{}
	g.seen.Store(&m)
	return g
}

// value returns v if it may be used as a label value, else "other".
func (g *labelGuard) value(v string) string {
	if _, ok := (*g.seen.Load())[v]; ok {
		return v
	}
	if !labelSafe(v) {
		return labelOther
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	old := *g.seen.Load()
	if _, ok := old[v]; ok {
		return v
	}
	if len(old) >= g.max {
		return labelOther
	}
	next := make(map[string]struct{}, len(old)+1)
	for k := range old {
		next[k] = struct{}{}
	}
	next[v] = struct{}{}
	g.seen.Store(&next)
	return v
}

func labelSafe(v string) bool {
	if v == "" || len(v) > 64 {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		// '/' joins a service and its subset in a cluster name (orders/v2).
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == '/') {
			return false
		}
	}
	return true
}
