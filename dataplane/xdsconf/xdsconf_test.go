package xdsconf_test

import (
	"reflect"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	maglevv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/maglev/v3"
	ringhashv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/ring_hash/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/dataplane/table"
	"github.com/meshvm/mesh/dataplane/xdsconf"
	"github.com/meshvm/mesh/wire"
	"github.com/meshvm/mesh/wire/wiretest"
	"github.com/meshvm/mesh/xdsclient"
)

// The agent reads back every policy knob the control plane writes into
// Envoy fields, from the golden resources of the wire contract.
func TestPoliciesSurviveTheRoundTripThroughEnvoyFields(t *testing.T) {
	orders := config.DefaultPolicy()
	orders.Timeout = 3 * time.Second
	orders.ConnectTimeout = 250 * time.Millisecond
	orders.Retries = config.Retries{Attempts: 3, PerTryTimeout: time.Second, RetryOn: []string{"5xx", "connect-failure"}, BudgetPercent: 25, MinRetryConcurrency: 5}
	orders.CircuitBreaker = config.CircuitBreaker{MaxConnections: 100, MaxPendingRequests: 50, MaxRequests: 200, ErrorPercentThreshold: 40, RequestVolumeThreshold: 10, SleepWindow: 1500 * time.Millisecond}
	orders.OutlierDetection = config.OutlierDetection{Consecutive5xx: 3, ConsecutiveGatewayFailure: 2, Interval: 5 * time.Second, BaseEjectionTime: 20 * time.Second, MaxEjectionPercent: 34}
	orders.LoadBalancer = config.LoadBalancer{Policy: "least_request", LocalityAware: true}

	pay := config.DefaultPolicy()
	pay.LoadBalancer = config.LoadBalancer{Policy: "random"}
	pay.CircuitBreaker.ErrorPercentThreshold = 0
	pay.RateLimit = config.RateLimit{MaxTokens: 200, TokensPerFill: 200, FillInterval: time.Second}

	// wire/testdata/agent-tuned.golden.json is what `mesh control` sends
	// an agent fronting pay when the policies are the ones above
	// (controlplane/translate's golden test writes it from them).
	res := wiretest.Load(t, wiretest.AgentTuned)
	tab, err := xdsconf.Translate(res)
	if err != nil {
		t.Fatal(err)
	}
	if !tab.Static {
		t.Error("an xDS table carries its endpoints")
	}
	for _, tc := range []struct {
		name    string
		service string
		want    config.Policy
	}{
		{"every knob set", "orders", orders},
		{"random lb, no error breaker", "pay", pay},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tab.Policy(tc.service)
			want := tc.want
			want.RateLimit = config.RateLimit{} // callee-side: travels on the inbound listener
			if want.CircuitBreaker.ErrorPercentThreshold == 0 {
				// a disabled error breaker sends none of its knobs
				want.CircuitBreaker.RequestVolumeThreshold, want.CircuitBreaker.SleepWindow = 0, 0
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("policy of %s\n got %+v\nwant %+v", tc.service, got, want)
			}
		})
	}
	if got, want := tab.Inbound.RateLimit, pay.RateLimit; got != want {
		t.Errorf("inbound rate limit %+v, want %+v", got, want)
	}
	eps := tab.Services["orders"].Endpoints
	wantEps := []endpoint.Endpoint{
		{Addr: "10.0.0.1:15006", Node: "vm1", Region: "eu", Zone: "a", Weight: 1},
		{Addr: "10.0.0.2:15006", Node: "vm2", Region: "eu", Zone: "b", Weight: 1},
	}
	if len(eps) != len(wantEps) {
		t.Fatalf("routable endpoints %+v, want %d (draining and unhealthy left out)", eps, len(wantEps))
	}
	for i := range eps {
		if eps[i].Addr != wantEps[i].Addr || eps[i].Zone != wantEps[i].Zone || eps[i].Node != wantEps[i].Node || eps[i].Weight != 1 {
			t.Errorf("endpoint %d = %+v, want %+v", i, eps[i], wantEps[i])
		}
	}
	if eps[0].Meta["env"] != "prod" {
		t.Errorf("endpoint metadata lost: %v", eps[0].Meta)
	}
	if _, err := tab.Resolve(t.Context(), "nosuch"); err != endpoint.ErrUnknownService {
		t.Errorf("unknown service: %v", err)
	}
}

func TestUnusableResourcesAreRejectedWithTheirName(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(r *xdsclient.Resources)
		want   string
	}{
		{"cluster provided lb", func(r *xdsclient.Resources) { r.Clusters["orders"].LbPolicy = clusterv3.Cluster_CLUSTER_PROVIDED }, `cluster "orders": lb_policy CLUSTER_PROVIDED is not supported`},
		{"ring hash murmur", func(r *xdsclient.Resources) {
			r.Clusters["orders"].LbPolicy = clusterv3.Cluster_RING_HASH
			r.Clusters["orders"].LbConfig = &clusterv3.Cluster_RingHashLbConfig_{RingHashLbConfig: &clusterv3.Cluster_RingHashLbConfig{HashFunction: clusterv3.Cluster_RingHashLbConfig_MURMUR_HASH_2}}
		}, `cluster "orders": ring_hash_lb_config.hash_function: MURMUR_HASH_2 is not supported`},
		{"ring hash sizes", func(r *xdsclient.Resources) {
			r.Clusters["orders"].LbPolicy = clusterv3.Cluster_RING_HASH
			r.Clusters["orders"].LbConfig = &clusterv3.Cluster_RingHashLbConfig_{RingHashLbConfig: &clusterv3.Cluster_RingHashLbConfig{
				MinimumRingSize: wrapperspb.UInt64(4096), MaximumRingSize: wrapperspb.UInt64(1024)}}
		}, `cluster "orders": ring_hash_lb_config: new picker: ring hash: minimum ring size 4096 is over the maximum 1024`},
		{"maglev table size", func(r *xdsclient.Resources) {
			r.Clusters["orders"].LbPolicy = clusterv3.Cluster_MAGLEV
			r.Clusters["orders"].LbConfig = &clusterv3.Cluster_MaglevLbConfig_{MaglevLbConfig: &clusterv3.Cluster_MaglevLbConfig{TableSize: wrapperspb.UInt64(65536)}}
		}, `cluster "orders": maglev_lb_config: new picker: maglev: table size 65536 is not a prime`},
		{"static cluster", func(r *xdsclient.Resources) {
			r.Clusters["orders"].ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
		}, `cluster "orders": discovery type STATIC is not supported`},
		{"bad sleep window", func(r *xdsclient.Resources) {
			r.Clusters["orders"].Metadata.FilterMetadata[wire.GovernanceNamespace].Fields["sleep_window"] = structpb.NewStringValue("soon")
		}, `sleep_window "soon"`},
		{"pipe endpoint", func(r *xdsclient.Resources) {
			r.Endpoints["orders"].Endpoints[0].LbEndpoints[0].GetEndpoint().Address = &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: "/tmp/x"}}}
		}, `endpoints of cluster "orders": endpoint`},
		{"hostname endpoint", func(r *xdsclient.Resources) {
			r.Endpoints["orders"].Endpoints[0].LbEndpoints[0].GetEndpoint().GetAddress().GetSocketAddress().Address = "orders.example.com"
		}, `"orders.example.com" is not an IP address`},
		{"cluster by header", func(r *xdsclient.Resources) {
			r.Routes[wire.OutboundRoute].VirtualHosts[0].Routes[0].GetRoute().ClusterSpecifier = &routev3.RouteAction_ClusterHeader{ClusterHeader: "x-cluster"}
		}, `route "mesh_outbound": virtual_hosts[0] "orders": routes[0] "orders": route: cluster_header: not supported`},
		{"filter the agent lacks", func(r *xdsclient.Resources) {
			cfg, _ := anypb.New(&routev3.Route{})
			r.Routes[wire.OutboundRoute].VirtualHosts[0].Routes[0].TypedPerFilterConfig = map[string]*anypb.Any{"envoy.filters.http.cors": cfg}
		}, `route "mesh_outbound" virtual host "orders": routes[0] "orders": typed_per_filter_config[envoy.filters.http.cors]: the agent's outbound path has no such filter`},
		{"unknown retry condition", func(r *xdsclient.Resources) {
			r.Routes[wire.OutboundRoute].VirtualHosts[0].Routes[0].GetRoute().RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx,whenever"}
		}, `route "mesh_outbound" virtual host "orders": routes[0] "orders": retry_policy: retry_on:`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := wiretest.Load(t, wiretest.AgentClientOnly)
			// What a state-of-the-world agent holds: mesh_outbound only
			// (a scoped agent's per-service routes would take precedence).
			for n := range res.Routes {
				if n != wire.OutboundRoute {
					delete(res.Routes, n)
				}
			}
			if _, err := xdsconf.Translate(res); err != nil {
				t.Fatalf("the golden resources do not translate: %v", err)
			}
			tc.mutate(&res)
			_, err := xdsconf.Translate(res)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// What an agent fronting payments gets for the realistic model
// (wire/testdata/agent-payments.golden.json): every service, only its
// routable endpoints, the callee-side rate limit of payments.
func TestRealisticAgentView(t *testing.T) {
	tab, err := xdsconf.Translate(wiretest.Load(t, wiretest.AgentPayments))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		service   string
		lb        string
		endpoints int
	}{
		{"orders", "round_robin", 2},     // passing and warning
		{"payments", "least_request", 1}, // one critical
		{"search", "random", 1},          // one draining
	} {
		t.Run(tc.service, func(t *testing.T) {
			s := tab.Services[tc.service]
			if s == nil {
				t.Fatalf("no %s in the table", tc.service)
			}
			if got := s.Policy.LoadBalancer.Policy; got != tc.lb {
				t.Errorf("load balancer %q, want %q", got, tc.lb)
			}
			if len(s.Endpoints) != tc.endpoints {
				t.Errorf("%d routable endpoints, want %d: %+v", len(s.Endpoints), tc.endpoints, s.Endpoints)
			}
		})
	}
	if got := tab.Policy("payments"); got.Timeout != 2*time.Second || got.CircuitBreaker.ErrorPercentThreshold != 25 || got.Retries.Attempts != 1 {
		t.Errorf("payments policy %+v", got)
	}
	if want := (config.RateLimit{MaxTokens: 200, TokensPerFill: 100, FillInterval: time.Second}); tab.Inbound.RateLimit != want {
		t.Errorf("inbound rate limit %+v, want %+v", tab.Inbound.RateLimit, want)
	}
	if _, ok := tab.Services[wire.LocalAppCluster]; ok {
		t.Error("the local app cluster became a service")
	}
}

// Ring hash and Maglev clusters are accepted (they used to be NACKed),
// by lb_policy or by load_balancing_policy, with their sizes.
func TestConsistentHashClusters(t *testing.T) {
	ringCfg, err := anypb.New(&ringhashv3.RingHash{MinimumRingSize: wrapperspb.UInt64(2048), MaximumRingSize: wrapperspb.UInt64(4096)})
	if err != nil {
		t.Fatal(err)
	}
	maglevCfg, err := anypb.New(&maglevv3.Maglev{TableSize: wrapperspb.UInt64(251)})
	if err != nil {
		t.Fatal(err)
	}
	policies := func(name string, cfg *anypb.Any) *clusterv3.LoadBalancingPolicy {
		return &clusterv3.LoadBalancingPolicy{Policies: []*clusterv3.LoadBalancingPolicy_Policy{
			{TypedExtensionConfig: &corev3.TypedExtensionConfig{Name: "envoy.load_balancing_policies.client_side_weighted_round_robin"}},
			{TypedExtensionConfig: &corev3.TypedExtensionConfig{Name: name, TypedConfig: cfg}},
		}}
	}
	for _, tc := range []struct {
		name   string
		mutate func(c *clusterv3.Cluster)
		policy string
		hash   table.HashLB
	}{
		{"RING_HASH defaults", func(c *clusterv3.Cluster) { c.LbPolicy = clusterv3.Cluster_RING_HASH }, "ring_hash", table.HashLB{}},
		{"RING_HASH sized", func(c *clusterv3.Cluster) {
			c.LbPolicy = clusterv3.Cluster_RING_HASH
			c.LbConfig = &clusterv3.Cluster_RingHashLbConfig_{RingHashLbConfig: &clusterv3.Cluster_RingHashLbConfig{
				MinimumRingSize: wrapperspb.UInt64(512), MaximumRingSize: wrapperspb.UInt64(65536)}}
		}, "ring_hash", table.HashLB{MinRingSize: 512, MaxRingSize: 65536}},
		{"MAGLEV", func(c *clusterv3.Cluster) { c.LbPolicy = clusterv3.Cluster_MAGLEV }, "maglev", table.HashLB{}},
		{"MAGLEV sized", func(c *clusterv3.Cluster) {
			c.LbPolicy = clusterv3.Cluster_MAGLEV
			c.LbConfig = &clusterv3.Cluster_MaglevLbConfig_{MaglevLbConfig: &clusterv3.Cluster_MaglevLbConfig{TableSize: wrapperspb.UInt64(1009)}}
		}, "maglev", table.HashLB{MaglevTableSize: 1009}},
		{"ring_hash extension", func(c *clusterv3.Cluster) {
			c.LoadBalancingPolicy = policies("envoy.load_balancing_policies.ring_hash", ringCfg)
		}, "ring_hash", table.HashLB{MinRingSize: 2048, MaxRingSize: 4096}},
		{"maglev extension", func(c *clusterv3.Cluster) {
			c.LoadBalancingPolicy = policies("envoy.load_balancing_policies.maglev", maglevCfg)
		}, "maglev", table.HashLB{MaglevTableSize: 251}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := wiretest.Load(t, wiretest.AgentClientOnly)
			tc.mutate(res.Clusters["orders"])
			tab, err := xdsconf.Translate(res)
			if err != nil {
				t.Fatal(err)
			}
			s := tab.Services["orders"]
			if s.Policy.LoadBalancer.Policy != tc.policy || s.HashLB != tc.hash {
				t.Errorf("policy %q %+v, want %q %+v", s.Policy.LoadBalancer.Policy, s.HashLB, tc.policy, tc.hash)
			}
		})
	}
}
