package meshctl_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	consulapi "github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshvm/mesh/meshapi"
	"github.com/meshvm/mesh/meshctl"
	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/wire"
)

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

func (m *mesh) traffic(t *testing.T) meshapi.Traffic {
	var tr meshapi.Traffic
	getJSON(t, "http://"+m.adminAddr+meshapi.TrafficPath, &tr)
	return tr
}

func (m *mesh) status(t *testing.T) meshapi.Status {
	var st meshapi.Status
	getJSON(t, "http://"+m.adminAddr+meshapi.StatusPath, &st)
	return st
}

func edgeOf(tr meshapi.Traffic, caller, callee string) (meshapi.Edge, bool) {
	for _, e := range tr.Edges {
		if e.Caller == caller && e.Callee == callee {
			return e, true
		}
	}
	return meshapi.Edge{}, false
}

// waitInSync waits until mesh control says every one of n proxies is in
// sync and orders has an instance passing.
func (m *mesh) waitInSync(t *testing.T, n int) {
	t.Helper()
	meshtest.Eventually(t, 40*time.Second, func() error {
		st := m.status(t)
		if len(st.Proxies) != n || !st.InSync {
			return fmt.Errorf("want %d proxies in sync: %+v", n, st.Proxies)
		}
		for _, s := range st.Services {
			if s.Name == "orders" && s.Healthy == 1 {
				return nil
			}
		}
		return fmt.Errorf("orders not healthy yet: %+v", st.Services)
	})
}

// TestSeeTheMesh runs mesh control, three agents and their apps as real
// processes against a real Consul; web and shop call orders.
func TestSeeTheMesh(t *testing.T) {
	m := startControl(t)
	web := m.addVM("web1", "127.0.16.41", "web")
	shop := m.addVM("shop1", "127.0.16.42", "shop")
	orders := m.addVM("orders1", "127.0.16.43", "orders")
	m.waitInSync(t, 3)

	t.Run("load reports from two agents add up per edge", func(t *testing.T) {
		// Nothing was sent yet: no edge reports any load.
		for _, e := range m.traffic(t).Edges {
			if e.Total.Issued != 0 {
				t.Fatalf("load before any request: %+v", e)
			}
		}
		send := func(v *vm, ok, failing int) {
			for i := 0; i < ok+failing; i++ {
				path, want := "/hello", http.StatusOK
				if i%((ok+failing)/failing) == 0 && failing > 0 {
					path, want = "/fail", http.StatusInternalServerError
				}
				if got := v.call(t, "orders", path); got != want {
					t.Fatalf("%s -> orders%s: %d, want %d", v.name, path, got, want)
				}
			}
		}
		send(web, 20, 10) // every third fails
		send(shop, 16, 4) // every fifth fails
		want := map[string]meshapi.Totals{"web": {Issued: 30, Succeeded: 20, Errored: 10}, "shop": {Issued: 20, Succeeded: 16, Errored: 4}}
		meshtest.Eventually(t, 20*time.Second, func() error {
			tr := m.traffic(t)
			for caller, w := range want {
				e, ok := edgeOf(tr, caller, "orders")
				if !ok || e.Total != w {
					return fmt.Errorf("%s -> orders: %+v, want %+v (edges %+v)", caller, e.Total, w, tr.Edges)
				}
			}
			return nil
		})
		// Two more reporting intervals: nothing is counted twice.
		time.Sleep(2500 * time.Millisecond)
		tr := m.traffic(t)
		var callers []string
		for _, e := range tr.Edges {
			if e.Callee != "orders" {
				t.Errorf("an edge nobody called: %+v", e)
				continue
			}
			callers = append(callers, e.Caller)
			w := want[e.Caller]
			if e.Total != w {
				t.Errorf("%s -> orders after more reports: %+v, want %+v", e.Caller, e.Total, w)
			}
			if len(e.Localities) != 1 || e.Localities[0].Locality != "eu/eu-orders1" || e.Localities[0].Totals != w {
				t.Errorf("%s -> orders by locality: %+v", e.Caller, e.Localities)
			}
			if e.RPS <= 0 || e.ErrorRatio <= 0 || e.P99Ms <= 0 {
				t.Errorf("%s -> orders: no rate, error ratio or p99 over the window: %+v", e.Caller, e)
			}
			if len(e.Reporters) != 1 || e.Reporters[0] != m.vms[e.Caller+"1"].nodeID() {
				t.Errorf("%s -> orders reported by %v", e.Caller, e.Reporters)
			}
		}
		sort.Strings(callers)
		if !slices.Equal(callers, []string{"shop", "web"}) {
			t.Errorf("callers of orders %v, want shop and web", callers)
		}
		if e, _ := edgeOf(tr, "web", "orders"); e.ErrorRatio < 0.30 || e.ErrorRatio > 0.37 {
			t.Errorf("web -> orders error ratio %.3f, want 1/3", e.ErrorRatio)
		}

		// mesh inspect --service orders shows both callers.
		out, code := m.run("inspect", "--service", "orders", "--output", "json")
		var st meshctl.ServiceTraffic
		if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil {
			t.Fatalf("mesh inspect --service orders: exit %d, %v\n%s", code, err, out)
		}
		if len(st.Callers) != 2 || st.Callers[0].Caller != "shop" || st.Callers[0].Total != want["shop"] || st.Callers[1].Total != want["web"] {
			t.Errorf("inspect --service orders callers: %+v", st.Callers)
		}
		out, code = m.run("inspect", "--service", "orders")
		if code != 0 || !strings.Contains(out, "CALLER") || !strings.Contains(out, "web") || !strings.Contains(out, "shop") {
			t.Errorf("mesh inspect --service orders: exit %d\n%s", code, out)
		}
		t.Logf("mesh inspect --service orders:\n%s", out)
	})

	t.Run("status shows every proxy in sync and exits 0", func(t *testing.T) {
		out, code := m.run("status")
		if code != 0 || !strings.Contains(out, "IN SYNC: 3 proxies") {
			t.Fatalf("mesh status: exit %d\n%s", code, out)
		}
		t.Logf("mesh status:\n%s", out)
		out, code = m.run("status", "--output", "json")
		var st meshapi.Status
		if err := json.Unmarshal([]byte(out), &st); err != nil || code != 0 {
			t.Fatalf("mesh status -o json: exit %d %v\n%s", code, err, out)
		}
		for _, p := range st.Proxies {
			// Agents hold what they use: web and shop call orders (clusters,
			// endpoints, listeners, routes); orders calls nothing (its
			// local app cluster and its listeners).
			types := 4
			if p.Service == "orders" {
				types = 2
			}
			if p.Kind != meshapi.KindAgent || p.State != meshapi.InSync || len(p.Types) != types {
				t.Errorf("proxy %+v", p)
			}
			for _, ty := range p.Types {
				if ty.Acked == "" || ty.Acked != ty.Want {
					t.Errorf("proxy %s type %s: acked %q, want %q", p.Node, ty.Type, ty.Acked, ty.Want)
				}
			}
		}
		var o meshapi.Service
		for _, s := range st.Services {
			if s.Name == "orders" {
				o = s
			}
		}
		if o.Instances != 1 || o.Healthy != 1 || o.Draining != 0 || !slices.Equal(o.Localities, []string{"eu/eu-orders1"}) || o.Protocol != "http1" {
			t.Errorf("orders: %+v", o)
		}
	})

	t.Run("inspect shows what an independent ADS client receives", func(t *testing.T) {
		got := adsFetch(t, m.xdsAddr, web)
		out, code := m.run("inspect", web.nodeID(), "--output", "json")
		var in meshctl.Inspect
		if err := json.Unmarshal([]byte(out), &in); code != 0 || err != nil {
			t.Fatalf("mesh inspect %s: exit %d %v\n%s", web.nodeID(), code, err, out)
		}
		if in.Node != web.nodeID() || in.Service != "web" || in.Kind != meshapi.KindAgent || in.State != meshapi.InSync {
			t.Errorf("inspect header: %+v", in)
		}
		var names []string
		for _, l := range in.Listeners {
			names = append(names, l.Name+" "+l.Address+" "+l.Route)
		}
		sort.Strings(names)
		if !slices.Equal(names, got.listeners) {
			t.Errorf("listeners: inspect %v, ADS %v", names, got.listeners)
		}
		names = nil
		for _, c := range in.Clusters {
			names = append(names, c.Name+" "+c.Type)
		}
		sort.Strings(names)
		if !slices.Equal(names, got.clusters) {
			t.Errorf("clusters: inspect %v, ADS %v", names, got.clusters)
		}
		names = nil
		for _, r := range in.Routes {
			if r.Config != wire.OutboundRoute {
				continue // the per-service configurations scoped agents subscribe to; the ADS client asks for mesh_outbound
			}
			names = append(names, r.Config+" "+r.Name+" "+r.Cluster)
		}
		sort.Strings(names)
		if !slices.Equal(names, got.routes) {
			t.Errorf("routes: inspect %v, ADS %v", names, got.routes)
		}
		names = nil
		for _, e := range in.Endpoints {
			names = append(names, e.Cluster+" "+e.Address+" "+e.Health+" "+e.Locality)
		}
		sort.Strings(names)
		if !slices.Equal(names, got.endpoints) {
			t.Errorf("endpoints: inspect %v, ADS %v", names, got.endpoints)
		}
		if !slices.Contains(got.endpoints, "orders "+orders.ip+":15006 healthy eu/eu-orders1") {
			t.Errorf("ADS: orders' endpoint missing: %v", got.endpoints)
		}
		out, code = m.run("inspect", web.nodeID())
		for _, want := range []string{"LISTENER", "mesh_outbound", "CLUSTER", "orders", orders.ip + ":15006", "healthy", "outlier detection"} {
			if code != 0 || !strings.Contains(out, want) {
				t.Errorf("mesh inspect %s: exit %d, no %q\n%s", web.nodeID(), code, want, out)
			}
		}
		t.Logf("mesh inspect %s:\n%s", web.nodeID(), out)
		if _, code := m.run("inspect", "no-such-node"); code != 1 {
			t.Errorf("inspect of an unknown node exits %d, want 1", code)
		}
	})

	t.Run("status shows an agent that NACKed and exits non-zero", func(t *testing.T) {
		// An instance registered by hand with a host name for an address:
		// mesh control passes it on, the agents refuse load assignments
		// that are not IP addresses.
		c, err := consulapi.NewClient(&consulapi.Config{Address: testConsul.Addr})
		if err != nil {
			t.Fatal(err)
		}
		reg := &consulapi.AgentServiceRegistration{ID: "broken-1", Name: "broken", Address: "broken.invalid", Port: 8080}
		if err := c.Agent().ServiceRegister(reg); err != nil {
			t.Fatal(err)
		}
		// Agents hold only what they call: web calls broken (on demand),
		// receives its endpoint and rejects it; shop and orders never get
		// it. The NACK stands while web still subscribes, that is until
		// its on-demand wait gives up (5 s) and it drops the name.
		called := make(chan int, 1)
		go func() { called <- web.call(t, "broken", "/") }()
		defer func() {
			if got := <-called; got == http.StatusOK {
				t.Errorf("web -> broken: %d, want a refusal", got)
			}
		}()
		var out string
		meshtest.Eventually(t, 30*time.Second, func() error {
			var code int
			out, code = m.run("status")
			if code != meshctl.ExitOutOfSync || !strings.Contains(out, "NACK") || !strings.Contains(out, "not an IP address") {
				return fmt.Errorf("exit %d\n%s", code, out)
			}
			return nil
		})
		t.Logf("mesh status with a NACK:\n%s", out)
		st := m.status(t)
		for _, p := range st.Proxies {
			switch {
			case p.Service == "web" && (p.State != meshapi.NACKed || !strings.Contains(p.Reason, "broken.invalid")):
				t.Errorf("proxy %s: state %s reason %q, want NACKed for broken.invalid", p.Node, p.State, p.Reason)
			case p.Service != "web" && p.State != meshapi.InSync:
				t.Errorf("proxy %s (never called broken): state %s reason %q, want in sync", p.Node, p.State, p.Reason)
			}
		}
		// Traffic still flows on the last good config.
		if got := web.call(t, "orders", "/"); got != http.StatusOK {
			t.Errorf("web -> orders after the NACK: %d", got)
		}
		// Fixed: the proxies accept the next version and status is 0 again.
		if err := c.Agent().ServiceDeregister("broken-1"); err != nil {
			t.Fatal(err)
		}
		meshtest.Eventually(t, 30*time.Second, func() error {
			out, code := m.run("status")
			if code != 0 {
				return fmt.Errorf("exit %d\n%s", code, out)
			}
			return nil
		})
	})
}

// adsResult is what the independent ADS client received, as lines.
type adsResult struct{ listeners, clusters, routes, endpoints []string }

// adsFetch opens its own ADS stream as v's node (same id and metadata)
// and collects every type, following what clusters and listeners name.
func adsFetch(t *testing.T, addr string, v *vm) adsResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	md, _ := structpb.NewStruct(map[string]any{
		wire.NodeService: v.service, wire.NodeAppPort: "8080", wire.NodeAppAddress: v.ip,
		wire.NodeInboundAddr: v.ip + ":15006", wire.NodeOutboundAddr: v.outbound(),
	})
	node := &corev3.Node{Id: v.nodeID(), Cluster: v.service, Metadata: md, UserAgentName: wire.AgentUserAgent,
		Locality: &corev3.Locality{Region: "eu", Zone: "eu-" + v.name}}
	subs := map[string][]string{}
	send := func(typeURL string, names []string, version, nonce string) {
		subs[typeURL] = names
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: typeURL, ResourceNames: names, VersionInfo: version, ResponseNonce: nonce}); err != nil {
			t.Fatal(err)
		}
	}
	send(resourcev3.ClusterType, nil, "", "")
	send(resourcev3.ListenerType, wire.AgentListeners(), "", "")
	got := map[string][]proto.Message{}
	for len(got) < 4 {
		resp, err := st.Recv()
		if err != nil {
			t.Fatalf("ADS: %v (got %d types)", err, len(got))
		}
		var list []proto.Message
		var follow []string
		for _, a := range resp.GetResources() {
			m, err := a.UnmarshalNew()
			if err != nil {
				t.Fatal(err)
			}
			list = append(list, m)
			switch r := m.(type) {
			case *clusterv3.Cluster:
				if r.GetType() == clusterv3.Cluster_EDS {
					follow = append(follow, r.GetName())
				}
			case *listenerv3.Listener:
				for _, fc := range r.GetFilterChains() {
					for _, f := range fc.GetFilters() {
						h := &hcmv3.HttpConnectionManager{}
						if f.GetTypedConfig().UnmarshalTo(h) == nil && h.GetRds() != nil {
							follow = append(follow, h.GetRds().GetRouteConfigName())
						}
					}
				}
			}
		}
		got[resp.GetTypeUrl()] = list
		send(resp.GetTypeUrl(), subs[resp.GetTypeUrl()], resp.GetVersionInfo(), resp.GetNonce())
		sort.Strings(follow)
		switch resp.GetTypeUrl() {
		case resourcev3.ClusterType:
			send(resourcev3.EndpointType, follow, "", "")
		case resourcev3.ListenerType:
			send(resourcev3.RouteType, follow, "", "")
		}
	}
	var r adsResult
	for _, m := range got[resourcev3.ListenerType] {
		l := m.(*listenerv3.Listener)
		sa := l.GetAddress().GetSocketAddress()
		route := ""
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				h := &hcmv3.HttpConnectionManager{}
				if f.GetTypedConfig().UnmarshalTo(h) == nil {
					if h.GetRds() != nil {
						route = h.GetRds().GetRouteConfigName()
					} else if h.GetRouteConfig() != nil {
						route = h.GetRouteConfig().GetName() + " (inline)"
					}
				}
			}
		}
		r.listeners = append(r.listeners, fmt.Sprintf("%s %s:%d %s", l.GetName(), sa.GetAddress(), sa.GetPortValue(), route))
	}
	for _, m := range got[resourcev3.ClusterType] {
		c := m.(*clusterv3.Cluster)
		r.clusters = append(r.clusters, c.GetName()+" "+c.GetType().String())
	}
	for _, m := range got[resourcev3.RouteType] {
		rc := m.(*routev3.RouteConfiguration)
		for _, vh := range rc.GetVirtualHosts() {
			r.routes = append(r.routes, rc.GetName()+" "+vh.GetName()+" "+vh.GetRoutes()[0].GetRoute().GetCluster())
		}
	}
	for _, m := range got[resourcev3.EndpointType] {
		cla := m.(*endpointv3.ClusterLoadAssignment)
		for _, le := range cla.GetEndpoints() {
			loc := le.GetLocality().GetRegion()
			if z := le.GetLocality().GetZone(); z != "" {
				loc += "/" + z
			}
			for _, lb := range le.GetLbEndpoints() {
				sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
				r.endpoints = append(r.endpoints, fmt.Sprintf("%s %s:%d %s %s", cla.GetClusterName(), sa.GetAddress(), sa.GetPortValue(),
					strings.ToLower(lb.GetHealthStatus().String()), loc))
			}
		}
	}
	for _, l := range [][]string{r.listeners, r.clusters, r.routes, r.endpoints} {
		sort.Strings(l)
	}
	return r
}
