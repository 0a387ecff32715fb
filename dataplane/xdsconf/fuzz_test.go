package xdsconf_test

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	roundrobinv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/round_robin/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	// types the golden listeners' typed_config name
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"

	"github.com/meshvm/mesh/dataplane/xdsconf"
	"github.com/meshvm/mesh/wire"
	"github.com/meshvm/mesh/xdsclient"
)

// The fuzz input is one DiscoveryResponse in protobuf wire form, holding
// resources of any of the four types the agent subscribes to: what a
// control plane sends, mutated byte by byte. Seeds: the resources `mesh
// control` writes for the golden models (testdata/fuzz/FuzzTranslate/golden-*,
// written by -update-seeds from wire/testdata) and
// the cases below, each a branch of Translate.

var updateSeeds = flag.Bool("update-seeds", false, "rewrite testdata/fuzz/FuzzTranslate/golden-* from wire/testdata")

// FuzzTranslate checks, for any resource set the xDS client would accept
// (each resource decodes, validates and has a name), that Translate
// neither panics nor changes its input, gives the same table twice, and
// either names the resource it refuses or builds a table a proxy can use:
// services under their own names, endpoints with an IP and a port, sorted.
func FuzzTranslate(f *testing.F) {
	for _, seed := range handSeeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		res, ok := decodeResponse(data)
		if !ok {
			return
		}
		before := marshalAll(t, res)
		tab, err := xdsconf.Translate(res)
		if !slices.Equal(before, marshalAll(t, res)) {
			t.Fatal("Translate changed its input")
		}
		again, err2 := xdsconf.Translate(res)
		if (err == nil) != (err2 == nil) || (err != nil && err.Error() != err2.Error()) {
			t.Fatalf("two translations disagree: %v / %v", err, err2)
		}
		if err != nil {
			if !namesAResource(err.Error()) {
				t.Fatalf("error names no resource: %v", err)
			}
			return
		}
		if !reflect.DeepEqual(tab, again) {
			t.Fatalf("two translations of the same resources differ:\n%+v\n%+v", tab, again)
		}
		if !tab.Static {
			t.Error("an xDS table must carry its endpoints")
		}
		for name, s := range tab.Services {
			if s.Name != name || name == wire.LocalAppCluster {
				t.Errorf("service %q under the name %q", s.Name, name)
			}
			for i, ep := range s.Endpoints {
				host, port, err := net.SplitHostPort(ep.Addr)
				if err != nil || net.ParseIP(host) == nil {
					t.Errorf("service %q endpoint %q is not IP:port", name, ep.Addr)
				}
				if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
					t.Errorf("service %q endpoint %q: port out of range", name, ep.Addr)
				}
				if i > 0 && s.Endpoints[i-1].Addr > ep.Addr {
					t.Errorf("service %q endpoints not sorted: %q before %q", name, s.Endpoints[i-1].Addr, ep.Addr)
				}
			}
		}
	})
}

// namesAResource: every refusal says which resource it is about.
func namesAResource(msg string) bool {
	for _, p := range []string{"cluster ", "endpoints of cluster ", "route ", "listener "} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// decodeResponse turns a DiscoveryResponse into Resources the way the xDS
// client does (xdsclient's decode): known types only, each validated and
// named; ok is false for what the client would NACK before Translate.
func decodeResponse(data []byte) (xdsclient.Resources, bool) {
	r := xdsclient.Resources{
		Listeners: map[string]*listenerv3.Listener{}, Routes: map[string]*routev3.RouteConfiguration{},
		Clusters: map[string]*clusterv3.Cluster{}, Endpoints: map[string]*endpointv3.ClusterLoadAssignment{},
		Versions: map[string]string{},
	}
	var resp discoveryv3.DiscoveryResponse
	if proto.Unmarshal(data, &resp) != nil {
		return r, false
	}
	for _, a := range resp.GetResources() {
		msg, name, err := xdsclient.Decode(a)
		if err != nil {
			return r, false
		}
		r.Put(msg, name)
		r.Versions[a.GetTypeUrl()] = resp.GetVersionInfo()
	}
	return r, true
}

// marshalAll is every resource in deterministic wire form, by kind and name.
func marshalAll(t *testing.T, r xdsclient.Resources) []string {
	var out []string
	add := func(kind, name string, m proto.Message) {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			t.Fatalf("marshal %s %q: %v", kind, name, err)
		}
		out = append(out, kind+"/"+name+"="+string(b))
	}
	for n, m := range r.Listeners {
		add("listener", n, m)
	}
	for n, m := range r.Routes {
		add("route", n, m)
	}
	for n, m := range r.Clusters {
		add("cluster", n, m)
	}
	for n, m := range r.Endpoints {
		add("endpoints", n, m)
	}
	slices.Sort(out)
	return out
}

// encodeResponse is the seed form of a resource set (the seeds are built
// here: an error is a bug in this file).
func encodeResponse(version string, msgs ...proto.Message) []byte {
	resp := &discoveryv3.DiscoveryResponse{VersionInfo: version}
	for _, m := range msgs {
		a, err := anypb.New(m)
		if err != nil {
			panic(err)
		}
		resp.Resources = append(resp.Resources, a)
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(resp)
	if err != nil {
		panic(err)
	}
	return b
}

// handSeeds are small resource sets, one per branch of Translate that the
// golden files do not take: accepted and refused ones alike.
func handSeeds() [][]byte {
	eds := func(name string, mutate func(*clusterv3.Cluster)) *clusterv3.Cluster {
		c := &clusterv3.Cluster{
			Name:                 name,
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{ServiceName: name, EdsConfig: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}},
			ConnectTimeout:       durationpb.New(250 * time.Millisecond),
		}
		if mutate != nil {
			mutate(c)
		}
		return c
	}
	cla := func(name string, health corev3.HealthStatus, addrs ...string) *endpointv3.ClusterLoadAssignment {
		var lbs []*endpointv3.LbEndpoint
		for i, a := range addrs {
			lbs = append(lbs, &endpointv3.LbEndpoint{
				HealthStatus:        health,
				LoadBalancingWeight: wrapperspb.UInt32(uint32(i + 1)),
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{
					Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: a, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 15006}}},
				}}},
				Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{wire.EndpointNamespace: {Fields: map[string]*structpb.Value{"node": structpb.NewStringValue("vm-" + a)}}}},
			})
		}
		return &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
			Locality: &corev3.Locality{Region: "eu", Zone: "eu-1a"}, LbEndpoints: lbs,
		}}}
	}
	route := func(cluster string, retry *routev3.RetryPolicy) *routev3.RouteConfiguration {
		return &routev3.RouteConfiguration{Name: wire.OutboundRoute, VirtualHosts: []*routev3.VirtualHost{{
			Name: cluster, Domains: []string{cluster},
			Routes: []*routev3.Route{{
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
					Timeout:          durationpb.New(2 * time.Second), RetryPolicy: retry,
				}},
			}},
		}}}
	}
	governance := func(sleep string) *corev3.Metadata {
		return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{wire.GovernanceNamespace: {Fields: map[string]*structpb.Value{
			"error_percent_threshold": structpb.NewNumberValue(50), "request_volume_threshold": structpb.NewNumberValue(10),
			"sleep_window": structpb.NewStringValue(sleep),
		}}}}
	}
	rr, _ := anypb.New(&roundrobinv3.RoundRobin{})
	return [][]byte{
		// retries, random lb, zone-aware off, a breaker, degraded endpoints
		encodeResponse("1",
			eds("orders", func(c *clusterv3.Cluster) {
				c.LbPolicy = clusterv3.Cluster_RANDOM
				c.Metadata = governance("3s")
				c.CommonLbConfig = &clusterv3.Cluster_CommonLbConfig{LocalityConfigSpecifier: &clusterv3.Cluster_CommonLbConfig_ZoneAwareLbConfig_{
					ZoneAwareLbConfig: &clusterv3.Cluster_CommonLbConfig_ZoneAwareLbConfig{RoutingEnabled: nil}}}
			}),
			cla("orders", corev3.HealthStatus_DEGRADED, "10.0.0.2", "10.0.0.1", "::1"),
			route("orders", &routev3.RetryPolicy{RetryOn: "5xx, connect-failure,", NumRetries: wrapperspb.UInt32(3), PerTryTimeout: durationpb.New(time.Second)})),
		// load_balancing_policy instead of lb_policy; draining endpoints left out
		encodeResponse("2",
			eds("pay", func(c *clusterv3.Cluster) {
				c.LoadBalancingPolicy = &clusterv3.LoadBalancingPolicy{Policies: []*clusterv3.LoadBalancingPolicy_Policy{{
					TypedExtensionConfig: &corev3.TypedExtensionConfig{Name: "envoy.load_balancing_policies.round_robin", TypedConfig: rr},
				}}}
				c.OutlierDetection = &clusterv3.OutlierDetection{EnforcingConsecutive_5Xx: wrapperspb.UInt32(0)}
			}),
			cla("pay", corev3.HealthStatus_DRAINING, "10.0.0.5")),
		// refused: a sleep window that is no duration, a STATIC cluster,
		// a hostname endpoint, a route choosing its cluster by header
		encodeResponse("3", eds("orders", func(c *clusterv3.Cluster) { c.Metadata = governance("soon") })),
		encodeResponse("4", eds("orders", func(c *clusterv3.Cluster) {
			c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
		})),
		encodeResponse("5", eds("orders", nil), cla("orders", corev3.HealthStatus_HEALTHY, "orders.example.com")),
		encodeResponse("6", eds("orders", nil), &routev3.RouteConfiguration{Name: wire.OutboundRoute, VirtualHosts: []*routev3.VirtualHost{{
			Name: "orders", Domains: []string{"orders"}, Routes: []*routev3.Route{{
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_ClusterHeader{ClusterHeader: "x-cluster"}}},
			}},
		}}}),
	}
}

// The seeds from the golden files are what `mesh control` serves: every
// one translates, and gives the agent services with endpoints.
func TestGoldenSeedsTranslate(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join("testdata", "fuzz", "FuzzTranslate", "golden-*"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no golden seeds (%v): run go test -run TestGoldenSeedsTranslate -update-seeds", err)
	}
	for _, p := range paths {
		t.Run(filepath.Base(p), func(t *testing.T) {
			data := readCorpusFile(t, p)
			res, ok := decodeResponse(data)
			if !ok {
				t.Fatal("the xDS client would refuse this seed")
			}
			tab, err := xdsconf.Translate(res)
			if err != nil {
				t.Fatal(err)
			}
			if len(tab.Services) == 0 {
				t.Fatal("no services")
			}
			for name, s := range tab.Services {
				if len(s.Endpoints) == 0 {
					t.Errorf("service %q has no endpoints", name)
				}
			}
		})
	}
}

// TestUpdateGoldenSeeds (with -update-seeds) writes one seed per golden
// file of controlplane/translate: a file, not an import, so the agent's
// tests do not depend on the control plane's code.
func TestUpdateGoldenSeeds(t *testing.T) {
	if !*updateSeeds {
		return
	}
	goldens, err := filepath.Glob(filepath.Join("..", "..", "wire", "testdata", "*.golden.json"))
	if err != nil || len(goldens) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	for _, g := range goldens {
		b, err := os.ReadFile(g)
		if err != nil {
			t.Fatal(err)
		}
		var kinds map[string]map[string]json.RawMessage
		if err := json.Unmarshal(b, &kinds); err != nil {
			t.Fatalf("%s: %v", g, err)
		}
		var msgs []proto.Message
		for _, kind := range []struct {
			key string
			new func() proto.Message
		}{
			{"listeners", func() proto.Message { return &listenerv3.Listener{} }},
			{"routes", func() proto.Message { return &routev3.RouteConfiguration{} }},
			{"clusters", func() proto.Message { return &clusterv3.Cluster{} }},
			{"endpoints", func() proto.Message { return &endpointv3.ClusterLoadAssignment{} }},
		} {
			names := make([]string, 0, len(kinds[kind.key]))
			for n := range kinds[kind.key] {
				names = append(names, n)
			}
			slices.Sort(names)
			for _, n := range names {
				m := kind.new()
				if err := protojson.Unmarshal(kinds[kind.key][n], m); err != nil {
					t.Fatalf("%s %s %q: %v", g, kind.key, n, err)
				}
				msgs = append(msgs, m)
			}
		}
		name := "golden-" + strings.TrimSuffix(filepath.Base(g), ".golden.json")
		out := filepath.Join("testdata", "fuzz", "FuzzTranslate", name)
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			t.Fatal(err)
		}
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%s)\n", strconv.Quote(string(encodeResponse("golden", msgs...))))
		if err := os.WriteFile(out, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// readCorpusFile reads a one-[]byte corpus file (go test fuzz v1).
func readCorpusFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitN(strings.TrimSpace(string(b)), "\n", 2)
	if len(lines) != 2 || lines[0] != "go test fuzz v1" || !strings.HasPrefix(lines[1], "[]byte(") || !strings.HasSuffix(lines[1], ")") {
		t.Fatalf("%s is not a go test fuzz v1 file with one []byte", path)
	}
	s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return []byte(s)
}

// The hand seeds reach Translate (the xDS client would accept them) and
// take the branches they are for: two accepted, the rest refused.
func TestHandSeedsReachTranslate(t *testing.T) {
	for i, seed := range handSeeds() {
		res, ok := decodeResponse(seed)
		if !ok {
			t.Errorf("seed %d: the xDS client would refuse it", i)
			continue
		}
		_, err := xdsconf.Translate(res)
		if accepted := i < 2; accepted != (err == nil) {
			t.Errorf("seed %d: error %v, want accepted=%v", i, err, accepted)
		}
	}
}
