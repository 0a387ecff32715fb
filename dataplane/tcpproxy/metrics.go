package tcpproxy

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the TCP relays' metrics (docs/metrics.md).
type Metrics struct {
	conns       *prometheus.CounterVec
	active      *prometheus.GaugeVec
	received    *prometheus.CounterVec
	sent        *prometheus.CounterVec
	connectFail *prometheus.CounterVec
}

// NewMetrics registers the relay metrics on reg, reusing those already
// registered there.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	lbl := []string{"direction", "service"}
	m := &Metrics{
		conns: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "mesh", Subsystem: "tcp", Name: "connections_total",
			Help: "Relayed TCP connections that ended, by direction, service and reason (none: closed by a side)."},
			[]string{"direction", "service", "reason"}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "mesh", Subsystem: "tcp", Name: "active_connections",
			Help: "TCP connections being relayed now."}, lbl),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "mesh", Subsystem: "tcp", Name: "received_bytes_total",
			Help: "Bytes relayed from the client to the upstream."}, lbl),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "mesh", Subsystem: "tcp", Name: "sent_bytes_total",
			Help: "Bytes relayed from the upstream to the client."}, lbl),
		connectFail: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "mesh", Subsystem: "tcp", Name: "connect_failures_total",
			Help: "Failed connection attempts to an endpoint (each is reported to outlier detection)."}, lbl),
	}
	var err error
	if m.conns, err = register(reg, m.conns); err != nil {
		return nil, err
	}
	if m.active, err = register(reg, m.active); err != nil {
		return nil, err
	}
	if m.received, err = register(reg, m.received); err != nil {
		return nil, err
	}
	if m.sent, err = register(reg, m.sent); err != nil {
		return nil, err
	}
	if m.connectFail, err = register(reg, m.connectFail); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c, or returns the collector already registered
// under its name (a second agent in one process, a test).
func register[T prometheus.Collector](reg prometheus.Registerer, c T) (T, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(T); ok {
				return existing, nil
			}
		}
		return c, fmt.Errorf("register tcp metrics: %w", err)
	}
	return c, nil
}

// ServiceMetrics are one relay's series; a nil *ServiceMetrics counts
// nothing.
type ServiceMetrics struct {
	m                  *Metrics
	direction, service string
	active             prometheus.Gauge
	received, sent     prometheus.Counter
	connectFail        prometheus.Counter
}

// Service returns the series of one relay.
func (m *Metrics) Service(direction, service string) *ServiceMetrics {
	return &ServiceMetrics{
		m: m, direction: direction, service: service,
		active:      m.active.WithLabelValues(direction, service),
		received:    m.received.WithLabelValues(direction, service),
		sent:        m.sent.WithLabelValues(direction, service),
		connectFail: m.connectFail.WithLabelValues(direction, service),
	}
}

func (s *ServiceMetrics) opened() {
	if s != nil {
		s.active.Inc()
	}
}

// moved counts n bytes relayed one way (toUpstream: from the client).
func (s *ServiceMetrics) moved(toUpstream bool, n int64) {
	if s == nil {
		return
	}
	if toUpstream {
		s.received.Add(float64(n))
	} else {
		s.sent.Add(float64(n))
	}
}

func (s *ServiceMetrics) closed(reason string) {
	if s == nil {
		return
	}
	s.active.Dec()
	if reason == "" {
		reason = "none"
	}
	s.m.conns.WithLabelValues(s.direction, s.service, reason).Inc()
}

func (s *ServiceMetrics) connectFailed() {
	if s != nil {
		s.connectFail.Inc()
	}
}
