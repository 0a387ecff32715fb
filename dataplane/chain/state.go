package chain

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/governance/balancer"
	"github.com/meshvm/mesh/governance/breaker"
	"github.com/meshvm/mesh/governance/clock"
	"github.com/meshvm/mesh/governance/outlier"
	"github.com/meshvm/mesh/governance/ratelimit"
	"github.com/meshvm/mesh/governance/registry"
	"github.com/meshvm/mesh/governance/retry"
	"github.com/meshvm/mesh/observability"
	"github.com/meshvm/mesh/observability/loadreport"
)

// inboundKey is the registry key of the agent's own token bucket.
const inboundKey = "inbound"

// State is the governance state that outlives a table: per upstream
// service its breaker window, concurrency counters, retry budget and
// outlier state (per endpoint, with requests in flight), and the inbound
// token bucket and concurrency limit. Compile takes what a table uses from
// it, updating parameters in place, and drops what a table no longer
// uses. Run sweeps outlier ejections. One State serves one agent.
type State struct {
	clk clock.Clock

	compileMu sync.Mutex // one Compile at a time
	services  *registry.Registry[string, config.Policy, *service]
	buckets   *registry.Registry[string, ratelimit.Config, *ratelimit.Bucket]
	inLimit   *breaker.Limit
	pushed    chan struct{} // wakes Run after a compile

	metrics *observability.Metrics // nil: not instrumented
	load    *loadreport.Store      // nil: no load reports

	// miss, if set, is asked for a service a static table does not know
	// (OnMiss).
	miss func(ctx context.Context, service string) *Handlers
}

// OnMiss sets what the request path asks when a static (xDS) table does
// not know the service a request is for: fn may fetch it (the agent's
// on-demand subscription) and returns the handlers that know it, or nil
// for 503 no-route. Set it before serving.
func (s *State) OnMiss(fn func(ctx context.Context, service string) *Handlers) { s.miss = fn }

// LastCall is when the service was last called through handlers of this
// state (false if it has no state: never called, or dropped).
func (s *State) LastCall(service string) (time.Time, bool) {
	svc, ok := s.services.Get(service)
	if !ok {
		return time.Time{}, false
	}
	return time.Unix(svc.lastCall.Load(), 0), true
}

// NewState returns empty state. clk may be nil for the system clock; the
// governance algorithms read it (timeouts always use real time).
func NewState(clk clock.Clock) *State {
	clk = clock.Or(clk)
	s := &State{clk: clk}
	*s = State{
		clk: clk,
		services: registry.New(
			func(name string, p config.Policy) (*service, error) {
				svc, err := newService(name, p, clk, s.metrics)
				if svc != nil {
					svc.load = s.load
				}
				return svc, err
			},
			(*service).update,
		),
		buckets: registry.New(
			func(_ string, c ratelimit.Config) (*ratelimit.Bucket, error) { return ratelimit.New(c, clk) },
			(*ratelimit.Bucket).Update,
		),
		inLimit: breaker.NewLimit(0),
		pushed:  make(chan struct{}, 1),
	}
	return s
}

// WithMetrics makes the state report policy outcomes to m (per upstream
// service: breaker state and transitions, rejections, ejections,
// retries, retry-budget exhaustion, timeouts, concurrency refusals; the
// inbound rate and concurrency limits under the local service). Call it
// before the first Compile. It returns s.
func (s *State) WithMetrics(m *observability.Metrics) *State {
	s.metrics = m
	return s
}

// WithLoad makes the outbound path count each request in store, per
// upstream and locality, for load reports. Call it before the first
// Compile. It returns s.
func (s *State) WithLoad(store *loadreport.Store) *State {
	s.load = store
	return s
}

// Run returns ejected endpoints to service when their ejection time is
// over, sweeping each service every outlier_detection.interval, until ctx
// is done.
func (s *State) Run(ctx context.Context) error {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-s.pushed:
			if !t.Stop() {
				select {
				case <-t.C:
				default:
				}
			}
		}
		t.Reset(s.sweep(s.clk.Nanotime()))
	}
}

// sweep sweeps the services that are due and returns the time until the
// next one is.
func (s *State) sweep(now int64) time.Duration {
	next := time.Second // also picks up services created on the request path
	s.services.Range(func(_ string, svc *service) bool {
		iv := int64(svc.detector.Config().Interval)
		last := svc.lastSweep.Load()
		if last == 0 || now-last >= iv {
			if last != 0 && svc.detector.Sweep(now) > 0 {
				svc.m.EjectedNow(svc.detector.Ejected())
			}
			svc.lastSweep.Store(now)
			last = now
		}
		next = min(next, time.Duration(last+iv-now))
		return true
	})
	return max(next, time.Millisecond)
}

// ServiceStatus is what the state holds about one upstream service, for
// /config_dump and tests.
type ServiceStatus struct {
	Breaker        string `json:"breaker"`
	WindowRequests int64  `json:"window_requests"`
	WindowFailures int64  `json:"window_failures"`
	Active         int64  `json:"active_requests"`
	Pending        int64  `json:"pending_requests"`
	ActiveRetries  int64  `json:"active_retries"`
	// Ejected lists the endpoints outlier detection has ejected now.
	Ejected []string `json:"ejected,omitempty"`
}

// Status returns the state of every upstream service it holds.
func (s *State) Status() map[string]ServiceStatus {
	out := map[string]ServiceStatus{}
	s.services.Range(func(name string, svc *service) bool {
		total, failed := svc.breaker.Counts()
		st := ServiceStatus{
			Breaker:        svc.breaker.State().String(),
			WindowRequests: total,
			WindowFailures: failed,
			Active:         svc.limits.Requests.Active(),
			Pending:        svc.limits.Pending.Active(),
			ActiveRetries:  svc.budget.Active(),
		}
		svc.mu.Lock()
		for addr, h := range svc.hosts {
			if h.Ejected() {
				st.Ejected = append(st.Ejected, addr)
			}
		}
		svc.mu.Unlock()
		out[name] = st
		return true
	})
	return out
}

// InboundTokens returns the tokens left in the inbound bucket, or -1 when
// the inbound side has no rate limit.
func (s *State) InboundTokens() int64 {
	if b, ok := s.buckets.Get(inboundKey); ok {
		return b.Tokens()
	}
	return -1
}

// service is the state of one upstream service.
type service struct {
	name     string
	limits   *breaker.Thresholds
	breaker  *breaker.Breaker
	budget   *retry.Budget
	detector *outlier.Detector

	lastSweep atomic.Int64
	// lastCall is when the service was last called (Unix seconds).
	lastCall atomic.Int64

	// Metrics (nil when not instrumented) and the breaker state they last
	// recorded.
	m           *observability.UpstreamMetrics
	limited     *observability.LimitMetrics
	breakerSeen atomic.Uint32

	load *loadreport.Store // nil: no load reports

	// mirrors counts the mirrored copies in flight to this service
	// (step_mirror.go bounds them).
	mirrors atomic.Int64

	mu    sync.Mutex
	hosts map[string]*host // by endpoint address
}

// host is the state of one endpoint: outlier detection and requests in
// flight (least request, locality spill-over).
type host struct {
	outlier.Host
	active atomic.Int64
}

func newService(name string, p config.Policy, clk clock.Clock, m *observability.Metrics) (*service, error) {
	br, err := breaker.New(breakerConfig(p), clk)
	if err != nil {
		return nil, err
	}
	det, err := outlier.New(outlierConfig(p), clk)
	if err != nil {
		return nil, err
	}
	pct, minRetries := budgetConfig(p)
	s := &service{
		name:     name,
		limits:   breaker.NewThresholds(thresholdsConfig(p)),
		breaker:  br,
		budget:   retry.NewBudget(pct, minRetries),
		detector: det,
		hosts:    map[string]*host{},
	}
	if m != nil {
		s.m = m.Upstream(name)
		s.limited = m.Limits(observability.Outbound, name)
	}
	return s, nil
}

// observeBreaker records a change of the circuit's state since the last
// one recorded. Called after each call that may change it (Allow, Report,
// Abandon, Update), it costs two atomic loads when nothing changed.
func (s *service) observeBreaker() {
	now := uint32(s.breaker.State())
	seen := s.breakerSeen.Load()
	if now != seen && s.breakerSeen.CompareAndSwap(seen, now) {
		s.m.BreakerState(breaker.State(now).String())
	}
}

// report tells outlier detection how a try to h went, and records an
// ejection.
func (s *service) report(h *host, o outlier.Outcome) {
	if s.detector.Report(&h.Host, o) {
		s.m.Ejected(s.detector.Ejected())
	}
}

func (s *service) update(p config.Policy) error {
	if err := s.breaker.Update(breakerConfig(p)); err != nil {
		return err
	}
	if err := s.detector.Update(outlierConfig(p)); err != nil {
		return err
	}
	s.limits.Update(thresholdsConfig(p))
	s.budget.Update(budgetConfig(p))
	s.observeBreaker() // a policy without a breaker closes the circuit
	return nil
}

func thresholdsConfig(p config.Policy) breaker.ThresholdsConfig {
	cb := p.CircuitBreaker
	return breaker.ThresholdsConfig{
		MaxRequests:        int64(cb.MaxRequests),
		MaxPendingRequests: int64(cb.MaxPendingRequests),
		MaxConnections:     int64(cb.MaxConnections),
	}
}

func outlierConfig(p config.Policy) outlier.Config {
	od := p.OutlierDetection
	return outlier.Config{
		Consecutive5xx:            od.Consecutive5xx,
		ConsecutiveGatewayFailure: od.ConsecutiveGatewayFailure,
		Interval:                  od.Interval,
		BaseEjectionTime:          od.BaseEjectionTime,
		MaxEjectionPercent:        od.MaxEjectionPercent,
	}
}

// defaultMaxRetries is Envoy's max_retries circuit-breaker threshold, the
// cap on concurrent retries when no retry budget is configured.
const defaultMaxRetries = 3

func budgetConfig(p config.Policy) (percent float64, minConcurrency int64) {
	r := p.Retries
	if r.BudgetPercent == 0 && r.MinRetryConcurrency == 0 {
		return 0, defaultMaxRetries
	}
	return r.BudgetPercent, int64(r.MinRetryConcurrency)
}

// endpointSet is one list of a service's endpoints with their state and a
// picker over them. It is immutable once built.
type endpointSet struct {
	eps    []endpoint.Endpoint
	hosts  []*host
	loads  []*loadreport.Locality // per endpoint; nil entries without load reports
	picker *balancer.Picker
}

// endpointSet builds the set for eps (the resolver's or the table's
// shared slice), reusing the state of endpoints it already knows and
// forgetting the others.
func (s *service) endpointSet(eps []endpoint.Endpoint, opts balancer.Options) (*endpointSet, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	set := &endpointSet{eps: eps, hosts: make([]*host, len(eps)), loads: make([]*loadreport.Locality, len(eps))}
	bes := make([]balancer.Endpoint, len(eps))
	seen := make(map[string]bool, len(eps))
	dets := make([]*outlier.Host, 0, len(eps))
	for i := range eps {
		addr := eps[i].Addr
		h := s.hosts[addr]
		if h == nil {
			h = &host{}
			s.hosts[addr] = h
		}
		set.hosts[i] = h
		set.loads[i] = s.load.Locality(s.name, eps[i].Region, eps[i].Zone)
		bes[i] = balancer.Endpoint{Zone: eps[i].Zone, Key: addr, Weight: eps[i].Weight, Active: &h.active, Health: &h.Host}
		if !seen[addr] {
			seen[addr] = true
			dets = append(dets, &h.Host)
		}
	}
	for addr := range s.hosts {
		if !seen[addr] {
			delete(s.hosts, addr)
		}
	}
	s.detector.SetHosts(dets)
	if s.m != nil {
		s.m.EjectedNow(s.detector.Ejected())
	}
	opts.Version = s.detector
	p, err := balancer.New(bes, opts)
	if err != nil {
		return nil, fmt.Errorf("endpoints of %s: %w", s.name, err)
	}
	set.picker = p
	return set, nil
}

// pick returns the index of the endpoint for the next try; it avoids
// prev, the endpoint of the try before, when it can (Envoy's
// previous_hosts retry predicate).
func (s *endpointSet) pick(prev int) int {
	i := s.picker.Pick()
	for k := 0; k < 3 && i == prev && len(s.eps) > 1; k++ {
		i = s.picker.Pick()
	}
	return i
}
