package mtls

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics count inbound connections by transport and TLS handshakes by
// side and result (docs/metrics.md).
type Metrics struct {
	conns      *prometheus.CounterVec
	handshakes *prometheus.CounterVec
	errs       *prometheus.CounterVec
}

// Label values.
const (
	SideServer = "server" // the inbound listener
	SideClient = "client" // dialing a peer agent

	TransportMTLS      = "mtls"
	TransportPlaintext = "plaintext"
)

// NewMetrics registers the metrics on reg, reusing those already there
// (several agents in one test process).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		conns: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "mesh", Subsystem: "inbound", Name: "connections_total",
			Help: "Connections accepted by the inbound listener, by transport: tls=mtls or plaintext (permissive mode, or identity off)."},
			[]string{"tls"}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "mesh", Subsystem: "tls", Name: "handshakes_total",
			Help: "mTLS handshakes between agents by side (server: inbound, client: outbound) and result (ok, error)."},
			[]string{"side", "result"}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "mesh", Subsystem: "tls", Name: "handshake_errors_total",
			Help: "Refused or failed mTLS handshakes by side and reason."},
			[]string{"side", "reason"}),
	}
	var err error
	if m.conns, err = register(reg, m.conns); err != nil {
		return nil, err
	}
	if m.handshakes, err = register(reg, m.handshakes); err != nil {
		return nil, err
	}
	if m.errs, err = register(reg, m.errs); err != nil {
		return nil, err
	}
	return m, nil
}

func register[T prometheus.Collector](reg prometheus.Registerer, c T) (T, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if old, ok := are.ExistingCollector.(T); ok {
				return old, nil
			}
		}
		return c, fmt.Errorf("register mtls metrics: %w", err)
	}
	return c, nil
}

func (m *Metrics) conn(transport string) {
	if m != nil {
		m.conns.WithLabelValues(transport).Inc()
	}
}

func (m *Metrics) handshake(side string, err error) {
	if m == nil {
		return
	}
	if err == nil {
		m.handshakes.WithLabelValues(side, "ok").Inc()
		return
	}
	m.handshakes.WithLabelValues(side, "error").Inc()
	m.errs.WithLabelValues(side, Reason(err)).Inc()
}

// refused counts a connection refused before any handshake (plaintext in
// strict mode).
func (m *Metrics) refused(reason string) {
	if m != nil {
		m.handshakes.WithLabelValues(SideServer, "error").Inc()
		m.errs.WithLabelValues(SideServer, reason).Inc()
	}
}

// ConnsCounter and ErrorsCounter are single series, for tests.
func (m *Metrics) ConnsCounter(transport string) prometheus.Counter {
	return m.conns.WithLabelValues(transport)
}

func (m *Metrics) ErrorsCounter(side, reason string) prometheus.Counter {
	return m.errs.WithLabelValues(side, reason)
}
