package chain

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/meshvm/mesh/dataplane/proxy"
	"github.com/meshvm/mesh/routematch"
)

// route matches the request against the routes of the service it was
// routed to (table.Service.Routes: its traffic routes in order, then the
// catch-all, compiled by routematch), as Envoy's router does. A redirect
// or direct-response route is answered here. A forwarding route picks
// its cluster (a weighted split is a random pick per request), rewrites
// the path and Host, mutates the request headers (and, as the head goes
// out, the response's), sets the route's timeout (Envoy's 15s when it
// sets none; 0 is none) and retry policy (none when it has none), and
// the rest of the path (endpoints, max-requests, circuit-breaker,
// tries...) runs for the chosen cluster: the service's own, one of its
// subsets ("orders/v2", a service of the table with its own endpoints,
// breaker and outlier state) or another service. No route matching is
// 404 no-route (Envoy's NR); a cluster the table does not have is 503
// no-route. The matched route stays on the exchange (Exchange.Route) for
// the steps after this one. A service without routes has no route step.
type route struct {
	u      *upstream
	vh     *routematch.VirtualHost
	routes []routePolicy // by Route.Index
}

// routePolicy is what a forwarding route sets on the rest of the path.
type routePolicy struct {
	timeout time.Duration // 0: none
	retries *Retries
}

// noRetries is the retry policy of a route that has none.
var noRetries = &Retries{}

func buildRoute(t *UpstreamTarget) (Step, error) {
	if t.Routes == nil {
		return nil, nil
	}
	s := &route{u: t.u, vh: t.Routes, routes: make([]routePolicy, len(t.Routes.Routes))}
	for i, rt := range t.Routes.Routes {
		p := routePolicy{timeout: 15 * time.Second, retries: noRetries}
		if rt.TimeoutSet {
			p.timeout = rt.Timeout
		}
		r, err := RouteRetries(rt.Retry)
		if err != nil {
			return nil, fmt.Errorf("routes[%d] %q: %w", i, rt.Name, err)
		}
		if r != nil {
			p.retries = r
		}
		if rt.Index != i {
			return nil, fmt.Errorf("routes[%d] %q: compiled at index %d", i, rt.Name, rt.Index)
		}
		s.routes[i] = p
	}
	return s, nil
}

func (*route) Name() string { return "route" }

func (s *route) Serve(x *Exchange, next Next) error {
	rt, ok := s.vh.Match(x.R)
	if !ok {
		return Refuse(http.StatusNotFound, proxy.ReasonNoRoute, nil)
	}
	x.route = rt
	if rt.Kind != routematch.Forward {
		rt.Respond(x.W, x.R)
		return nil
	}
	cluster := rt.Cluster
	if len(rt.Clusters) > 0 {
		cluster = rt.Pick(rand.Uint64())
	}
	if !rt.Plain() {
		rt.Rewrite(x.R)
		rt.ApplyRequestHeaders(x.R.Header, cluster)
		x.W = rt.ResponseWriter(x.W, cluster)
	}
	p := &s.routes[rt.Index]
	x.retries = p.retries
	if p.timeout > 0 && x.deadline.IsZero() {
		x.deadline = time.Now().Add(p.timeout)
	}
	if cluster == s.u.name {
		return next.Serve(x)
	}
	u := s.u.h.services[cluster]
	if u == nil {
		return &proxy.Error{Status: http.StatusServiceUnavailable, Reason: proxy.ReasonNoRoute,
			Err: fmt.Errorf("route %q of %s: no cluster %q", rt.Name, s.u.name, cluster)}
	}
	x.up = u
	x.Rec.SetUpstream(u.name, "")
	return u.rest.Serve(x)
}
