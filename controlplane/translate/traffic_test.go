package translate_test

import (
	"bytes"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/controlplane/translate"
	"github.com/meshvm/mesh/identity"
	"github.com/meshvm/mesh/wire"
	"github.com/meshvm/mesh/wire/wiretest"
)

// trafficSettings are the control.services of the traffic golden model
// (wiretest.AgentTraffic describes them).
func trafficSettings() map[string]config.ServiceSettings {
	searchCanary := config.DefaultPolicy()
	searchCanary.Timeout = time.Second
	searchCanary.LoadBalancer = config.LoadBalancer{Policy: "least_request"}
	return map[string]config.ServiceSettings{
		"orders": {
			Subsets: []config.Subset{
				{Name: "v1", Match: map[string]string{"version": "v1"}},
				{Name: "v2", Match: map[string]string{"version": "v2"}},
			},
			DefaultSubset: "v1",
			Routes: []config.Route{
				{Name: "testers", Headers: []config.HeaderMatch{{Name: "x-canary", Exact: "1"}}, Subset: "v2"},
				{Name: "canary", PathPrefix: "/api",
					Split:   []config.SplitTarget{{Subset: "v1", Weight: 90}, {Subset: "v2", Weight: 10}},
					Mirror:  config.RouteMirror{Subset: "v2", Percent: 5},
					Timeout: 2 * time.Second, Retries: config.RouteRetries{Attempts: 1, RetryOn: []string{"5xx"}}},
				{Name: "fault", Headers: []config.HeaderMatch{{Name: "x-fault"}}, Fault: config.RouteFault{
					Delay:   config.FaultDelay{Fixed: time.Second, Percent: 10},
					Abort:   config.FaultAbort{HTTPStatus: 503, Percent: 5},
					Headers: []config.HeaderMatch{{Name: "x-fault"}},
				}},
				{Name: "grpc-fault", PathPrefix: "/grpc.health.v1.Health/", Fault: config.RouteFault{
					Abort: config.FaultAbort{GRPCStatus: 14, Percent: 50},
				}},
				{Name: "legacy", Path: "/old", Redirect: config.RouteRedirect{Path: "/new", Code: 302}},
				{Name: "health", Path: "/mesh-health", DirectResponse: config.DirectResponse{Status: 200, Body: "ok"}},
				{Name: "pay", PathRegex: "^/pay/(.*)$", Methods: []string{"POST"}, Query: []config.QueryMatch{{Name: "dry_run"}},
					Service:                 "payments",
					RewriteRegex:            config.RegexRewrite{Pattern: "^/pay/(.*)$", Substitution: `/\1`},
					HeadersToAdd:            map[string]string{"x-from": "orders"},
					HeadersToRemove:         []string{"x-debug"},
					ResponseHeadersToAdd:    map[string]string{"x-routed": "pay"},
					ResponseHeadersToRemove: []string{"server"}},
			},
		},
		"search": {Subsets: []config.Subset{{Name: "canary", Match: map[string]string{"tag": "canary"}, Policy: searchCanary}}},
	}
}

// trafficModel is the traffic golden model: orders v1 ×2 (meta
// version=v1), v2 ×1 (tag version=v2); payments (Maglev on source_ip)
// and search (one canary instance).
func trafficModel() model.Model {
	pol := config.Policies{Default: config.DefaultPolicy(), Services: map[string]config.Policy{}}
	orders := config.DefaultPolicy()
	orders.LoadBalancer = config.LoadBalancer{Policy: "ring_hash", Hash: config.HashKey{Header: "x-user"}, RingSize: 2048}
	pol.Services["orders"] = orders
	pay := config.DefaultPolicy()
	pay.LoadBalancer = config.LoadBalancer{Policy: "maglev", Hash: config.HashKey{SourceIP: true}}
	pol.Services["payments"] = pay
	inst := func(svc, id, addr string, tags []string, meta map[string]string) model.Instance {
		m := map[string]string{"app_port": "8080", "mesh_zone": "eu-1a", "mesh_region": "eu"}
		for k, v := range meta {
			m[k] = v
		}
		return model.Instance{Service: svc, ID: id, Node: id, Address: addr, Port: 15006, Check: model.CheckPassing, Weight: 1, Tags: tags, Meta: m}
	}
	consul := model.View{Instances: []model.Instance{
		inst("orders", "orders-1", "10.0.1.1", nil, map[string]string{"version": "v1"}),
		inst("orders", "orders-2", "10.0.1.2", nil, map[string]string{"version": "v1"}),
		inst("orders", "orders-3", "10.0.1.3", []string{"version=v2"}, nil),
		inst("payments", "payments-1", "10.0.2.1", nil, nil),
		inst("search", "search-1", "10.0.3.1", nil, nil),
		inst("search", "search-2", "10.0.3.2", []string{"canary"}, nil),
	}}
	return model.Merge([]model.View{consul}, model.MergeOptions{Policies: pol, Services: trafficSettings()})
}

// TestGoldenTraffic writes and checks the traffic golden resources
// (wire/testdata), which the agent's tests read.
func TestGoldenTraffic(t *testing.T) {
	m := trafficModel()
	mesh, err := translate.NewTranslator().Translate(&m, policies())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		node model.Node
	}{
		{wiretest.AgentTraffic, model.Node{ID: "vm-9"}},
		{wiretest.GRPCTraffic, model.Node{ID: "grpc-1", Proxyless: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			all := nodeResources(t, mesh, tc.node)
			if err := translate.Validate(all); err != nil {
				t.Fatalf("node view invalid: %v", err)
			}
			got := dump(t, all)
			path := wiretest.Path(tc.name)
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from the translation; diff it with go test -update and git diff", path)
			}
		})
	}
}

// TestTrafficTranslation checks, case by case, what callers rely on.
func TestTrafficTranslation(t *testing.T) {
	m := trafficModel()
	// Every orders agent takes mTLS: the subsets' clusters verify orders'
	// own identity.
	for i := range m.Services {
		s := &m.Services[i]
		if s.Name != "orders" {
			continue
		}
		for _, eps := range [][]model.Endpoint{s.Endpoints, s.Subsets[0].Endpoints, s.Subsets[1].Endpoints} {
			for j := range eps {
				meta := map[string]string{wire.MetaMTLS: "strict"}
				for k, v := range eps[j].Metadata.Meta {
					meta[k] = v
				}
				eps[j].Metadata.Meta = meta
			}
		}
	}
	// A route to a service the model does not know yet.
	orders := &m.Services[slices.IndexFunc(m.Services, func(s model.Service) bool { return s.Name == "orders" })]
	orders.Routes = append([]config.Route{{Name: "soon", Path: "/soon", Split: []config.SplitTarget{{Service: "inventory", Weight: 50}, {Weight: 50}}}}, orders.Routes...)
	tr := translate.NewTranslator()
	tr.MTLS = goldenMTLS()
	tr.SetGateway(&translate.Gateway{Config: config.ControlGateway{Routes: []config.Route{{Service: "orders"}}}})
	mesh, err := tr.Translate(&m, policies())
	if err != nil {
		t.Fatal(err)
	}
	cluster := func(set translate.Set, name string) *clusterv3.Cluster {
		c, _ := set[name].(*clusterv3.Cluster)
		return c
	}
	routesOf := func(rc proto.Message) []*routev3.Route {
		return rc.(*routev3.RouteConfiguration).GetVirtualHosts()[0].GetRoutes()
	}
	var outbound []*routev3.Route
	for _, vh := range mesh.Outbound.GetVirtualHosts() {
		if vh.GetName() == "orders" {
			outbound = vh.GetRoutes()
		}
	}
	for _, tc := range []struct {
		name string
		ok   func() bool
	}{
		{"subset clusters verify the service's SPIFFE ID", func() bool {
			u := upstreamTLS(t, cluster(mesh.Clusters, "orders/v2"))
			want := "spiffe://" + identity.DefaultTrustDomain + "/ns/" + identity.DefaultNamespace + "/svc/orders"
			return u != nil && u.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames()[0].GetMatcher().GetExact() == want
		}},
		{"subset load assignments hold only the matching endpoints", func() bool {
			v1 := mesh.Endpoints["orders/v1"].(*endpointv3.ClusterLoadAssignment)
			v2 := mesh.Endpoints["orders/v2"].(*endpointv3.ClusterLoadAssignment)
			all := mesh.Endpoints["orders"].(*endpointv3.ClusterLoadAssignment)
			return len(v1.GetEndpoints()[0].GetLbEndpoints()) == 2 && len(v2.GetEndpoints()[0].GetLbEndpoints()) == 1 &&
				len(all.GetEndpoints()[0].GetLbEndpoints()) == 3 && v2.GetClusterName() == "orders/v2"
		}},
		{"a subset's policy override", func() bool {
			c := cluster(mesh.Clusters, "search/canary")
			return c.GetLbPolicy() == clusterv3.Cluster_LEAST_REQUEST && cluster(mesh.Clusters, "search").GetLbPolicy() == clusterv3.Cluster_ROUND_ROBIN
		}},
		{"ring hash with its ring size, no zone-aware routing", func() bool {
			c := cluster(mesh.Clusters, "orders/v1")
			return c.GetLbPolicy() == clusterv3.Cluster_RING_HASH && c.GetRingHashLbConfig().GetMinimumRingSize().GetValue() == 2048 && c.GetCommonLbConfig() == nil
		}},
		{"maglev for agents, ring hash for gRPC", func() bool {
			return cluster(mesh.Clusters, "payments").GetLbPolicy() == clusterv3.Cluster_MAGLEV && cluster(mesh.APIClusters, "payments").GetLbPolicy() == clusterv3.Cluster_RING_HASH
		}},
		{"a hashed service without routes hashes its catch-all", func() bool {
			for _, vh := range mesh.Outbound.GetVirtualHosts() {
				if vh.GetName() == "payments" {
					hp := vh.GetRoutes()[0].GetRoute().GetHashPolicy()
					return len(hp) == 1 && hp[0].GetConnectionProperties().GetSourceIp()
				}
			}
			return false
		}},
		{"routes in order before the catch-all to the default subset", func() bool {
			var names []string
			for _, r := range outbound {
				names = append(names, r.GetName())
			}
			last := outbound[len(outbound)-1]
			return strings.Join(names, ",") == "soon,testers,canary,fault,grpc-fault,legacy,health,pay,orders" && last.GetRoute().GetCluster() == "orders/v1"
		}},
		{"the API route configuration has the same routes", func() bool {
			api := routesOf(mesh.APIRoutes[wire.ServiceRoute("orders")])
			return len(api) == len(outbound) && api[2].GetRoute().GetWeightedClusters().GetClusters()[1].GetName() == "orders/v2" &&
				api[2].GetRoute().GetMaxStreamDuration().GetMaxStreamDuration().AsDuration() == 2*time.Second
		}},
		{"a target not in the model gets an empty cluster", func() bool {
			cla, ok := mesh.Endpoints["inventory"].(*endpointv3.ClusterLoadAssignment)
			return cluster(mesh.Clusters, "inventory") != nil && ok && len(cla.GetEndpoints()) == 0
		}},
		{"fault per route, filter before the router", func() bool {
			f := &faultv3.HTTPFault{}
			if err := outbound[3].GetTypedPerFilterConfig()[wire.FaultFilter].UnmarshalTo(f); err != nil {
				return false
			}
			return f.GetAbort().GetHttpStatus() == 503 && f.GetAbort().GetPercentage().GetNumerator() == 50_000 &&
				f.GetDelay().GetFixedDelay().AsDuration() == time.Second && f.GetHeaders()[0].GetName() == "x-fault"
		}},
		{"gateway routes to a hashed service carry no hash policy (gateways do not hash)", func() bool {
			gw, err := mesh.Node(model.Node{ID: "gw-1", Gateway: true})
			if err != nil {
				return false
			}
			rc := gw.Resources().Routes[wire.GatewayRoute].(*routev3.RouteConfiguration)
			for _, vh := range rc.GetVirtualHosts() {
				for _, r := range vh.GetRoutes() {
					if r.GetRoute().GetCluster() == "orders" {
						return r.GetRoute().GetHashPolicy() == nil
					}
				}
			}
			return false
		}},
		{"the clusters a caller of orders needs", func() bool {
			return strings.Join(mesh.ServiceClusters("orders"), ",") == "orders,inventory,orders/v1,orders/v2,payments" &&
				strings.Join(mesh.ServiceClusters("payments"), ",") == "payments"
		}},
		{"mirror fraction", func() bool {
			mp := outbound[2].GetRoute().GetRequestMirrorPolicies()
			return len(mp) == 1 && mp[0].GetCluster() == "orders/v2" && mp[0].GetRuntimeFraction().GetDefaultValue().GetNumerator() == 50_000
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !tc.ok() {
				t.Error("does not hold")
			}
		})
	}
	for _, n := range []model.Node{{ID: "vm-9"}, {ID: "grpc-1", Proxyless: true}} {
		out, err := mesh.Node(n)
		if err != nil {
			t.Fatal(err)
		}
		res := out.Resources()
		if err := translate.Validate(res); err != nil {
			t.Fatalf("node %s: %v", n.ID, err)
		}
		l := res.Listeners[wire.OutboundListener]
		if n.Proxyless {
			l = res.Listeners["orders"]
		}
		if got := httpFilters(t, l.(*listenerv3.Listener)); got != wire.FaultFilter+","+wire.RouterFilter {
			t.Errorf("node %s: http filters %s, want the fault filter then the router", n.ID, got)
		}
	}
}

func httpFilters(t *testing.T, l *listenerv3.Listener) string {
	t.Helper()
	var hcm *hcmv3.HttpConnectionManager
	if a := l.GetApiListener().GetApiListener(); a != nil {
		hcm = &hcmv3.HttpConnectionManager{}
		if err := a.UnmarshalTo(hcm); err != nil {
			t.Fatal(err)
		}
	} else {
		hcm = &hcmv3.HttpConnectionManager{}
		if err := l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
			t.Fatal(err)
		}
	}
	var names []string
	for _, f := range hcm.GetHttpFilters() {
		names = append(names, f.GetName())
	}
	return strings.Join(names, ",")
}

// TestTrafficIncremental: a translator that reused a service's resources
// rebuilds them when its routes change, and drops its subsets' clusters
// when its subsets go.
func TestTrafficIncremental(t *testing.T) {
	tr := translate.NewTranslator()
	m := trafficModel()
	if _, err := tr.Translate(&m, policies()); err != nil {
		t.Fatal(err)
	}
	next := trafficModel()
	for i := range next.Services {
		s := &next.Services[i]
		if s.Name == "orders" {
			s.Routes = s.Routes[:1]
		}
		if s.Name == "search" {
			s.Subsets = nil
		}
	}
	mesh, err := tr.Translate(&next, policies())
	if err != nil {
		t.Fatal(err)
	}
	for _, vh := range mesh.Outbound.GetVirtualHosts() {
		if vh.GetName() == "orders" && len(vh.GetRoutes()) != 2 {
			t.Errorf("orders has %d routes, want testers and the catch-all", len(vh.GetRoutes()))
		}
	}
	if _, ok := mesh.Clusters["search/canary"]; ok {
		t.Error("search/canary is still served after its subset went")
	}
}
