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
		// web's agent is a scoped delta client: it holds what it calls
		// (orders) and its own app. An independent delta client, as a node
		// of its own with web's metadata, subscribes to what the agent's
		// /config_dump says it subscribes to: mesh inspect shows, for the
		// agent and for that client alike, exactly what the client got.
		if got := web.call(t, "orders", "/"); got != http.StatusOK {
			t.Fatalf("web -> orders: %d", got)
		}
		var ad struct {
			Subs map[string][]string `json:"xds_subscriptions"`
		}
		getJSON(t, "http://"+web.admin()+"/config_dump", &ad)
		if !slices.Contains(ad.Subs["clusters"], "orders") || !slices.Contains(ad.Subs["routes"], wire.ServiceRoute("orders")) {
			t.Fatalf("web's agent does not subscribe to orders: %v", ad.Subs)
		}
		probe := probeNode(web, "web-probe1-8080")
		got := deltaFetch(t, m.xdsAddr, probe, ad.Subs["clusters"], ad.Subs["routes"])
		want := linesOf(got)
		if !slices.Contains(want.endpoints, "orders "+orders.ip+":15006 healthy eu/eu-orders1") {
			t.Errorf("delta ADS: orders' endpoint missing: %v", want.endpoints)
		}
		for _, c := range want.clusters {
			if strings.HasPrefix(c, "shop ") || strings.HasPrefix(c, "web ") {
				t.Errorf("delta ADS: a cluster web never called was sent: %v", want.clusters)
			}
		}
		for _, node := range []string{web.nodeID(), probe.GetId()} {
			in := m.inspect(t, node)
			if in.Node != node || in.Service != "web" || in.Kind != meshapi.KindAgent || in.State != meshapi.InSync {
				t.Errorf("inspect %s header: %+v", node, in)
			}
			if d := diffLines(inspectLines(in), want); d != "" {
				t.Errorf("inspect %s differs from what the delta ADS client received:\n%s", node, d)
			}
			if d := diffSummary(in, meshctl.Summarize(got)); d != "" {
				t.Errorf("inspect %s: the readable form differs from that of what the delta ADS client received:\n%s", node, d)
			}
		}

		// A state-of-the-world client asking for every cluster is sent
		// every cluster; inspect shows that for its node.
		sotw := probeNode(web, "web-sotw1-8080")
		all := sotwFetch(t, m.xdsAddr, sotw)
		in := m.inspect(t, sotw.GetId())
		if d := diffLines(inspectLines(in), linesOf(all)); d != "" {
			t.Errorf("inspect %s differs from what the SotW ADS client received:\n%s", sotw.GetId(), d)
		}
		if d := diffSummary(in, meshctl.Summarize(all)); d != "" {
			t.Errorf("inspect %s: the readable form differs from that of what the SotW ADS client received:\n%s", sotw.GetId(), d)
		}
		if l := linesOf(all).clusters; !slices.Contains(l, "shop EDS") {
			t.Errorf("SotW ADS: no shop cluster in %v", l)
		}

		out, code := m.run("inspect", web.nodeID())
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
	// The probes' streams are closed: three proxies again.
	m.waitInSync(t, 3)

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

// adsResult is what an independent ADS client received, as lines.
type adsResult struct{ listeners, clusters, routes, endpoints []string }

// received is what an independent ADS client was sent, by type name
// (cluster, endpoint, listener, route), as Summarize takes it.
type received map[string][]proto.Message

var typeNames = map[string]string{resourcev3.ClusterType: "cluster", resourcev3.EndpointType: "endpoint",
	resourcev3.ListenerType: "listener", resourcev3.RouteType: "route"}

// inspect runs mesh inspect NODE -o json.
func (m *mesh) inspect(t *testing.T, node string) meshctl.Inspect {
	t.Helper()
	out, code := m.run("inspect", node, "--output", "json")
	var in meshctl.Inspect
	if err := json.Unmarshal([]byte(out), &in); code != 0 || err != nil {
		t.Fatalf("mesh inspect %s: exit %d %v\n%s", node, code, err, out)
	}
	return in
}

// probeNode is a node with v's agent's metadata and locality under an id
// of its own.
func probeNode(v *vm, id string) *corev3.Node {
	md, _ := structpb.NewStruct(map[string]any{
		wire.NodeService: v.service, wire.NodeAppPort: "8080", wire.NodeAppAddress: v.ip,
		wire.NodeInboundAddr: v.ip + ":15006", wire.NodeOutboundAddr: v.outbound(),
	})
	return &corev3.Node{Id: id, Cluster: v.service, Metadata: md, UserAgentName: wire.AgentUserAgent,
		Locality: &corev3.Locality{Region: "eu", Zone: "eu-" + v.name}}
}

// adsStream opens an ADS connection that lives until the test (or
// subtest) ends: mesh inspect reads a node while it is connected.
func adsStream(t *testing.T, addr string) (discoveryv3.AggregatedDiscoveryServiceClient, context.Context) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); conn.Close() })
	return discoveryv3.NewAggregatedDiscoveryServiceClient(conn), ctx
}

// recvTimeout bounds an independent client's wait for an answer.
func recvTimeout[T any](t *testing.T, recv func() (T, error)) T {
	t.Helper()
	type res struct {
		v   T
		err error
	}
	ch := make(chan res, 1)
	go func() { v, err := recv(); ch <- res{v, err} }()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("ADS: %v", r.err)
		}
		return r.v
	case <-time.After(30 * time.Second):
		t.Fatal("ADS: no answer in 30s")
	}
	var zero T
	return zero
}

// deltaFetch subscribes over delta ADS, as node, to clusters, routes and
// the agent listeners, then to the load assignments of the EDS clusters
// it is sent, ACKing each answer; it returns once it holds every name it
// subscribed to. The stream stays open until the test ends.
func deltaFetch(t *testing.T, addr string, node *corev3.Node, clusters, routes []string) received {
	t.Helper()
	ads, ctx := adsStream(t, addr)
	st, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first := true
	send := func(typeURL string, names []string, nonce string) {
		req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeURL, ResourceNamesSubscribe: names, ResponseNonce: nonce}
		if first {
			req.Node, first = node, false
		}
		if err := st.Send(req); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string][]string{resourcev3.ClusterType: clusters, resourcev3.ListenerType: wire.AgentListeners(), resourcev3.RouteType: routes}
	for _, ty := range []string{resourcev3.ClusterType, resourcev3.ListenerType, resourcev3.RouteType} {
		send(ty, want[ty], "")
	}
	held := map[string]map[string]proto.Message{}
	complete := func() bool {
		if _, ok := want[resourcev3.EndpointType]; !ok {
			return false
		}
		for ty, names := range want {
			for _, n := range names {
				if _, ok := held[ty][n]; !ok {
					return false
				}
			}
		}
		return true
	}
	for !complete() {
		resp := recvTimeout(t, st.Recv)
		ty := resp.GetTypeUrl()
		if held[ty] == nil {
			held[ty] = map[string]proto.Message{}
		}
		for _, r := range resp.GetResources() {
			m, err := r.GetResource().UnmarshalNew()
			if err != nil {
				t.Fatal(err)
			}
			held[ty][r.GetName()] = m
		}
		for _, n := range resp.GetRemovedResources() {
			delete(held[ty], n)
		}
		send(ty, nil, resp.GetNonce())
		if ty == resourcev3.ClusterType {
			if _, ok := want[resourcev3.EndpointType]; !ok {
				var eds []string
				for name, m := range held[ty] {
					c := m.(*clusterv3.Cluster)
					if c.GetType() != clusterv3.Cluster_EDS {
						continue
					}
					if sn := c.GetEdsClusterConfig().GetServiceName(); sn != "" {
						name = sn
					}
					eds = append(eds, name)
				}
				sort.Strings(eds)
				want[resourcev3.EndpointType] = eds
				send(resourcev3.EndpointType, eds, "")
			}
		}
	}
	out := received{}
	for ty, set := range held {
		for _, m := range set {
			out[typeNames[ty]] = append(out[typeNames[ty]], m)
		}
	}
	return out
}

// sotwFetch opens its own state-of-the-world ADS stream as node, asks for
// every cluster and the agent listeners, follows what clusters and
// listeners name, and returns once it has every type. The stream stays
// open until the test ends.
func sotwFetch(t *testing.T, addr string, node *corev3.Node) received {
	t.Helper()
	ads, ctx := adsStream(t, addr)
	st, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	subs := map[string][]string{}
	send := func(typeURL string, names []string, version, nonce string) {
		subs[typeURL] = names
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: typeURL, ResourceNames: names, VersionInfo: version, ResponseNonce: nonce}); err != nil {
			t.Fatal(err)
		}
	}
	send(resourcev3.ClusterType, nil, "", "")
	send(resourcev3.ListenerType, wire.AgentListeners(), "", "")
	got := received{}
	for len(got) < 4 {
		resp := recvTimeout(t, st.Recv)
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
		got[typeNames[resp.GetTypeUrl()]] = list
		send(resp.GetTypeUrl(), subs[resp.GetTypeUrl()], resp.GetVersionInfo(), resp.GetNonce())
		sort.Strings(follow)
		switch resp.GetTypeUrl() {
		case resourcev3.ClusterType:
			send(resourcev3.EndpointType, follow, "", "")
		case resourcev3.ListenerType:
			send(resourcev3.RouteType, follow, "", "")
		}
	}
	return got
}

// linesOf is what a client received as sorted lines, read here without
// meshctl's code: listeners with address and route, clusters with type,
// virtual hosts with their cluster, endpoints with health and locality.
func linesOf(got received) adsResult {
	var r adsResult
	for _, m := range got["listener"] {
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
	for _, m := range got["cluster"] {
		c := m.(*clusterv3.Cluster)
		r.clusters = append(r.clusters, c.GetName()+" "+c.GetType().String())
	}
	for _, m := range got["route"] {
		rc := m.(*routev3.RouteConfiguration)
		for _, vh := range rc.GetVirtualHosts() {
			r.routes = append(r.routes, rc.GetName()+" "+vh.GetName()+" "+vh.GetRoutes()[0].GetRoute().GetCluster())
		}
	}
	for _, m := range got["endpoint"] {
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

// inspectLines is mesh inspect's output as linesOf's lines.
func inspectLines(in meshctl.Inspect) adsResult {
	var r adsResult
	for _, l := range in.Listeners {
		r.listeners = append(r.listeners, l.Name+" "+l.Address+" "+l.Route)
	}
	for _, c := range in.Clusters {
		r.clusters = append(r.clusters, c.Name+" "+c.Type)
	}
	for _, rt := range in.Routes {
		r.routes = append(r.routes, rt.Config+" "+rt.Name+" "+rt.Cluster)
	}
	for _, e := range in.Endpoints {
		r.endpoints = append(r.endpoints, e.Cluster+" "+e.Address+" "+e.Health+" "+e.Locality)
	}
	for _, l := range [][]string{r.listeners, r.clusters, r.routes, r.endpoints} {
		sort.Strings(l)
	}
	return r
}

// diffLines says how two clients' lines differ ("" when they do not).
func diffLines(a, b adsResult) string {
	var out []string
	for _, c := range []struct {
		name string
		x, y []string
	}{{"listeners", a.listeners, b.listeners}, {"clusters", a.clusters, b.clusters}, {"routes", a.routes, b.routes}, {"endpoints", a.endpoints, b.endpoints}} {
		if !slices.Equal(c.x, c.y) {
			out = append(out, fmt.Sprintf("%s: inspect %q, ADS %q", c.name, c.x, c.y))
		}
	}
	return strings.Join(out, "\n")
}

// diffSummary compares the readable sections of two Inspects as JSON.
func diffSummary(a, b meshctl.Inspect) string {
	var out []string
	for _, c := range []struct {
		name string
		x, y any
	}{{"listeners", a.Listeners, b.Listeners}, {"routes", a.Routes, b.Routes}, {"clusters", a.Clusters, b.Clusters}, {"endpoints", a.Endpoints, b.Endpoints}} {
		x, _ := json.Marshal(c.x)
		y, _ := json.Marshal(c.y)
		if string(x) != string(y) {
			out = append(out, fmt.Sprintf("%s:\n  inspect %s\n  ADS     %s", c.name, x, y))
		}
	}
	return strings.Join(out, "\n")
}
