package chain

import (
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/dataplane/proxy"
	"github.com/meshvm/mesh/dataplane/table"
	"github.com/meshvm/mesh/observability"
	"github.com/meshvm/mesh/observability/loadreport"
	"github.com/meshvm/mesh/routematch"
)

// Step is one named stage of a request path: a policy (rate limit,
// breaker, timeout...) or the final send. A step either refuses the
// request by returning an error — a *proxy.Error, rendered once by the
// path's edge (see render.go) — or calls next to go on, and may look at
// what happened after next returns (the breaker reads the outcome).
// A step never writes a refusal itself.
//
// Steps are built once per table and service (see steps.go); Serve runs
// per request and must not allocate for the composition.
type Step interface {
	// Name names the step in docs, logs and /config_dump.
	Name() string
	Serve(x *Exchange, next Next) error
}

// Next is the rest of a path after a step. The zero Next ends the path.
type Next struct{ l *link }

// Serve runs the rest of the path.
func (n Next) Serve(x *Exchange) error {
	if n.l == nil {
		return nil
	}
	return n.l.step.Serve(x, n.l.next)
}

type link struct {
	step Step
	next Next
}

// path is a compiled list of steps.
type path struct {
	first Next
	names []string
}

func newPath(steps []Step) path {
	p := path{names: make([]string, 0, len(steps))}
	for i := len(steps) - 1; i >= 0; i-- {
		p.first = Next{l: &link{step: steps[i], next: p.first}}
	}
	for _, s := range steps {
		p.names = append(p.names, s.Name())
	}
	return p
}

// Exchange is one request crossing a path: the request and its response
// writer, and what the steps decided so far. It is pooled: steps must not
// keep it after Serve returns.
type Exchange struct {
	// W and R are the response writer and the request.
	W http.ResponseWriter
	R *http.Request
	// Rec is the request's observability record (nil when the listener
	// is not instrumented; its methods accept nil).
	Rec *observability.Record
	// Edge is the edge role's own per-request state, for its steps to
	// share (nil until one sets it; always nil on the agent's paths).
	Edge any

	dir string    // observability.Inbound or Outbound
	h   *Handlers // the table the request is served by
	up  *upstream // outbound: the service it was routed to
	app string    // inbound: the app's address

	route    *routematch.Route // matched by the route step; nil: none
	set      *endpointSet      // chosen by the endpoints step
	deadline time.Time         // the route timeout's; zero: none
	retries  *Retries          // the route's retry policy (Forward); nil: the service's
	outcome  outcome           // what the request says about its upstream
	aborted  bool              // the response broke off after it started
	// load counts the request for load reports, from its first try: the
	// first endpoint's locality (nil: not counted).
	load      *loadreport.Locality
	loadStart time.Time
}

var exchanges = sync.Pool{New: func() any { return new(Exchange) }}

func getExchange(w http.ResponseWriter, r *http.Request, dir string, h *Handlers) *Exchange {
	x := exchanges.Get().(*Exchange)
	x.W, x.R, x.dir, x.h = w, r, dir, h
	x.Rec = observability.RecordFrom(r.Context())
	return x
}

func putExchange(x *Exchange) {
	*x = Exchange{}
	exchanges.Put(x)
}

// Service is the upstream service the request was routed to ("" inbound
// and before routing).
func (x *Exchange) Service() string {
	if x.up == nil {
		return ""
	}
	return x.up.name
}

// Route is the route the route step matched (nil when the service has
// no routes, and on an edge path): the steps after it read their
// per-route configuration from it (Route.PerFilterConfig).
func (x *Exchange) Route() *routematch.Route { return x.route }

// Direction is observability.Inbound or observability.Outbound.
func (x *Exchange) Direction() string { return x.dir }

// Refusal is what a step returns to have the request answered by the
// mesh itself: a proxy.Error (status, x-mesh-reason, Retry-After) and the
// step's own metric of such refusals, which the edge calls once when it
// renders the refusal. The reason also reaches the access log and the
// requests metric's reason label.
type Refusal struct {
	err proxy.Error
	// count, if not nil, counts the refusal in the step's metric.
	count func()
}

// Refuse returns a Refusal with status and reason, counted by count (nil:
// by the requests metric only).
func Refuse(status int, reason string, count func()) *Refusal {
	return &Refusal{err: proxy.Error{Status: status, Reason: reason}, count: count}
}

// WithRetryAfter sets the Retry-After the refusal is sent with.
func (r *Refusal) WithRetryAfter(d time.Duration) *Refusal {
	r.err.RetryAfter = d
	return r
}

func (r *Refusal) Error() string { return r.err.Error() }
func (r *Refusal) Unwrap() error { return &r.err }

// counted returns err (a step's or the forwarder's error) with count
// attached, so the edge counts it when it renders it.
func counted(err error, count func()) error {
	if count == nil || err == nil {
		return err
	}
	var pe *proxy.Error
	if !errors.As(err, &pe) {
		return err
	}
	return &Refusal{err: *pe, count: count}
}

// UpstreamTarget is what an outbound step is built for: one upstream
// service under its policy.
type UpstreamTarget struct {
	// Name is the upstream service.
	Name string
	// Policy is its policy as configured (or sent by the control plane).
	Policy config.Policy
	// Routes are its compiled routes (table.Service.Routes; nil: none).
	// A step after the route step that is configured per route builds
	// what it needs for each of them here, and finds the request's in
	// Exchange.Route; mind that the path it runs in is the picked
	// cluster's, whose own Routes may be nil.
	Routes *routematch.VirtualHost

	u *upstream
}

// InboundTarget is what an inbound step is built for: the local service
// and the table's inbound policy.
type InboundTarget struct {
	Local Local
	// Inbound is the table's inbound policy.
	Inbound table.Inbound

	h *Handlers
}

// OutboundBuilder builds an outbound step for one upstream service; a nil
// Step means the step has nothing to do under that policy and is left
// out of the service's path.
type OutboundBuilder struct {
	Name  string
	Build func(t *UpstreamTarget) (Step, error)
}

// InboundBuilder builds an inbound step; a nil Step is left out.
type InboundBuilder struct {
	Name  string
	Build func(t *InboundTarget) (Step, error)
}

// Steps are the ordered step lists of the agent's paths.
type Steps struct {
	Inbound  []InboundBuilder
	Outbound []OutboundBuilder
}
