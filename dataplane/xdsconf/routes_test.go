package xdsconf_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meshvm/mesh/dataplane/xdsconf"
	"github.com/meshvm/mesh/routematch"
	"github.com/meshvm/mesh/wire"
	"github.com/meshvm/mesh/wire/wiretest"
)

// The agent reads the traffic golden (wire/testdata/agent-traffic, what
// mesh control sends for orders' subsets and routes) whole: every subset is a
// service of the table with its own endpoints and identity, orders gets
// its routes in order, and services whose virtual host is only the
// catch-all get none (their outbound path has no route step).
func TestTrafficRoutesFromTheGolden(t *testing.T) {
	golden := wiretest.Load(t, wiretest.AgentTraffic)
	tab, err := xdsconf.Translate(golden)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cluster   string
		endpoints []string
	}{
		{"orders/v1", []string{"10.0.1.1", "10.0.1.2"}},
		{"orders/v2", []string{"10.0.1.3"}},
		{"search/canary", []string{"10.0.3.2"}},
	} {
		s := tab.Services[tc.cluster]
		if s == nil {
			t.Errorf("subset cluster %s is not a service of the table", tc.cluster)
			continue
		}
		var got []string
		for _, ep := range s.Endpoints {
			got = append(got, strings.Split(ep.Addr, ":")[0])
		}
		if !slices.Equal(got, tc.endpoints) {
			t.Errorf("%s endpoints %v, want %v", tc.cluster, got, tc.endpoints)
		}
		if own, _ := wire.SplitCluster(tc.cluster); s.MTLSIdentity != tab.Services[own].MTLSIdentity {
			t.Errorf("%s identity %q, want its service's %q", tc.cluster, s.MTLSIdentity, tab.Services[own].MTLSIdentity)
		}
	}
	orders := tab.Services["orders"]
	if orders.Routes == nil {
		t.Fatal("orders has no routes")
	}
	var names []string
	for _, rt := range orders.Routes.Routes {
		names = append(names, rt.Name)
	}
	if want := []string{"testers", "canary", "fault", "grpc-fault", "legacy", "health", "pay", "orders"}; !slices.Equal(names, want) {
		t.Errorf("orders' routes %v, want %v in order", names, want)
	}
	canary := orders.Routes.Routes[1]
	if canary.TotalWeight() != 100 || canary.Pick(0) != "orders/v1" || canary.Pick(95) != "orders/v2" || canary.Timeout != 2*time.Second {
		t.Errorf("canary route: weights %v timeout %v", canary.Clusters, canary.Timeout)
	}
	if orders.Routes.Routes[4].Kind != routematch.RedirectKind || orders.Routes.Routes[5].Kind != routematch.DirectKind {
		t.Errorf("legacy and health are not a redirect and a direct response")
	}
	if len(canary.Mirrors) != 1 || orders.Routes.Routes[2].Fault == nil || len(orders.Routes.Routes[0].HashPolicies) != 1 {
		t.Errorf("the canary's mirror, the fault route's fault or the testers' hash policy is lost")
	}
	// The catch-all (to the default subset) gives orders its policy.
	if got := orders.Policy; got.Timeout != 15*time.Second || got.Retries.Attempts != 2 {
		t.Errorf("orders' policy from its catch-all: timeout %v retries %+v", got.Timeout, got.Retries)
	}
	for _, name := range []string{"search", "orders/v2"} {
		if tab.Services[name].Routes != nil {
			t.Errorf("%s has routes, want none (its virtual host is only its catch-all, or it has none)", name)
		}
	}
	// payments' catch-all hashes on the source IP: the route step must
	// put it on the request for the tries step.
	if r := tab.Services["payments"].Routes; r == nil || len(r.Routes) != 1 || len(r.Routes[0].HashPolicies) != 1 {
		t.Errorf("payments' routes %v, want its catch-all with its hash policy", r)
	}
	if got := tab.Services["payments"].Policy.Timeout; got != 15*time.Second {
		t.Errorf("payments' timeout %v, want its catch-all's 15s", got)
	}
}

// What the agent's outbound path has no filter for is refused with the
// route's name, as Envoy refuses an extension it lacks.
func TestRouteFilterTheAgentLacks(t *testing.T) {
	r := wiretest.Load(t, wiretest.AgentTraffic)
	delete(r.Routes, wire.ServiceRoute("orders")) // a state-of-the-world agent's set
	rt := r.Routes[wire.OutboundRoute].VirtualHosts[0].Routes[2]
	rt.TypedPerFilterConfig = map[string]*anypb.Any{"envoy.filters.http.cors": rt.TypedPerFilterConfig[wire.FaultFilter]}
	want := `route "mesh_outbound" virtual host "orders": routes[2] "fault": typed_per_filter_config[envoy.filters.http.cors]: the agent's outbound path has no such filter`
	if _, err := xdsconf.Translate(r); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("error %v, want one containing %q", err, want)
	}
}

// Every route configuration is read: a service's own (wire.ServiceRoute,
// what a scoped agent gets) wins over its virtual host in mesh_outbound;
// a service in two others is refused.
func TestServiceRouteConfigurations(t *testing.T) {
	base := wiretest.Load(t, wiretest.AgentClientOnly)
	own := func(name string, timeout time.Duration) *routev3.RouteConfiguration {
		rc := proto.Clone(base.Routes[wire.OutboundRoute]).(*routev3.RouteConfiguration)
		rc.Name = name
		for _, vh := range rc.VirtualHosts {
			if vh.Name == "orders" {
				vh.Routes[0].GetRoute().Timeout = durationpb.New(timeout)
				rc.VirtualHosts = []*routev3.VirtualHost{vh}
				return rc
			}
		}
		t.Fatal("no orders virtual host in the golden")
		return nil
	}
	r := base.Clone()
	r.Routes[wire.ServiceRoute("orders")] = own(wire.ServiceRoute("orders"), 7*time.Second)
	tab, err := xdsconf.Translate(r)
	if err != nil {
		t.Fatal(err)
	}
	if got := tab.Policy("orders").Timeout; got != 7*time.Second {
		t.Errorf("orders' timeout %v, want 7s from its own route configuration", got)
	}
	delete(r.Routes, wire.OutboundRoute)
	if tab, err = xdsconf.Translate(r); err != nil || tab.Policy("orders").Timeout != 7*time.Second {
		t.Errorf("only orders' own route configuration: %v, timeout %v", err, tab.Policy("orders").Timeout)
	}
	r.Routes["zz_other"] = own("zz_other", time.Second)
	if _, err := xdsconf.Translate(r); err != nil {
		t.Errorf("orders' own route configuration and another: %v", err)
	}
	delete(r.Routes, wire.ServiceRoute("orders"))
	r.Routes[wire.OutboundRoute] = base.Routes[wire.OutboundRoute]
	if _, err := xdsconf.Translate(r); err == nil || !strings.Contains(err.Error(), `route "zz_other" virtual host "orders": the service's routes are also in route "mesh_outbound"`) {
		t.Errorf("orders in two route configurations, neither its own: %v", err)
	}
}
