package chain

import (
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/meshvm/mesh/dataplane/proxy"
	"github.com/meshvm/mesh/routematch"
)

// fault is Envoy's fault filter for the request's route
// (Route.Fault, from typed_per_filter_config[envoy.filters.http.fault]):
// for a request the fault applies to (its headers, its upstream cluster)
// and while fewer than max_active_faults are being faulted, it delays
// delay.percentage of the requests by the fixed delay, then aborts
// abort.percentage of them with the HTTP status or gRPC status, rendered
// by the edge with x-mesh-reason fault-injected. Both are counted
// (mesh_faults_injected_total). It runs after the circuit breaker, so an
// injected 5xx (or gRPC failure) is a failure in the breaker's window as
// a real one would be (rehearsing the breaker is the point), and before
// the route timeout, so a delay is not cut short by it (as in Envoy,
// where the fault filter runs before the router). A cluster no route
// with a fault sends to has no fault step.
type fault struct{ u *upstream }

func buildFault(t *UpstreamTarget) (Step, error) {
	if !routesTo(t, func(rt *routematch.Route) bool { return rt.Fault != nil }) {
		return nil, nil
	}
	return &fault{u: t.u}, nil
}

func (*fault) Name() string { return "fault" }

func (s *fault) Serve(x *Exchange, next Next) error {
	f := faultOf(x.route)
	if f == nil || !f.Applies(x.R, x.up.name) {
		return next.Serve(x)
	}
	delay := f.DelayFraction.Numerator > 0 && f.DelayFraction.Hit(rand.Uint64())
	abort := f.AbortFraction.Numerator > 0 && f.AbortFraction.Hit(rand.Uint64())
	if !delay && !abort || !f.Begin() {
		return next.Serve(x)
	}
	defer f.End()
	m := s.u.svc.m
	if delay && f.Delay > 0 {
		m.FaultDelayed()
		t := time.NewTimer(f.Delay)
		select {
		case <-x.R.Context().Done():
			t.Stop()
			x.outcome = abandoned
			return &proxy.Error{Status: proxy.StatusClientClosedRequest, Reason: proxy.ReasonClientCancelled, Err: x.R.Context().Err()}
		case <-t.C:
		}
	}
	if !abort {
		return next.Serve(x)
	}
	m.FaultAborted()
	pe := proxy.Error{Status: f.AbortStatus, Reason: proxy.ReasonFaultInjected}
	eff := f.AbortStatus
	if f.AbortGRPC >= 0 {
		pe.GRPCStatus, pe.GRPCSet = f.AbortGRPC, true
		eff = effectiveStatus(http.StatusOK, f.AbortGRPC)
	}
	if eff >= 500 {
		x.outcome = failed
	} else {
		x.outcome = succeeded
	}
	return &Refusal{err: pe}
}

func faultOf(rt *routematch.Route) *routematch.Fault {
	if rt == nil {
		return nil
	}
	return rt.Fault
}

// routesTo says whether some route of the table that can send to t's
// cluster (as its cluster or one of its weighted clusters) has what want
// looks for: a step configured per route is built only for the clusters
// such routes reach, since it runs in the picked cluster's path.
func routesTo(t *UpstreamTarget, want func(*routematch.Route) bool) bool {
	for _, s := range t.u.h.table.Services {
		if s.Routes == nil {
			continue
		}
		for _, rt := range s.Routes.Routes {
			if !want(rt) {
				continue
			}
			if rt.Cluster == t.Name {
				return true
			}
			for i := range rt.Clusters {
				if rt.Clusters[i].Name == t.Name {
					return true
				}
			}
		}
	}
	return false
}
