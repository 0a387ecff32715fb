package chain

import "time"

// routeTimeout sets the deadline of the whole request (timeout), which
// tries and retries share; each try runs under one context ending at the
// earlier of it and the per-try timeout (see tries). It is left out of a
// path whose policy has no timeout. A deadline an edge route set
// (ForwardOptions.Timeout) wins, and a request the route step matched has
// the route's timeout instead (none when the route has none).
type routeTimeout struct{ d time.Duration }

func buildRouteTimeout(t *UpstreamTarget) (Step, error) {
	if t.u.pol.timeout <= 0 {
		return nil, nil
	}
	return &routeTimeout{d: t.u.pol.timeout}, nil
}

func (*routeTimeout) Name() string { return "route-timeout" }

func (s *routeTimeout) Serve(x *Exchange, next Next) error {
	if x.deadline.IsZero() && x.route == nil {
		x.deadline = time.Now().Add(s.d)
	}
	return next.Serve(x)
}
