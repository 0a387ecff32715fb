package intercept

import "github.com/prometheus/client_golang/prometheus"

// Results of an intercepted connection (mesh_intercept_connections_total).
const (
	ResultService = "service" // handed to a service's chain or relay
	ResultPassed  = "passed"  // unknown destination, connected unchanged
	ResultBlocked = "blocked" // unknown destination, closed
	ResultError   = "error"   // no original destination, or no server
)

// Metrics count intercepted connections.
type Metrics struct{ conns *prometheus.CounterVec }

// NewMetrics registers the intercept metrics on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{conns: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "mesh", Name: "intercept_connections_total",
		Help: "Connections redirected to an intercept listener, by listener and result: service, passed, blocked, error.",
	}, []string{"listener", "result"})}
	if err := reg.Register(m.conns); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *Metrics) count(listener, result string) {
	if m != nil {
		m.conns.WithLabelValues(listener, result).Inc()
	}
}
