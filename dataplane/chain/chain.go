// Package chain is the agent's governed data path. Compile turns one
// routing table (dataplane/table) into the handlers of the agent's listeners:
// ordered lists of named steps (steps.go), compiled once per table and
// upstream service. Inbound, the callee-side policies (token-bucket rate
// limit, concurrency limit) run before the app; outbound, the caller-side
// ones (concurrency thresholds, circuit breaker, route timeout, then tries:
// load balancing, outlier detection, per-try timeouts, retries within a
// budget) before an upstream, around a proxy.Forwarder. A step refuses a
// request by returning an error; one edge (render.go) renders it, records
// the reason for the access log and counts it.
//
// The handlers hold no state that must outlive a table: token buckets,
// breaker windows, outlier state and requests in flight live in a State,
// by key, and a new table's handlers take them over. A Switch holds the
// current Handlers behind an atomic pointer: each request loads it once
// and sees one whole table.
package chain

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/dataplane/proxy"
	"github.com/meshvm/mesh/dataplane/table"
	"github.com/meshvm/mesh/governance/balancer"
	"github.com/meshvm/mesh/governance/breaker"
	"github.com/meshvm/mesh/governance/outlier"
	"github.com/meshvm/mesh/governance/ratelimit"
	"github.com/meshvm/mesh/governance/registry"
	"github.com/meshvm/mesh/governance/retry"
	"github.com/meshvm/mesh/observability"
)

// Local is where the agent itself runs: the service it fronts and its
// locality, which locality-aware load balancing prefers.
type Local struct {
	Service string
	Region  string
	Zone    string
}

// Handlers are the listeners' handlers compiled from one table. They are
// immutable; build new ones for a new table with the same State.
type Handlers struct {
	table *table.Table
	local Local
	fwd   *proxy.Forwarder
	st    *State
	res   endpoint.Resolver
	log   zerolog.Logger

	services map[string]*upstream // the table's services
	// Services met on the request path when endpoints come from a live
	// resolver, copy on write.
	lazyMu sync.Mutex
	lazy   atomic.Pointer[map[string]*upstream]

	bucket *ratelimit.Bucket // inbound; nil means no rate limit
	// inLimits counts the inbound refusals (nil: not instrumented).
	inLimits *observability.LimitMetrics

	steps   Steps
	inbound path // the inbound steps
}

// Compile builds the handlers of t. With a static table (xDS) endpoints
// come from t and res may be nil; otherwise res resolves them, and a
// service t does not name gets t.Default when first called. Governance
// state comes from st and is updated in place; state t no longer uses is
// dropped. A table with an invalid policy is an error and changes nothing.
func Compile(t *table.Table, res endpoint.Resolver, local Local, fwd *proxy.Forwarder, st *State, log zerolog.Logger) (*Handlers, error) {
	return CompileSteps(t, res, local, fwd, st, log, DefaultSteps())
}

// CompileSteps is Compile with other step lists than DefaultSteps (tests
// that add a step, a role with other steps).
func CompileSteps(t *table.Table, res endpoint.Resolver, local Local, fwd *proxy.Forwarder, st *State, log zerolog.Logger, steps Steps) (*Handlers, error) {
	if t.Static {
		res = t
	} else if res == nil {
		return nil, errors.New("compile table: no endpoint resolver for a table without endpoints")
	}
	// Check every policy before touching the state.
	pols := make(map[string]policy, len(t.Services)+1)
	for name, s := range t.Services {
		p, err := compilePolicy(s.Policy, local)
		if err != nil {
			return nil, fmt.Errorf("compile table %s: service %s: %w", t.Version, name, err)
		}
		p.lb.MinRingSize, p.lb.MaxRingSize, p.lb.TableSize = s.HashLB.MinRingSize, s.HashLB.MaxRingSize, s.HashLB.MaglevTableSize
		pols[name] = p
	}
	def, err := compilePolicy(t.Default, local)
	if err != nil {
		return nil, fmt.Errorf("compile table %s: default policy: %w", t.Version, err)
	}
	rl, limited := rateLimitConfig(t.Inbound)
	if limited {
		if _, err := ratelimit.New(rl, nil); err != nil {
			return nil, fmt.Errorf("compile table %s: inbound: %w", t.Version, err)
		}
	}

	h := &Handlers{
		table:    t,
		local:    local,
		fwd:      fwd,
		st:       st,
		res:      res,
		log:      log.With().Str("component", "chain").Str("table", t.Version).Logger(),
		services: make(map[string]*upstream, len(t.Services)),
		steps:    steps,
	}
	empty := map[string]*upstream{}
	h.lazy.Store(&empty)
	if st.metrics != nil {
		h.inLimits = st.metrics.Limits(observability.Inbound, local.Service)
	}

	st.compileMu.Lock()
	defer st.compileMu.Unlock()
	_, err = st.services.Push(func(use registry.Use[string, config.Policy, *service]) error {
		names := make(map[string]bool, len(t.Services))
		for name := range t.Services {
			names[name] = true
		}
		if !t.Static {
			// Services first met on the request path keep their state,
			// under the new default policy.
			st.services.Range(func(name string, _ *service) bool {
				names[name] = true
				return true
			})
		}
		for name := range names {
			pol, cp := t.Default, def
			if s, ok := t.Services[name]; ok {
				pol, cp = s.Policy, pols[name]
			}
			svc, err := use(name, pol)
			if err != nil {
				return err
			}
			u, err := h.newUpstream(name, svc, cp)
			if err != nil {
				return err
			}
			h.services[name] = u
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("compile table %s: %w", t.Version, err)
	}
	_, err = st.buckets.Push(func(use registry.Use[string, ratelimit.Config, *ratelimit.Bucket]) error {
		if !limited {
			return nil
		}
		b, err := use(inboundKey, rl)
		h.bucket = b
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("compile table %s: inbound: %w", t.Version, err)
	}
	st.inLimit.SetMax(int64(t.Inbound.MaxRequests))
	if h.inbound, err = h.buildInbound(); err != nil {
		return nil, fmt.Errorf("compile table %s: inbound: %w", t.Version, err)
	}
	select {
	case st.pushed <- struct{}{}:
	default:
	}
	return h, nil
}

// Table returns the table the handlers were compiled from.
func (h *Handlers) Table() *table.Table { return h.table }

// policy is a service's config.Policy in the form the request path reads.
type policy struct {
	timeout  time.Duration
	perTry   time.Duration
	attempts int
	retryOn  retry.Policy
	// replay: retry_on allows retries after the request body was sent,
	// so small bodies are kept for a replay.
	replay bool
	lb     balancer.Options
}

func compilePolicy(p config.Policy, local Local) (policy, error) {
	on, err := retry.Parse(p.Retries.RetryOn)
	if err != nil {
		return policy{}, err
	}
	lbp, err := balancer.ParsePolicy(p.LoadBalancer.Policy)
	if err != nil {
		return policy{}, err
	}
	if _, err := breaker.New(breakerConfig(p), nil); err != nil {
		return policy{}, err
	}
	if _, err := outlier.New(outlierConfig(p), nil); err != nil {
		return policy{}, err
	}
	cp := policy{
		timeout:  p.Timeout,
		perTry:   p.Retries.PerTryTimeout,
		attempts: p.Retries.Attempts,
		retryOn:  retry.Policy{On: on},
		replay:   p.Retries.Attempts > 0 && on&^retry.OnConnectFailure != 0,
		lb:       balancer.Options{Policy: lbp},
	}
	if cp.perTry >= cp.timeout && cp.timeout > 0 {
		cp.perTry = 0 // the route timeout comes first anyway
	}
	if p.LoadBalancer.LocalityAware {
		cp.lb.LocalZone = local.Zone
	}
	return cp, nil
}

// newUpstream compiles one service; with a static table its endpoint set
// is built now.
func (h *Handlers) newUpstream(name string, svc *service, p policy) (*upstream, error) {
	u := &upstream{name: name, svc: svc, pol: p, h: h}
	target := &UpstreamTarget{Name: name, Policy: h.table.Policy(name), u: u}
	if s := h.table.Services[name]; s != nil {
		target.Routes = s.Routes
	}
	steps := make([]Step, 0, len(h.steps.Outbound))
	for _, b := range h.steps.Outbound {
		s, err := b.Build(target)
		if err != nil {
			return nil, fmt.Errorf("step %s of %s: %w", b.Name, name, err)
		}
		if s != nil {
			steps = append(steps, s)
		}
	}
	u.path = newPath(steps)
	u.rest = u.path.first
	for l := u.path.first.l; l != nil; l = l.next.l {
		if _, ok := l.step.(*route); ok {
			u.rest = l.next
		}
	}
	if h.table.Static {
		var eps []endpoint.Endpoint
		if s := h.table.Services[name]; s != nil {
			eps = s.Endpoints
		}
		set, err := svc.endpointSet(eps, p.lb)
		if err != nil {
			return nil, err
		}
		u.set.Store(set)
	}
	return u, nil
}

// lookup returns the compiled upstream of service, creating it under the
// default policy for a service the live resolver knows but the table does
// not name.
func (h *Handlers) lookup(ctx context.Context, name string) (*upstream, error) {
	if u := h.services[name]; u != nil {
		return u, nil
	}
	if h.table.Static {
		return nil, endpoint.ErrUnknownService
	}
	if u := (*h.lazy.Load())[name]; u != nil {
		return u, nil
	}
	// Only services that exist get state: callers cannot make the agent
	// hold state for made-up names.
	if _, err := h.res.Resolve(ctx, name); err != nil {
		return nil, err
	}
	h.lazyMu.Lock()
	defer h.lazyMu.Unlock()
	old := *h.lazy.Load()
	if u := old[name]; u != nil {
		return u, nil
	}
	svc, err := h.st.services.Ensure(name, h.table.Default)
	if err != nil {
		return nil, fmt.Errorf("state of %s: %w", name, err)
	}
	p, err := compilePolicy(h.table.Default, h.local)
	if err != nil {
		return nil, fmt.Errorf("policy of %s: %w", name, err)
	}
	u, err := h.newUpstream(name, svc, p)
	if err != nil {
		return nil, err
	}
	next := make(map[string]*upstream, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[name] = u
	h.lazy.Store(&next)
	return u, nil
}

// Outbound returns the handler of the outbound listener: it routes each
// request by its Host or :authority ("orders", "orders.mesh",
// "orders.service.consul"...) or absolute-form URI (HTTP_PROXY clients)
// to that service, under its policy.
func (h *Handlers) Outbound() http.Handler { return http.HandlerFunc(h.serveOutbound) }

// Upstream returns the handler of a per-upstream listener: everything
// goes to service, whatever its Host.
func (h *Handlers) Upstream(service string) http.Handler {
	return upstreamHandler{h: h, service: service}
}

// Inbound returns the handler of the inbound listener: the callee-side
// policies, then the app at appAddr (host:port).
func (h *Handlers) Inbound(appAddr string) http.Handler {
	return inboundHandler{h: h, app: appAddr}
}

// buildInbound compiles the inbound steps.
func (h *Handlers) buildInbound() (path, error) {
	target := &InboundTarget{Local: h.local, Inbound: h.table.Inbound, h: h}
	steps := make([]Step, 0, len(h.steps.Inbound))
	for _, b := range h.steps.Inbound {
		s, err := b.Build(target)
		if err != nil {
			return path{}, fmt.Errorf("step %s: %w", b.Name, err)
		}
		if s != nil {
			steps = append(steps, s)
		}
	}
	return newPath(steps), nil
}

// Steps returns the names of the steps of the inbound path and of the
// outbound path of service (nil when the handlers do not know it yet).
func (h *Handlers) Steps(service string) (inbound, outbound []string) {
	inbound = h.inbound.names
	if u := h.services[service]; u != nil {
		outbound = u.path.names
	} else if u := (*h.lazy.Load())[service]; u != nil {
		outbound = u.path.names
	}
	return inbound, outbound
}

// serveOutbound is the outbound listener's edge: route by Host (or the
// absolute-form URI) to a service, then run its steps.
func (h *Handlers) serveOutbound(w http.ResponseWriter, r *http.Request) {
	host := r.Host // absolute-form: net/http takes it from the URI
	if r.URL.Host != "" {
		host = r.URL.Host
	}
	x := getExchange(w, r, observability.Outbound, h)
	name := ServiceName(host)
	if name == "" {
		render(x, &proxy.Error{Status: http.StatusServiceUnavailable, Reason: proxy.ReasonNoRoute,
			Err: fmt.Errorf("no service in host %q", host)})
		putExchange(x)
		return
	}
	h.serveService(x, name)
}

// serveService runs the steps of service (the per-upstream listener's
// edge, and the outbound one's after routing).
func (h *Handlers) serveService(x *Exchange, name string) {
	u, err := h.lookup(x.R.Context(), name)
	if err == endpoint.ErrUnknownService && h.st.miss != nil {
		// A service the table does not hold: the agent may fetch it.
		if nh := h.st.miss(x.R.Context(), name); nh != nil {
			x.h = nh
			u, err = nh.lookup(x.R.Context(), name)
		}
	}
	if err != nil {
		render(x, resolveError(name, err))
		putExchange(x)
		return
	}
	if now := time.Now().Unix(); u.svc.lastCall.Load() != now {
		u.svc.lastCall.Store(now)
	}
	x.up = u
	// The service is known now: refusals below are recorded under it.
	x.Rec.SetUpstream(u.name, "")
	run(x, &u.path)
}

// serveInbound is the inbound listener's edge: the inbound steps, then
// the app at app.
func (h *Handlers) serveInbound(w http.ResponseWriter, r *http.Request, app string) {
	x := getExchange(w, r, observability.Inbound, h)
	x.app = app
	run(x, &h.inbound)
}

type upstreamHandler struct {
	h       *Handlers
	service string
}

func (u upstreamHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.h.serveService(getExchange(w, r, observability.Outbound, u.h), u.service)
}

type inboundHandler struct {
	h   *Handlers
	app string
}

func (in inboundHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	in.h.serveInbound(w, r, in.app)
}

// resolveError is the mesh's answer when a service's endpoints cannot be
// resolved.
func resolveError(service string, err error) *proxy.Error {
	switch {
	case errors.Is(err, endpoint.ErrUnknownService):
		return &proxy.Error{Status: http.StatusServiceUnavailable, Reason: proxy.ReasonNoRoute, Err: fmt.Errorf("%s: %w", service, err)}
	case errors.Is(err, context.DeadlineExceeded):
		return &proxy.Error{Status: http.StatusGatewayTimeout, Reason: proxy.ReasonTimeout, Err: fmt.Errorf("resolve %s: %w", service, err)}
	case errors.Is(err, context.Canceled):
		return &proxy.Error{Status: proxy.StatusClientClosedRequest, Reason: proxy.ReasonClientCancelled, Err: err}
	}
	return &proxy.Error{Status: http.StatusServiceUnavailable, Reason: proxy.ReasonNoHealthyEndpoint, Err: fmt.Errorf("resolve %s: %w", service, err)}
}

// Switch holds the current Handlers. Its listener handlers load them once
// per request, so a swap takes effect at the next request and no request
// sees half of two tables.
type Switch struct {
	cur atomic.Pointer[Handlers]
}

// NewSwitch returns a switch holding h.
func NewSwitch(h *Handlers) *Switch {
	s := &Switch{}
	s.cur.Store(h)
	return s
}

// Swap installs h and returns the handlers it replaces.
func (s *Switch) Swap(h *Handlers) *Handlers { return s.cur.Swap(h) }

// Current returns the handlers in use now.
func (s *Switch) Current() *Handlers { return s.cur.Load() }

// Outbound returns the outbound listener's handler (see Handlers.Outbound).
func (s *Switch) Outbound() http.Handler { return outboundSwitch{s} }

// Upstream returns a per-upstream listener's handler (see
// Handlers.Upstream).
func (s *Switch) Upstream(service string) http.Handler {
	return upstreamSwitch{s: s, service: service}
}

// Inbound returns the inbound listener's handler (see Handlers.Inbound).
func (s *Switch) Inbound(appAddr string) http.Handler { return inboundSwitch{s: s, app: appAddr} }

type outboundSwitch struct{ s *Switch }

func (o outboundSwitch) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	o.s.cur.Load().serveOutbound(w, r)
}

type upstreamSwitch struct {
	s       *Switch
	service string
}

func (u upstreamSwitch) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := u.s.cur.Load()
	h.serveService(getExchange(w, r, observability.Outbound, h), u.service)
}

type inboundSwitch struct {
	s   *Switch
	app string
}

func (in inboundSwitch) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	in.s.cur.Load().serveInbound(w, r, in.app)
}
