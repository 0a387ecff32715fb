package observability

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the agent's governance and infrastructure metrics, as typed
// helpers the agent's layers call: policy outcomes, upstream connections,
// discovery, the xDS client and Consul registration. Per-upstream handles
// (Upstream) are resolved once and cost one atomic add per call. Every
// metric is documented in docs/metrics.md.
type Metrics struct {
	rateLimited        *prometheus.CounterVec
	concurrencyLimited *prometheus.CounterVec

	retries            *prometheus.CounterVec
	budgetExhausted    *prometheus.CounterVec
	timeouts           *prometheus.CounterVec
	breakerState       *prometheus.GaugeVec
	breakerTransitions *prometheus.CounterVec
	breakerRejected    *prometheus.CounterVec
	ejected            *prometheus.GaugeVec
	ejections          *prometheus.CounterVec
	connActive         *prometheus.GaugeVec
	connOpened         *prometheus.CounterVec
	connFailed         *prometheus.CounterVec
	endpoints          *prometheus.GaugeVec
	faults             *prometheus.CounterVec
	mirrors            *prometheus.CounterVec

	xdsConnected  *prometheus.GaugeVec
	xdsLastUpdate *prometheus.GaugeVec
	xdsAcks       *prometheus.CounterVec
	xdsNacks      *prometheus.CounterVec
	xdsResources  *prometheus.CounterVec
	consulReg     prometheus.Gauge
	consulErrors  prometheus.Counter

	rbacDecisions *prometheus.CounterVec // authzmetrics.go
	rules         *labelGuard

	names        *labelGuard
	endpointsSrc atomic.Pointer[func(yield func(service string, healthy int))]
	endpointsMu  sync.Mutex // one scrape fills the endpoints gauge at a time
	mu           sync.Mutex
	upstreams    atomic.Pointer[map[string]*UpstreamMetrics]
	xdsMu        sync.Mutex
	xdsCP        string
}

// NewMetrics registers the agent's governance and infrastructure metrics
// with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help}, labels)
	}
	gauge := func(name, help string, labels ...string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: name, Help: help}, labels)
	}
	m := &Metrics{
		rateLimited:        counter("rate_limited_total", "Requests refused with 429 by the local rate limit.", "direction", "service"),
		concurrencyLimited: counter("concurrency_limited_total", "Requests refused because a concurrency limit was reached.", "direction", "service"),
		retries:            counter("upstream_retries_total", "Requests sent again to an upstream.", "upstream_service"),
		budgetExhausted:    counter("upstream_retry_budget_exhausted_total", "Retries not attempted because the retry budget was spent.", "upstream_service"),
		timeouts:           counter("upstream_timeouts_total", "Requests to an upstream that timed out (504 upstream-timeout).", "upstream_service"),
		breakerState:       gauge("circuit_breaker_state", "Circuit breaker state per upstream: 0 closed, 1 open, 2 half-open.", "upstream_service"),
		breakerTransitions: counter("circuit_breaker_transitions_total", "Circuit breaker state changes per upstream, by the state entered.", "upstream_service", "to"),
		breakerRejected:    counter("circuit_breaker_rejected_total", "Requests refused with 503 circuit-open.", "upstream_service"),
		ejected:            gauge("outlier_ejected_endpoints", "Endpoints of an upstream ejected by outlier detection now.", "upstream_service"),
		ejections:          counter("outlier_ejections_total", "Outlier ejections per upstream.", "upstream_service"),
		connActive:         gauge("upstream_connections_active", "Open connections to an upstream's endpoints (the app, inbound).", "upstream_service"),
		connOpened:         counter("upstream_connections_opened_total", "Connections opened to an upstream's endpoints.", "upstream_service"),
		connFailed:         counter("upstream_connections_failed_total", "Failed connection attempts to an upstream's endpoints.", "upstream_service"),
		endpoints:          gauge("discovery_endpoints", "Healthy endpoints known for a service.", "service"),
		faults:             counter("faults_injected_total", "Requests a route's fault injection delayed or aborted, per upstream cluster.", "upstream_service", "fault"),
		mirrors:            counter("mirror_requests_total", "Copies of requests for a mirror cluster: sent, dropped (too many in flight, body over the bound) or failed.", "upstream_service", "result"),
		xdsConnected:       gauge("xds_client_connected", "1 for the control plane the agent streams from, 0 for the others it knows.", "control_plane"),
		xdsLastUpdate:      gauge("xds_client_last_update_timestamp_seconds", "Unix time of the last accepted xDS update, per resource type.", "type"),
		xdsAcks:            counter("xds_client_acks_total", "xDS updates accepted (ACKed), per resource type.", "type"),
		xdsNacks:           counter("xds_client_nacks_total", "xDS updates rejected (NACKed), per resource type.", "type"),
		xdsResources:       counter("xds_client_resources_received_total", "Resources received in delta xDS responses, per resource type and change (updated, removed).", "type", "change"),
		consulReg: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "consul_registered",
			Help: "1 while the app is registered in Consul, else 0."}),
		consulErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "consul_registration_errors_total",
			Help: "Failed Consul (re-)registration attempts."}),
		names:         newLabelGuard(1000),
		rules:         newLabelGuard(maxRuleLabels),
		rbacDecisions: counter("rbac_decisions_total", "Authorization decisions on the inbound side, by service, action (allow, deny) and the rule that decided (default: none matched).", "service", "action", "rule"),
	}
	var errs []error
	for _, c := range []**prometheus.CounterVec{&m.rateLimited, &m.concurrencyLimited, &m.retries, &m.budgetExhausted,
		&m.timeouts, &m.breakerTransitions, &m.breakerRejected, &m.ejections, &m.connOpened, &m.connFailed,
		&m.xdsAcks, &m.xdsNacks, &m.xdsResources, &m.rbacDecisions, &m.faults, &m.mirrors} {
		errs = append(errs, register(reg, c))
	}
	for _, g := range []**prometheus.GaugeVec{&m.breakerState, &m.ejected, &m.connActive,
		&m.xdsConnected, &m.xdsLastUpdate} {
		errs = append(errs, register(reg, g))
	}
	// The endpoints gauge may be filled at scrape time (EndpointsFrom). A
	// Metrics rebuilt on the same registry (a reload) takes over the
	// registered collector and its source.
	ec := &endpointsCollector{vec: m.endpoints, m: m}
	errs = append(errs, register(reg, &ec))
	m.endpoints = ec.vec
	if ec.m != m {
		if src := ec.m.endpointsSrc.Load(); src != nil {
			m.endpointsSrc.Store(src)
		}
		ec.m = m
	}
	errs = append(errs, register(reg, &m.consulReg), register(reg, &m.consulErrors))
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	empty := map[string]*UpstreamMetrics{}
	m.upstreams.Store(&empty)
	return m, nil
}

// RateLimited counts one request refused by the local rate limit;
// direction is "inbound" or "outbound", service the service limited.
func (m *Metrics) RateLimited(direction, service string) {
	m.rateLimited.WithLabelValues(direction, m.names.value(service)).Inc()
}

// ConcurrencyLimited counts one request refused by a concurrency limit.
func (m *Metrics) ConcurrencyLimited(direction, service string) {
	m.concurrencyLimited.WithLabelValues(direction, m.names.value(service)).Inc()
}

// Limits returns the refusal counters of one direction and service, for
// the request path: each series is looked up once, at its first refusal
// (so a limit that never refuses adds no series).
func (m *Metrics) Limits(direction, service string) *LimitMetrics {
	name := m.names.value(service)
	return &LimitMetrics{
		rate:        lazyCounter{vec: m.rateLimited, labels: [2]string{direction, name}},
		concurrency: lazyCounter{vec: m.concurrencyLimited, labels: [2]string{direction, name}},
	}
}

// LimitMetrics count the requests one listener direction refused for one
// service. Its methods do nothing on a nil receiver.
type LimitMetrics struct {
	rate, concurrency lazyCounter
}

// RateLimited counts one request refused by the rate limit.
func (l *LimitMetrics) RateLimited() {
	if l != nil {
		l.rate.inc()
	}
}

// ConcurrencyLimited counts one request refused by a concurrency limit.
func (l *LimitMetrics) ConcurrencyLimited() {
	if l != nil {
		l.concurrency.inc()
	}
}

// lazyCounter is one series of a counter vector, resolved at its first
// increment.
type lazyCounter struct {
	vec    *prometheus.CounterVec
	labels [2]string
	c      atomic.Pointer[prometheus.Counter]
}

func (l *lazyCounter) inc() {
	c := l.c.Load()
	if c == nil {
		cc := l.vec.WithLabelValues(l.labels[:]...)
		c = &cc
		l.c.Store(c)
	}
	(*c).Inc()
}

// EndpointsFrom makes mesh_discovery_endpoints read the endpoint counts
// from counts at every scrape, instead of what Endpoints recorded: the
// series then always match what the agent routes on, and services it
// no longer knows disappear. counts calls yield once per service.
func (m *Metrics) EndpointsFrom(counts func(yield func(service string, healthy int))) {
	m.endpointsSrc.Store(&counts)
}

// endpointsCollector is mesh_discovery_endpoints: the gauge vector, filled
// from the EndpointsFrom source (when there is one) at every scrape.
type endpointsCollector struct {
	vec *prometheus.GaugeVec
	m   *Metrics
}

func (c *endpointsCollector) Describe(ch chan<- *prometheus.Desc) { c.vec.Describe(ch) }

func (c *endpointsCollector) Collect(ch chan<- prometheus.Metric) {
	if src := c.m.endpointsSrc.Load(); src != nil {
		c.m.endpointsMu.Lock()
		c.vec.Reset()
		(*src)(func(service string, n int) {
			c.vec.WithLabelValues(c.m.names.value(service)).Set(float64(n))
		})
		c.vec.Collect(ch)
		c.m.endpointsMu.Unlock()
		return
	}
	c.vec.Collect(ch)
}

// Endpoints records how many healthy endpoints service has.
func (m *Metrics) Endpoints(service string, n int) {
	m.endpoints.WithLabelValues(m.names.value(service)).Set(float64(n))
}

// ForgetService removes a service's per-service series (it left the
// catalogue), so that dashboards stop showing it.
func (m *Metrics) ForgetService(service string) {
	m.endpoints.DeleteLabelValues(service)
	for _, v := range []*prometheus.GaugeVec{m.breakerState, m.ejected, m.connActive} {
		v.DeleteLabelValues(service)
	}
}

// XDSConnected records that the agent now streams from controlPlane
// (host:port); known are all configured control planes, shown as 0.
func (m *Metrics) XDSConnected(controlPlane string, known ...string) {
	m.xdsMu.Lock()
	defer m.xdsMu.Unlock()
	for _, cp := range known {
		m.xdsConnected.WithLabelValues(cp).Set(0)
	}
	if m.xdsCP != "" && m.xdsCP != controlPlane {
		m.xdsConnected.WithLabelValues(m.xdsCP).Set(0)
	}
	m.xdsCP = controlPlane
	m.xdsConnected.WithLabelValues(controlPlane).Set(1)
}

// XDSDisconnected records that the stream to the control plane ended.
func (m *Metrics) XDSDisconnected() {
	m.xdsMu.Lock()
	defer m.xdsMu.Unlock()
	if m.xdsCP != "" {
		m.xdsConnected.WithLabelValues(m.xdsCP).Set(0)
	}
	m.xdsCP = ""
}

// XDSUpdate records one xDS response of typeURL: ACKed (accepted and
// applied, which sets the last-update time) or NACKed. The type label is
// the short name the control plane's metrics use (cluster, endpoint,
// listener, route, secret).
func (m *Metrics) XDSUpdate(typeURL string, acked bool) {
	typ := xdsType(typeURL)
	if !acked {
		m.xdsNacks.WithLabelValues(typ).Inc()
		return
	}
	m.xdsAcks.WithLabelValues(typ).Inc()
	m.xdsLastUpdate.WithLabelValues(typ).Set(float64(time.Now().UnixNano()) / 1e9)
}

// xdsType maps an Envoy v3 type URL to its short name; unknown types are
// "other".
// XDSResources counts the resources one delta response updated and
// removed.
func (m *Metrics) XDSResources(typeURL string, updated, removed int) {
	typ := xdsType(typeURL)
	m.xdsResources.WithLabelValues(typ, "updated").Add(float64(updated))
	m.xdsResources.WithLabelValues(typ, "removed").Add(float64(removed))
}

func xdsType(typeURL string) string {
	switch typeURL[strings.LastIndexByte(typeURL, '.')+1:] {
	case "Cluster":
		return "cluster"
	case "ClusterLoadAssignment":
		return "endpoint"
	case "Listener":
		return "listener"
	case "RouteConfiguration":
		return "route"
	case "Secret":
		return "secret"
	case "ScopedRouteConfiguration":
		return "scoped-route"
	case "VirtualHost":
		return "virtual-host"
	}
	return labelOther
}

// ConsulRegistered records whether the app is registered in Consul now.
func (m *Metrics) ConsulRegistered(ok bool) {
	if ok {
		m.consulReg.Set(1)
	} else {
		m.consulReg.Set(0)
	}
}

// ConsulRegistrationFailed counts one failed (re-)registration.
func (m *Metrics) ConsulRegistrationFailed() { m.consulErrors.Inc() }

// Upstream returns the metric handles of one upstream service, resolved
// once and cached: calls on the request path cost an atomic add.
func (m *Metrics) Upstream(service string) *UpstreamMetrics {
	if u, ok := (*m.upstreams.Load())[service]; ok {
		return u
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	old := *m.upstreams.Load()
	if u, ok := old[service]; ok {
		return u
	}
	label := m.names.value(service)
	if u, ok := old[label]; ok {
		return u // "other"
	}
	u := &UpstreamMetrics{
		retries:         m.retries.WithLabelValues(label),
		budgetExhausted: m.budgetExhausted.WithLabelValues(label),
		timeouts:        m.timeouts.WithLabelValues(label),
		breakerState:    m.breakerState.WithLabelValues(label),
		breakerRejected: m.breakerRejected.WithLabelValues(label),
		ejected:         m.ejected.WithLabelValues(label),
		ejections:       m.ejections.WithLabelValues(label),
		connActive:      m.connActive.WithLabelValues(label),
		connOpened:      m.connOpened.WithLabelValues(label),
		connFailed:      m.connFailed.WithLabelValues(label),
		faultDelays:     m.faults.WithLabelValues(label, "delay"),
		faultAborts:     m.faults.WithLabelValues(label, "abort"),
		mirrorSent:      m.mirrors.WithLabelValues(label, "sent"),
		mirrorDropped:   m.mirrors.WithLabelValues(label, "dropped"),
		mirrorFailed:    m.mirrors.WithLabelValues(label, "failed"),
	}
	for i, s := range breakerStates {
		u.transitions[i] = m.breakerTransitions.WithLabelValues(label, s)
	}
	next := make(map[string]*UpstreamMetrics, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[label] = u
	next[service] = u
	m.upstreams.Store(&next)
	return u
}

// breakerStates are the circuit states, indexed by their gauge value.
var breakerStates = [...]string{"closed", "open", "half-open"}

// UpstreamMetrics are the metric handles of one upstream service. Its
// methods do nothing on a nil receiver, so that uninstrumented callers
// (tests, benchmarks) need not check.
type UpstreamMetrics struct {
	retries, budgetExhausted, timeouts, breakerRejected, ejections prometheus.Counter
	connOpened, connFailed                                         prometheus.Counter
	faultDelays, faultAborts                                       prometheus.Counter
	mirrorSent, mirrorDropped, mirrorFailed                        prometheus.Counter
	breakerState, ejected, connActive                              prometheus.Gauge
	transitions                                                    [len(breakerStates)]prometheus.Counter
}

// FaultDelayed counts one request a fault injection delayed.
func (u *UpstreamMetrics) FaultDelayed() {
	if u != nil {
		u.faultDelays.Inc()
	}
}

// FaultAborted counts one request a fault injection aborted.
func (u *UpstreamMetrics) FaultAborted() {
	if u != nil {
		u.faultAborts.Inc()
	}
}

// Mirrored counts one copy of a request sent to the upstream as a mirror
// (sent), dropped before it was sent, or failed (no response).
func (u *UpstreamMetrics) Mirrored(sent, dropped bool) {
	if u == nil {
		return
	}
	switch {
	case dropped:
		u.mirrorDropped.Inc()
	case sent:
		u.mirrorSent.Inc()
	default:
		u.mirrorFailed.Inc()
	}
}

// Retry counts one retried request.
func (u *UpstreamMetrics) Retry() {
	if u != nil {
		u.retries.Inc()
	}
}

// RetryBudgetExhausted counts one retry skipped for lack of budget.
func (u *UpstreamMetrics) RetryBudgetExhausted() {
	if u != nil {
		u.budgetExhausted.Inc()
	}
}

// Timeout counts one request that timed out.
func (u *UpstreamMetrics) Timeout() {
	if u != nil {
		u.timeouts.Inc()
	}
}

// BreakerRejected counts one request refused by an open circuit.
func (u *UpstreamMetrics) BreakerRejected() {
	if u != nil {
		u.breakerRejected.Inc()
	}
}

// BreakerState records that the upstream's circuit entered state:
// "closed", "open" or "half-open" (governance/breaker.State.String()).
func (u *UpstreamMetrics) BreakerState(state string) {
	if u == nil {
		return
	}
	for i, s := range breakerStates {
		if s == state {
			u.breakerState.Set(float64(i))
			u.transitions[i].Inc()
			return
		}
	}
}

// Ejected records that outlier detection ejected one more endpoint;
// ejectedNow is how many are ejected now.
func (u *UpstreamMetrics) Ejected(ejectedNow int) {
	if u == nil {
		return
	}
	u.ejections.Inc()
	u.ejected.Set(float64(ejectedNow))
}

// EjectedNow records how many endpoints are ejected now (after some
// returned).
func (u *UpstreamMetrics) EjectedNow(n int) {
	if u != nil {
		u.ejected.Set(float64(n))
	}
}

// DialFunc dials like net.Dialer.DialContext.
type DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error)

// Dialer wraps dial so that connections are counted per upstream service
// (opened, failed, active). The service is the UpstreamService of the
// Record in the dial's context (net/http dials with the values of the
// request that asked for the connection); without one it is "unknown".
func (m *Metrics) Dialer(dial DialFunc) DialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		service := labelUnknown
		if rec := RecordFrom(ctx); rec != nil && rec.UpstreamService != "" {
			service = rec.UpstreamService
		}
		u := m.Upstream(service)
		c, err := dial(ctx, network, addr)
		if err != nil {
			u.connFailed.Inc()
			return nil, err
		}
		u.connOpened.Inc()
		u.connActive.Inc()
		return &countedConn{Conn: c, active: u.connActive}, nil
	}
}

// countedConn decrements the active gauge once, when closed.
type countedConn struct {
	net.Conn
	active prometheus.Gauge
	closed atomic.Bool
}

func (c *countedConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.active.Dec()
	}
	return c.Conn.Close()
}

// SyscallConn exposes the descriptor of a plain TCP connection (the
// HTTP/1.1 client waits for a response on it without holding a buffer);
// a wrapped one (TLS) has none to expose.
func (c *countedConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errors.ErrUnsupported
}
