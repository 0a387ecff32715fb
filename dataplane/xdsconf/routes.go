package xdsconf

import (
	"fmt"
	"slices"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/meshvm/mesh/dataplane/table"
	"github.com/meshvm/mesh/governance/retry"
	"github.com/meshvm/mesh/routematch"
	"github.com/meshvm/mesh/wire"
)

// envoyRouteTimeout is Envoy's route timeout when a route sets none.
const envoyRouteTimeout = 15 * time.Second

// agentFilters are the HTTP filters of an agent's outbound path that a
// route may configure (Route.typed_per_filter_config); a route that
// configures any other is refused, as Envoy refuses a filter it does not
// have.
var agentFilters = map[string]bool{wire.FaultFilter: true}

// serviceHost is the virtual host that holds a service's routes and the
// route configuration it came in.
type serviceHost struct {
	route string
	vh    *routematch.VirtualHost
}

// applyRoutes compiles every route configuration the agent holds
// (wire.OutboundRoute with one virtual host per service, and the
// per-service wire.ServiceRoute ones) with routematch and gives each
// service its virtual host, named after it: its routes in order, then
// the catch-all. A service whose virtual host is only the catch-all to
// its own cluster gets that route's timeout and retries as its policy
// and no routes (the outbound path then runs no route step); any other
// gets its compiled routes, and its catch-all's timeout and retries as
// its policy. A service described by two route configurations takes the
// one named after it. The gateway's route configuration is the
// gateway's own (dataplane/gwconf) and is not read here.
func applyRoutes(t *table.Table, routes map[string]*routev3.RouteConfiguration) error {
	names := make([]string, 0, len(routes))
	for name := range routes {
		if name != wire.GatewayRoute {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	hosts := map[string]serviceHost{}
	for _, name := range names {
		tb, err := routematch.Compile(routes[name])
		if err != nil {
			return fmt.Errorf("route %q: %w", name, err)
		}
		for _, vh := range tb.VirtualHosts() {
			svc := vh.Name
			if prev, dup := hosts[svc]; dup {
				switch {
				case prev.route == wire.ServiceRoute(svc):
					continue
				case name != wire.ServiceRoute(svc):
					return fmt.Errorf("route %q virtual host %q: the service's routes are also in route %q", name, svc, prev.route)
				}
			}
			hosts[svc] = serviceHost{route: name, vh: vh}
		}
	}
	for svc, sh := range hosts {
		if err := applyServiceRoutes(t, svc, sh.vh); err != nil {
			return fmt.Errorf("route %q virtual host %q: %w", sh.route, svc, err)
		}
	}
	return nil
}

func applyServiceRoutes(t *table.Table, svc string, vh *routematch.VirtualHost) error {
	for _, rt := range vh.Routes {
		if err := agentCanServe(rt); err != nil {
			return fmt.Errorf("routes[%d] %q: %w", rt.Index, rt.Name, err)
		}
	}
	s, ok := t.Services[svc]
	if !ok {
		return nil // its cluster has not arrived yet (CDS comes first; it will)
	}
	// The catch-all: the last route that takes every request to the
	// service's cluster or one of its subsets (the default subset).
	var catchAll *routematch.Route
	for _, rt := range slices.Backward(vh.Routes) {
		if own, _ := wire.SplitCluster(rt.Cluster); rt.CatchAll() && rt.Kind == routematch.Forward && own == svc {
			catchAll = rt
			break
		}
	}
	// Only the catch-all, to the service's own cluster and unchanged (no
	// rewrite, mutation, fault, mirror or hash policy): no route step.
	if !(len(vh.Routes) == 1 && catchAll != nil && catchAll.Cluster == svc && catchAll.Plain()) {
		s.Routes = vh
	}
	if catchAll != nil {
		s.Policy.Timeout = envoyRouteTimeout
		if catchAll.TimeoutSet {
			s.Policy.Timeout = catchAll.Timeout
		}
		if rp := catchAll.Retry; rp != nil {
			s.Policy.Retries.Attempts = int(rp.NumRetries)
			s.Policy.Retries.RetryOn = rp.RetryOn
			s.Policy.Retries.PerTryTimeout = rp.PerTryTimeout
		}
	}
	return nil
}

// agentCanServe refuses what a compiled route asks that the agent's
// outbound path does not do (routematch has refused what no role does;
// fault injection, mirroring and hash policies are the fault and mirror
// steps' and the tries step's).
func agentCanServe(rt *routematch.Route) error {
	for name := range rt.PerFilterConfig {
		if !agentFilters[name] {
			return fmt.Errorf("typed_per_filter_config[%s]: the agent's outbound path has no such filter", name)
		}
	}
	if rp := rt.Retry; rp != nil {
		if _, err := retry.Parse(rp.RetryOn); err != nil {
			return fmt.Errorf("retry_policy: retry_on: %w", err)
		}
	}
	return nil
}
