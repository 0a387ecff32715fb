package translate_test

import (
	"bytes"
	"flag"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/controlplane/translate"
	"github.com/meshvm/mesh/wire"
	"github.com/meshvm/mesh/wire/wiretest"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// realistic is 3 services in 2 zones with policies: orders (default
// policy), payments (tight breaker, rate limit, least_request) and search
// (random LB, no retries), one draining and one unhealthy endpoint.
func realistic() model.Model {
	pol := config.Policies{Default: config.DefaultPolicy(), Services: map[string]config.Policy{}}
	pay := config.DefaultPolicy()
	pay.Timeout = 2 * time.Second
	pay.Retries.Attempts = 1
	pay.Retries.PerTryTimeout = 500 * time.Millisecond
	pay.CircuitBreaker.MaxRequests = 100
	pay.CircuitBreaker.ErrorPercentThreshold = 25
	pay.LoadBalancer.Policy = "least_request"
	pay.RateLimit = config.RateLimit{MaxTokens: 200, TokensPerFill: 100, FillInterval: time.Second}
	pol.Services["payments"] = pay
	search := config.DefaultPolicy()
	search.LoadBalancer = config.LoadBalancer{Policy: "random"}
	search.Retries.Attempts = 0
	search.OutlierDetection = config.OutlierDetection{}
	pol.Services["search"] = search

	inst := func(svc, id, node, addr string, check model.Check, zone string) model.Instance {
		return model.Instance{Service: svc, ID: id, Node: node, Address: addr, Port: 15006, Check: check, Weight: 1,
			Tags: []string{"v1"}, Meta: map[string]string{"app_port": "8080", "mesh_version": "0.1.0", "mesh_zone": zone, "mesh_region": "eu"}}
	}
	consul := model.View{Instances: []model.Instance{
		inst("orders", "orders-1", "vm-1", "10.0.1.1", model.CheckPassing, "eu-1a"),
		inst("orders", "orders-2", "vm-2", "10.0.2.1", model.CheckWarning, "eu-1b"),
		inst("payments", "payments-1", "vm-3", "10.0.1.2", model.CheckPassing, "eu-1a"),
		inst("payments", "payments-2", "vm-4", "10.0.2.2", model.CheckCritical, "eu-1b"),
		inst("search", "search-1", "vm-5", "10.0.1.3", model.CheckPassing, "eu-1a"),
		inst("search", "search-2", "vm-6", "10.0.2.3", model.CheckPassing, "eu-1b"),
	}}
	cmdb := model.View{Hosts: []model.Host{
		hostAt("10.0.1.1", "vm-1", "eu-1a", "active"),
		hostAt("10.0.2.3", "vm-6", "eu-1b", "decommissioning"),
	}}
	return model.Merge([]model.View{consul, cmdb}, model.MergeOptions{DrainingStatuses: []string{"offline", "failed", "decommissioning"}, Policies: pol})
}

// tuned is a model whose policies set every knob to a value that is not a
// default (of mesh or of Envoy): orders (least_request, locality aware,
// every breaker, retry and outlier knob) and pay (random, no error breaker,
// a rate limit), with draining and unhealthy endpoints.
func tuned() model.Model {
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

	return model.Model{Services: []model.Service{
		{Name: "orders", Policy: orders, Endpoints: []model.Endpoint{
			{ID: "o1", Node: "vm1", Address: "10.0.0.1", Port: 15006, Locality: model.Locality{Region: "eu", Zone: "a"}, Health: model.Healthy, Metadata: model.Metadata{Env: "prod"}},
			{ID: "o2", Node: "vm2", Address: "10.0.0.2", Port: 15006, Locality: model.Locality{Region: "eu", Zone: "b"}, Health: model.Healthy},
			{ID: "o3", Node: "vm3", Address: "10.0.0.3", Port: 15006, Locality: model.Locality{Region: "eu", Zone: "b"}, Health: model.Draining},
			{ID: "o4", Node: "vm4", Address: "10.0.0.4", Port: 15006, Health: model.Unhealthy},
		}},
		{Name: "pay", Policy: pay, Endpoints: []model.Endpoint{
			{ID: "p1", Node: "vm5", Address: "10.0.0.5", Port: 15006, AppPort: 8080, Health: model.Healthy},
		}},
	}}
}

func hostAt(ip, name, zone, status string) model.Host {
	h := model.Host{Hostname: name, Region: "eu-west", Zone: zone, Env: "prod", Owner: "team-shop", Status: status,
		Role: "app", Tenant: "shop", Tags: []string{"pci"}, Labels: map[string]string{"rack": "r1"}}
	h.IP = mustAddr(ip)
	return h
}

func policies() config.Policies { return config.Policies{Default: config.DefaultPolicy()} }

// nodeResources is a node's complete output in fresh maps.
func nodeResources(t *testing.T, mesh *translate.Mesh, n model.Node) translate.Resources {
	t.Helper()
	out, err := mesh.Node(n)
	if err != nil {
		t.Fatal(err)
	}
	return out.Resources()
}

// TestGolden translates the realistic model for an agent fronting
// payments, an agent with no service, and a gRPC proxyless client, and the
// tuned model for an agent fronting pay, and
// compares each node's whole output (every resource, as protobuf JSON)
// with the golden files of the wire contract (wire/testdata), which the
// agent's tests read as what a control plane sends.
func TestGolden(t *testing.T) {
	for _, tc := range []struct {
		name  string
		model func() model.Model
		node  model.Node
		mtls  bool
	}{
		{name: wiretest.AgentPayments, model: realistic, node: model.Node{ID: "vm-3", Service: "payments", AppPort: 9090}},
		{name: wiretest.AgentClientOnly, model: realistic, node: model.Node{ID: "vm-9"}},
		{name: wiretest.GRPCProxyless, model: realistic, node: model.Node{ID: "grpc-1", Proxyless: true}},
		{name: wiretest.AgentTuned, model: tuned, node: model.Node{ID: "vm5", Service: "pay", AppPort: 8080}},
		{name: wiretest.AgentMTLSStrict, model: withMTLS, node: model.Node{ID: "vm-1", Service: "orders", AppPort: 8080}, mtls: true},
		{name: wiretest.AgentMTLSPermissive, model: withMTLS, node: model.Node{ID: "vm-3", Service: "payments", AppPort: 9090}, mtls: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.model()
			tr := translate.NewTranslator()
			if tc.mtls {
				tr.MTLS = goldenMTLS()
			}
			mesh, err := tr.Translate(&m, policies())
			if err != nil {
				t.Fatal(err)
			}
			if err := mesh.Validate(); err != nil {
				t.Fatalf("shared resources invalid: %v", err)
			}
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

func dump(t *testing.T, r translate.Resources) []byte {
	t.Helper()
	b, err := wiretest.Encode(wiretest.Resources{Clusters: r.Clusters, Endpoints: r.Endpoints, Listeners: r.Listeners, Routes: r.Routes})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestTranslate checks the fields a user relies on, case by case.
func TestTranslate(t *testing.T) {
	m := realistic()
	mesh, err := translate.Translate(&m, policies())
	if err != nil {
		t.Fatal(err)
	}
	cluster := func(name string) *clusterv3.Cluster { return mesh.Clusters[name].(*clusterv3.Cluster) }
	cla := func(name string) *endpointv3.ClusterLoadAssignment {
		return mesh.Endpoints[name].(*endpointv3.ClusterLoadAssignment)
	}
	health := func(svc, ip string) corev3.HealthStatus {
		for _, l := range cla(svc).GetEndpoints() {
			for _, ep := range l.GetLbEndpoints() {
				if ep.GetEndpoint().GetAddress().GetSocketAddress().GetAddress() == ip {
					return ep.GetHealthStatus()
				}
			}
		}
		return -1
	}
	vhost := func(name string) *routev3.VirtualHost {
		for _, vh := range mesh.Outbound.GetVirtualHosts() {
			if vh.GetName() == name {
				return vh
			}
		}
		return nil
	}
	for _, tc := range []struct {
		name string
		ok   func() bool
	}{
		{"clusters use EDS over ADS", func() bool {
			return cluster("orders").GetType() == clusterv3.Cluster_EDS && cluster("orders").GetEdsClusterConfig().GetEdsConfig().GetAds() != nil
		}},
		{"least_request maps to LEAST_REQUEST", func() bool { return cluster("payments").GetLbPolicy() == clusterv3.Cluster_LEAST_REQUEST }},
		{"random offers random then round robin", func() bool {
			ps := cluster("search").GetLoadBalancingPolicy().GetPolicies()
			return len(ps) == 2 && strings.HasSuffix(ps[0].GetTypedExtensionConfig().GetTypedConfig().GetTypeUrl(), "random.v3.Random")
		}},
		{"breaker thresholds", func() bool {
			th := cluster("payments").GetCircuitBreakers().GetThresholds()[0]
			return th.GetMaxRequests().GetValue() == 100 && th.GetRetryBudget().GetBudgetPercent().GetValue() == 20
		}},
		{"error breaker in mesh.governance metadata", func() bool {
			f := cluster("payments").GetMetadata().GetFilterMetadata()[wire.GovernanceNamespace].GetFields()
			return f["error_percent_threshold"].GetNumberValue() == 25 && f["sleep_window"].GetStringValue() == "5s" && f["request_volume_threshold"].GetNumberValue() == 20
		}},
		{"outlier detection enforces consecutive failures", func() bool {
			od := cluster("orders").GetOutlierDetection()
			return od.GetConsecutive_5Xx().GetValue() == 5 && od.GetEnforcingConsecutiveGatewayFailure().GetValue() == 100
		}},
		{"no outlier detection when the policy has none", func() bool { return cluster("search").GetOutlierDetection() == nil }},
		{"passing is HEALTHY", func() bool { return health("orders", "10.0.1.1") == corev3.HealthStatus_HEALTHY }},
		{"warning is HEALTHY", func() bool { return health("orders", "10.0.2.1") == corev3.HealthStatus_HEALTHY }},
		{"critical is UNHEALTHY", func() bool { return health("payments", "10.0.2.2") == corev3.HealthStatus_UNHEALTHY }},
		{"CMDB decommissioning is DRAINING", func() bool { return health("search", "10.0.2.3") == corev3.HealthStatus_DRAINING }},
		{"localities have a locality and a non-zero weight", func() bool {
			for _, name := range []string{"orders", "payments", "search"} {
				for _, l := range cla(name).GetEndpoints() {
					if l.GetLocality() == nil || l.GetLoadBalancingWeight().GetValue() == 0 {
						return false
					}
				}
			}
			return len(cla("orders").GetEndpoints()) == 2
		}},
		{"CMDB locality wins over Consul meta", func() bool {
			return cla("orders").GetEndpoints()[0].GetLocality().GetRegion() == "eu" && cla("orders").GetEndpoints()[1].GetLocality().GetRegion() == "eu-west"
		}},
		{"virtual host domains", func() bool {
			d := vhost("orders").GetDomains()
			return strings.Join(d, ",") == "orders,orders:*,orders.mesh,orders.mesh:*,orders.service.consul,orders.service.consul:*"
		}},
		{"route timeout and retries", func() bool {
			r := vhost("payments").GetRoutes()[0].GetRoute()
			return r.GetTimeout().AsDuration() == 2*time.Second && r.GetRetryPolicy().GetNumRetries().GetValue() == 1 &&
				r.GetRetryPolicy().GetPerTryTimeout().AsDuration() == 500*time.Millisecond
		}},
		{"no retry policy without attempts", func() bool { return vhost("search").GetRoutes()[0].GetRoute().GetRetryPolicy() == nil }},
		{"API listener per service", func() bool { return len(mesh.APIListeners) == 3 && mesh.APIListeners["orders"] != nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !tc.ok() {
				t.Error("does not hold")
			}
		})
	}
}

// TestNode checks what each kind of node gets.
func TestNode(t *testing.T) {
	m := realistic()
	mesh, err := translate.Translate(&m, policies())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name          string
		node          model.Node
		listeners     []string
		localCluster  bool
		wantRateLimit bool
	}{
		{name: "agent fronting payments gets the rate limit", node: model.Node{ID: "vm-3", Service: "payments", AppPort: 9090},
			listeners: []string{"mesh_inbound", "mesh_outbound"}, localCluster: true, wantRateLimit: true},
		{name: "app port from Consul meta of the node's registration", node: model.Node{ID: "vm-1", Service: "orders"},
			listeners: []string{"mesh_inbound", "mesh_outbound"}, localCluster: true},
		{name: "unknown app port: no inbound", node: model.Node{ID: "vm-77", Service: "orders"},
			listeners: []string{"mesh_outbound"}},
		{name: "client-only agent", node: model.Node{ID: "vm-9"}, listeners: []string{"mesh_outbound"}},
		{name: "proxyless gets the API listeners", node: model.Node{ID: "g", Proxyless: true},
			listeners: []string{"orders", "payments", "search"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			own := nodeResources(t, mesh, tc.node)
			if err := translate.Validate(own); err != nil {
				t.Error(err)
			}
			var names []string
			for n := range own.Listeners {
				names = append(names, n)
			}
			sort.Strings(names)
			if strings.Join(names, ",") != strings.Join(tc.listeners, ",") {
				t.Errorf("listeners %v, want %v", names, tc.listeners)
			}
			if _, ok := own.Clusters[wire.LocalAppCluster]; ok != tc.localCluster {
				t.Errorf("local app cluster present = %v, want %v", ok, tc.localCluster)
			}
			if in, ok := own.Listeners[wire.InboundListener]; ok {
				b, _ := protojson.Marshal(in)
				if got := strings.Contains(string(b), "envoy.filters.http.local_ratelimit"); got != tc.wantRateLimit {
					t.Errorf("local rate limit filter present = %v, want %v", got, tc.wantRateLimit)
				}
			}
		})
	}
}

// TestTranslatorIncremental: a translator fed successive models gives the
// same resources as a fresh translation, reusing untouched ones.
func TestTranslatorIncremental(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(m *model.Model)
		reused []string // clusters whose load assignment must be reused
	}{
		{name: "one endpoint goes unhealthy", change: func(m *model.Model) { m.Services[0].Endpoints[0].Health = model.Unhealthy }, reused: []string{"payments", "search"}},
		{name: "policy change", change: func(m *model.Model) { m.Services[1].Policy.Timeout = time.Minute }, reused: []string{"orders", "payments", "search"}},
		{name: "service removed", change: func(m *model.Model) { m.Services = m.Services[1:] }, reused: []string{"payments", "search"}},
		{name: "nothing", change: func(*model.Model) {}, reused: []string{"orders", "payments", "search"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := translate.NewTranslator()
			m1 := realistic()
			first, err := tr.Translate(&m1, policies())
			if err != nil {
				t.Fatal(err)
			}
			m2 := realistic()
			m2.Services = append([]model.Service(nil), m2.Services...)
			for i := range m2.Services {
				m2.Services[i].Endpoints = append([]model.Endpoint(nil), m2.Services[i].Endpoints...)
			}
			tc.change(&m2)
			inc, err := tr.Translate(&m2, policies())
			if err != nil {
				t.Fatal(err)
			}
			fresh, err := translate.Translate(&m2, policies())
			if err != nil {
				t.Fatal(err)
			}
			node := model.Node{ID: "x", Service: "payments", AppPort: 1}
			a := nodeResources(t, inc, node)
			b := nodeResources(t, fresh, node)
			if !bytes.Equal(dump(t, a), dump(t, b)) {
				t.Fatal("incremental translation differs from a fresh one")
			}
			for _, name := range tc.reused {
				if inc.Endpoints[name] != first.Endpoints[name] {
					t.Errorf("load assignment of %s rebuilt, want reused", name)
				}
			}
		})
	}
}

// TestNodeOwnResourcesCarryOver: a node whose inputs do not change gets the
// very same own resources from the next model's Mesh; a policy change of
// its service rebuilds them; a service the model does not know yet takes
// its configured policy.
func TestNodeOwnResourcesCarryOver(t *testing.T) {
	tr := translate.NewTranslator()
	node := model.Node{ID: "vm-3", Service: "payments", AppPort: 9090}
	m1 := realistic()
	mesh1, err := tr.Translate(&m1, policies())
	if err != nil {
		t.Fatal(err)
	}
	n1, err := mesh1.Node(node)
	if err != nil {
		t.Fatal(err)
	}
	m2 := realistic()
	m2.Services[0].Endpoints = m2.Services[0].Endpoints[:1] // orders loses an endpoint
	mesh2, err := tr.Translate(&m2, policies())
	if err != nil {
		t.Fatal(err)
	}
	n2, err := mesh2.Node(node)
	if err != nil {
		t.Fatal(err)
	}
	if !n2.SameOwn(n1) || n2.Listeners.Own[wire.InboundListener] != n1.Listeners.Own[wire.InboundListener] {
		t.Error("an unchanged node's own resources were rebuilt")
	}
	m3 := realistic()
	m3.Services[1].Policy.RateLimit.MaxTokens = 7
	mesh3, err := tr.Translate(&m3, policies())
	if err != nil {
		t.Fatal(err)
	}
	n3, err := mesh3.Node(node)
	if err != nil {
		t.Fatal(err)
	}
	if n3.SameOwn(n2) {
		t.Error("a rate limit change kept the old inbound listener")
	}
	if b, _ := protojson.Marshal(n3.Listeners.Own[wire.InboundListener]); !strings.Contains(string(b), `"maxTokens":7`) {
		t.Errorf("inbound listener does not carry the new rate limit: %s", b)
	}

	p := policies()
	fresh := config.DefaultPolicy()
	fresh.RateLimit = config.RateLimit{MaxTokens: 3, TokensPerFill: 3, FillInterval: time.Second}
	p.Services = map[string]config.Policy{"fresh": fresh}
	mesh4, err := translate.Translate(&m1, p)
	if err != nil {
		t.Fatal(err)
	}
	n4, err := mesh4.Node(model.Node{ID: "vm-50", Service: "fresh", AppPort: 8080})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := protojson.Marshal(n4.Listeners.Own[wire.InboundListener]); !strings.Contains(string(b), `"maxTokens":3`) {
		t.Errorf("a service unknown to the model does not get its configured policy: %s", b)
	}
	if n4.Listeners.Shared != "" || n4.Routes.Shared != translate.SharedOutboundRoutes || n4.Clusters.Shared != translate.SharedClusters {
		t.Errorf("agent layers %+v", n4.Layers())
	}
}
