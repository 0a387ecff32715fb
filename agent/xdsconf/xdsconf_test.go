package xdsconf_test

import (
	"reflect"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshvm/mesh/agent/endpoint"
	"github.com/meshvm/mesh/agent/xdsconf"
	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/controlplane/translate"
	"github.com/meshvm/mesh/xdsclient"
)

// resourcesFor runs the control plane's own translation for one agent
// node, so these tests check the contract between the two roles: what
// `mesh control` writes is what `mesh agent` reads.
func resourcesFor(t *testing.T, m *model.Model, node model.Node) xdsclient.Resources {
	t.Helper()
	mesh, err := translate.Translate(m)
	if err != nil {
		t.Fatal(err)
	}
	res, err := mesh.ForNode(node, config.DefaultPolicy())
	if err != nil {
		t.Fatal(err)
	}
	out := xdsclient.Resources{
		Listeners: map[string]*listenerv3.Listener{}, Routes: map[string]*routev3.RouteConfiguration{},
		Clusters: map[string]*clusterv3.Cluster{}, Endpoints: map[string]*endpointv3.ClusterLoadAssignment{},
		Versions: map[string]string{},
	}
	for n, r := range res.Listeners {
		out.Listeners[n] = r.(*listenerv3.Listener)
	}
	for n, r := range res.Routes {
		out.Routes[n] = r.(*routev3.RouteConfiguration)
	}
	for n, r := range res.Clusters {
		out.Clusters[n] = r.(*clusterv3.Cluster)
	}
	for n, r := range res.Endpoints {
		out.Endpoints[n] = r.(*endpointv3.ClusterLoadAssignment)
	}
	return out
}

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

	m := &model.Model{Services: []model.Service{
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
	res := resourcesFor(t, m, model.Node{ID: "vm5", Service: "pay", AppPort: 8080})
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
	m := &model.Model{Services: []model.Service{{Name: "orders", Policy: config.DefaultPolicy(), Endpoints: []model.Endpoint{
		{ID: "o1", Node: "vm1", Address: "10.0.0.1", Port: 15006, Health: model.Healthy},
	}}}}
	for _, tc := range []struct {
		name   string
		mutate func(r *xdsclient.Resources)
		want   string
	}{
		{"ring hash", func(r *xdsclient.Resources) { r.Clusters["orders"].LbPolicy = clusterv3.Cluster_RING_HASH }, `cluster "orders": lb_policy RING_HASH is not supported`},
		{"static cluster", func(r *xdsclient.Resources) {
			r.Clusters["orders"].ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
		}, `cluster "orders": discovery type STATIC is not supported`},
		{"bad sleep window", func(r *xdsclient.Resources) {
			r.Clusters["orders"].Metadata.FilterMetadata[xdsconf.GovernanceKey].Fields["sleep_window"] = structpb.NewStringValue("soon")
		}, `sleep_window "soon"`},
		{"pipe endpoint", func(r *xdsclient.Resources) {
			r.Endpoints["orders"].Endpoints[0].LbEndpoints[0].GetEndpoint().Address = &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: "/tmp/x"}}}
		}, `endpoints of cluster "orders": endpoint`},
		{"hostname endpoint", func(r *xdsclient.Resources) {
			r.Endpoints["orders"].Endpoints[0].LbEndpoints[0].GetEndpoint().GetAddress().GetSocketAddress().Address = "orders.example.com"
		}, `"orders.example.com" is not an IP address`},
		{"redirect route", func(r *xdsclient.Resources) {
			r.Routes[xdsconf.OutboundRoute].VirtualHosts[0].Routes[0].Action = &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{}}
		}, `only route actions are supported`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := resourcesFor(t, m, model.Node{ID: "vm9"})
			res = deepCopy(res)
			tc.mutate(&res)
			_, err := xdsconf.Translate(res)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func deepCopy(r xdsclient.Resources) xdsclient.Resources {
	out := r.Clone()
	for k, v := range out.Clusters {
		out.Clusters[k] = proto.Clone(v).(*clusterv3.Cluster)
	}
	for k, v := range out.Endpoints {
		out.Endpoints[k] = proto.Clone(v).(*endpointv3.ClusterLoadAssignment)
	}
	for k, v := range out.Routes {
		out.Routes[k] = proto.Clone(v).(*routev3.RouteConfiguration)
	}
	return out
}
