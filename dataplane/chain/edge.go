package chain

import (
	"fmt"
	"net/http"
	"time"

	"github.com/meshvm/mesh/dataplane/proxy"
	"github.com/meshvm/mesh/governance/retry"
	"github.com/meshvm/mesh/observability"
	"github.com/meshvm/mesh/routematch"
)

// The edge path is a third kind of path, beside inbound and outbound, for
// a role that takes traffic from outside the mesh (mesh gateway): the
// role's own steps run first (strip forged headers, authenticate, limit,
// route...), refusing as any step does, and the last of them hands the
// request to one upstream service's outbound path with Exchange.Forward.
// The steps are the role's; the chain only runs them, renders their
// refusals at the same edge as the other paths, and provides the
// outbound half.

// Edge compiles steps into an edge path; the path ends where a step does
// not call next (the route step calls Exchange.Forward).
func (h *Handlers) Edge(steps []Step) *EdgePath {
	return &EdgePath{h: h, p: newPath(steps)}
}

// EdgePath is a compiled edge path, bound to the handlers (table) it was
// compiled with.
type EdgePath struct {
	h *Handlers
	p path
}

// Serve runs the path for one request; state is the role's own
// per-request state, which the steps find in Exchange.Edge.
func (e *EdgePath) Serve(w http.ResponseWriter, r *http.Request, state any) {
	x := getExchange(w, r, observability.Outbound, e.h)
	x.Edge = state
	run(x, &e.p)
}

// Steps are the names of the path's steps, in order.
func (e *EdgePath) Steps() []string { return e.p.names }

// ForwardOptions are what an edge route sets on the outbound path.
type ForwardOptions struct {
	// Timeout, if positive, is the request's deadline instead of the
	// service's route timeout.
	Timeout time.Duration
	// Retries, if set, replaces the service's retry policy for this
	// request (a gateway route's retry_policy).
	Retries *Retries
}

// Retries is a retry policy for one request: the conditions, how many
// retries (0: none) and the per-try timeout (0: none).
type Retries struct {
	Policy   retry.Policy
	Attempts int
	PerTry   time.Duration
}

// RouteRetries is the retry policy of a compiled route's retry_policy
// (nil: nil): its conditions, retriable status codes, number of retries
// and per-try timeout. An unknown retry_on condition is an error.
func RouteRetries(rp *routematch.RetryPolicy) (*Retries, error) {
	if rp == nil {
		return nil, nil
	}
	on, err := retry.Parse(rp.RetryOn)
	if err != nil {
		return nil, fmt.Errorf("retry_policy: %w", err)
	}
	r := &Retries{Policy: retry.Policy{On: on}, Attempts: int(rp.NumRetries), PerTry: rp.PerTryTimeout}
	for _, c := range rp.RetriableStatusCodes {
		r.Policy.StatusCodes = append(r.Policy.StatusCodes, int(c))
	}
	return r, nil
}

// Forward runs the outbound path of service (endpoints, breaker,
// timeout, tries) for x, as the per-upstream listener does, but without
// the service's own routes: the edge route chose the cluster. An unknown
// service is 503 no-route.
func (x *Exchange) Forward(service string, o ForwardOptions) error {
	u, err := x.h.lookup(x.R.Context(), service)
	if err != nil {
		return resolveError(service, err)
	}
	if u == nil {
		return &proxy.Error{Status: http.StatusServiceUnavailable, Reason: proxy.ReasonNoRoute, Err: fmt.Errorf("no service %q", service)}
	}
	x.up = u
	x.Rec.SetUpstream(u.name, "")
	if o.Timeout > 0 {
		x.deadline = time.Now().Add(o.Timeout)
	}
	x.retries = o.Retries
	return u.rest.Serve(x)
}
