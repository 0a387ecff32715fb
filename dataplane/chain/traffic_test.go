package chain_test

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/dataplane/chain"
	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/dataplane/proxy"
	"github.com/meshvm/mesh/dataplane/table"
	"github.com/meshvm/mesh/observability"
	"github.com/meshvm/mesh/routematch"
)

// routedCaller is agent A with routes: an outbound listener over a table
// whose services carry compiled routes, and metrics.
type routedCaller struct {
	outbound string
	sw       *chain.Switch
	st       *chain.State
	fwd      *proxy.Forwarder
	reg      *prometheus.Registry
}

func startRoutedCaller(t testing.TB, tbl *table.Table) *routedCaller {
	t.Helper()
	c := &routedCaller{reg: prometheus.NewRegistry()}
	m, err := observability.NewMetrics(c.reg)
	if err != nil {
		t.Fatal(err)
	}
	c.fwd = proxy.NewForwarder(proxy.Options{Log: zerolog.Nop(), ConnectTimeout: 500 * time.Millisecond})
	t.Cleanup(c.fwd.CloseIdleConnections)
	c.st = chain.NewState(nil).WithMetrics(m)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = c.st.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	c.sw = chain.NewSwitch(c.compile(t, tbl))
	c.outbound = serve(t, hostA, c.sw.Outbound())
	return c
}

func (c *routedCaller) compile(t testing.TB, tbl *table.Table) *chain.Handlers {
	t.Helper()
	h, err := chain.Compile(tbl, nil, chain.Local{Service: "web"}, c.fwd, c.st, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// routesOf compiles routes as the virtual host of service.
func routesOf(t testing.TB, service string, routes ...*routev3.Route) *routematch.VirtualHost {
	t.Helper()
	tb, err := routematch.Compile(&routev3.RouteConfiguration{Name: "test", VirtualHosts: []*routev3.VirtualHost{
		{Name: service, Domains: []string{"*"}, Routes: routes}}})
	if err != nil {
		t.Fatal(err)
	}
	return tb.VirtualHosts()[0]
}

func toCluster(name, prefix, cluster string) *routev3.Route {
	return &routev3.Route{Name: name, Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: prefix}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster}}}}
}

func percent(n uint32) *typev3.FractionalPercent {
	return &typev3.FractionalPercent{Numerator: n, Denominator: typev3.FractionalPercent_HUNDRED}
}

func withFault(t testing.TB, r *routev3.Route, f *faultv3.HTTPFault) *routev3.Route {
	a, err := anypb.New(f)
	if err != nil {
		t.Fatal(err)
	}
	r.TypedPerFilterConfig = map[string]*anypb.Any{routematch.FaultFilter: a}
	return r
}

func abort(status uint32, pct uint32) *faultv3.FaultAbort {
	return &faultv3.FaultAbort{ErrorType: &faultv3.FaultAbort_HttpStatus{HttpStatus: status}, Percentage: percent(pct)}
}

// ordersTable is a table with orders (endpoints: callees) whose virtual
// host is vh, and the extra services.
func ordersTable(vh *routematch.VirtualHost, p config.Policy, callees []*callee, extra ...*table.Service) *table.Table {
	eps := make([]endpoint.Endpoint, 0, len(callees))
	for _, c := range callees {
		eps = append(eps, endpoint.Endpoint{Addr: c.inbound})
	}
	tbl := &table.Table{Version: "1", Static: true, Default: config.DefaultPolicy(), Services: map[string]*table.Service{
		"orders": {Name: "orders", Policy: p, Endpoints: eps, Routes: vh},
	}}
	for _, s := range extra {
		tbl.Services[s.Name] = s
	}
	return tbl
}

func within(t *testing.T, what string, got, n int, want, tol float64) {
	t.Helper()
	f := float64(got) / float64(n)
	t.Logf("%s: %d of %d (%.1f%%, want %.0f%% ± %.0f)", what, got, n, 100*f, 100*want, 100*tol)
	if math.Abs(f-want) > tol {
		t.Errorf("%s: %.1f%% of %d requests, want %.0f%% ± %.0f%%", what, 100*f, n, 100*want, 100*tol)
	}
}

// A 20% abort: 503 fault-injected for 20% ± 3% of 5,000 requests, the
// others served by the app; counted.
func TestFaultAbortRate(t *testing.T) {
	b := startCallee(t, hostB1, "b1", "", table.Inbound{})
	vh := routesOf(t, "orders", withFault(t, toCluster("orders", "/", "orders"), &faultv3.HTTPFault{Abort: abort(503, 20)}))
	c := startRoutedCaller(t, ordersTable(vh, bare(), []*callee{b}))
	const n = 5000
	got := tally(load(client(c.outbound, 16), "http://orders/x", n, 16))
	within(t, "aborted", got["503 fault-injected"], n, 0.20, 0.03)
	if got["200"]+got["503 fault-injected"] != n {
		t.Errorf("answers %v, want only 200 and 503 fault-injected", got)
	}
	if served := b.app.served.Load(); served != int64(got["200"]) {
		t.Errorf("the app served %d, want the %d not aborted", served, got["200"])
	}
	if v := counterValue(t, c.reg, "mesh_faults_injected_total", map[string]string{"upstream_service": "orders", "fault": "abort"}); int(v) != got["503 fault-injected"] {
		t.Errorf("mesh_faults_injected_total{fault=abort} = %v, want %d", v, got["503 fault-injected"])
	}
}

// A 300ms delay for 30% of the requests: about 30% take that long, the
// rest do not wait for it.
func TestFaultDelayFraction(t *testing.T) {
	b := startCallee(t, hostB1, "b1", "", table.Inbound{})
	delay := &faultcommonv3.FaultDelay{FaultDelaySecifier: &faultcommonv3.FaultDelay_FixedDelay{FixedDelay: durationpb.New(300 * time.Millisecond)}, Percentage: percent(30)}
	vh := routesOf(t, "orders", withFault(t, toCluster("orders", "/", "orders"), &faultv3.HTTPFault{Delay: delay}))
	c := startRoutedCaller(t, ordersTable(vh, bare(), []*callee{b}))
	const n = 600
	rs := load(client(c.outbound, 50), "http://orders/x", n, 50)
	slow := 0
	for _, r := range rs {
		if r.status != 200 {
			t.Fatalf("answer %s, want 200", key(r))
		}
		if r.took >= 300*time.Millisecond {
			slow++
		}
	}
	// Generous: a loaded machine may make a few undelayed ones slow too.
	within(t, "delayed", slow, n, 0.30, 0.08)
	if v := counterValue(t, c.reg, "mesh_faults_injected_total", map[string]string{"upstream_service": "orders", "fault": "delay"}); math.Abs(v/n-0.30) > 0.06 {
		t.Errorf("mesh_faults_injected_total{fault=delay} = %v of %d, want about 30%%", v, n)
	}
}

// A fault with a header condition touches only the requests with the
// header; a gRPC abort is a trailers-only gRPC status.
func TestFaultOnlyWithHeader(t *testing.T) {
	b := startCallee(t, hostB1, "b1", "", table.Inbound{})
	hf := &faultv3.HTTPFault{Abort: abort(503, 100),
		Headers: []*routev3.HeaderMatcher{{Name: "x-chaos", HeaderMatchSpecifier: &routev3.HeaderMatcher_ExactMatch{ExactMatch: "on"}}}}
	grpcFault := &faultv3.HTTPFault{Abort: &faultv3.FaultAbort{ErrorType: &faultv3.FaultAbort_GrpcStatus{GrpcStatus: 14}, Percentage: percent(100)}}
	vh := routesOf(t, "orders",
		withFault(t, toCluster("grpc", "/grpc", "orders"), grpcFault),
		withFault(t, toCluster("orders", "/", "orders"), hf))
	c := startRoutedCaller(t, ordersTable(vh, bare(), []*callee{b}))
	cl := client(c.outbound, 4)
	for i := range 50 {
		if r := get(cl, "http://orders/x"); key(r) != "200" {
			t.Fatalf("request %d without the header: %s, want 200", i, key(r))
		}
		req, _ := http.NewRequest("GET", "http://orders/x", nil)
		req.Header.Set("X-Chaos", "on")
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 503 || resp.Header.Get("X-Mesh-Reason") != "fault-injected" {
			t.Fatalf("request %d with the header: %d %q, want 503 fault-injected", i, resp.StatusCode, resp.Header.Get("X-Mesh-Reason"))
		}
	}
	if b.app.served.Load() != 50 {
		t.Errorf("the app served %d, want the 50 without the header", b.app.served.Load())
	}
	resp, err := cl.Get("http://orders/grpc/x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Grpc-Status") != "14" || resp.Header.Get("X-Mesh-Reason") != "fault-injected" {
		t.Errorf("gRPC abort: %d grpc-status %q reason %q, want 200, 14, fault-injected", resp.StatusCode, resp.Header.Get("Grpc-Status"), resp.Header.Get("X-Mesh-Reason"))
	}
}

// shadowApp is a mirror cluster's app: it records the hosts and bodies
// it gets, after sleeping delay.
type shadowApp struct {
	delay  time.Duration
	served atomic.Int64
	mu     sync.Mutex
	hosts  map[string]int
	bodies []string
}

func (a *shadowApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	a.mu.Lock()
	if a.hosts == nil {
		a.hosts = map[string]int{}
	}
	a.hosts[r.Host]++
	if len(body) > 0 {
		a.bodies = append(a.bodies, string(body))
	}
	a.mu.Unlock()
	if a.delay > 0 {
		sleep(r.Context(), a.delay)
	}
	a.served.Add(1)
	_, _ = io.WriteString(w, "shadow")
}

func mirrored(r *routev3.Route, cluster string, pct uint32) *routev3.Route {
	r.GetRoute().RequestMirrorPolicies = []*routev3.RouteAction_RequestMirrorPolicy{{Cluster: cluster,
		RuntimeFraction: &corev3.RuntimeFractionalPercent{DefaultValue: percent(pct)}}}
	return r
}

// The mirror cluster gets ~the configured fraction of the requests, with
// the Host suffixed -shadow and the body; the caller sees only the
// primary's answers.
func TestMirrorFraction(t *testing.T) {
	b := startCallee(t, hostB1, "b1", "", table.Inbound{})
	shadow := &shadowApp{}
	shadowAddr := serve(t, hostB2, shadow)
	vh := routesOf(t, "orders", mirrored(toCluster("orders", "/", "orders"), "orders/v2", 40))
	tbl := ordersTable(vh, bare(), []*callee{b}, &table.Service{Name: "orders/v2", Policy: bare(), Endpoints: []endpoint.Endpoint{{Addr: shadowAddr}}})
	c := startRoutedCaller(t, tbl)
	const n = 1000
	got := tally(load(client(c.outbound, 8), "http://orders/x", n, 8))
	if got["200"] != n {
		t.Fatalf("answers %v, want %d 200", got, n)
	}
	eventually(t, 10*time.Second, "mirrored copies all answered", func() bool {
		return counterValue(t, c.reg, "mesh_mirror_requests_total", map[string]string{"upstream_service": "orders/v2", "result": "sent"}) == float64(shadow.served.Load())
	})
	within(t, "mirrored", int(shadow.served.Load()), n, 0.40, 0.05)
	shadow.mu.Lock()
	hosts := shadow.hosts
	shadow.mu.Unlock()
	if len(hosts) != 1 || hosts["orders-shadow"] == 0 {
		t.Errorf("the mirror saw hosts %v, want only orders-shadow", hosts)
	}

	// A body is copied too.
	cl := client(c.outbound, 1)
	for range 20 {
		resp, err := cl.Post("http://orders/x", "text/plain", strings.NewReader("order-42"))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	eventually(t, 5*time.Second, "a mirrored body", func() bool {
		shadow.mu.Lock()
		defer shadow.mu.Unlock()
		return slices.Contains(shadow.bodies, "order-42")
	})
}

// A mirror that takes 1s slows nothing: the primary's p99 with the mirror
// on is within noise of the p99 with it off, in the same test; the copies
// over 64 in flight are dropped and counted.
func TestSlowMirrorDoesNotSlowThePrimary(t *testing.T) {
	b := startCallee(t, hostB1, "b1", "", table.Inbound{})
	shadow := &shadowApp{delay: time.Second}
	shadowAddr := serve(t, hostB2, shadow)
	v2 := &table.Service{Name: "orders/v2", Policy: bare(), Endpoints: []endpoint.Endpoint{{Addr: shadowAddr}}}
	on := ordersTable(routesOf(t, "orders", mirrored(toCluster("orders", "/", "orders"), "orders/v2", 100)), bare(), []*callee{b}, v2)
	off := ordersTable(routesOf(t, "orders", toCluster("orders", "/", "orders")), bare(), []*callee{b}, v2)
	c := startRoutedCaller(t, off)
	cl := client(c.outbound, 8)
	p99 := func() time.Duration {
		rs := load(cl, "http://orders/x", 400, 8)
		var ds []time.Duration
		for _, r := range rs {
			if key(r) != "200" {
				t.Fatalf("answer %s, want 200", key(r))
			}
			ds = append(ds, r.took)
		}
		return percentile(ds, 0.99)
	}
	var offs, ons []time.Duration
	for range 2 { // alternated
		c.sw.Swap(c.compile(t, off))
		offs = append(offs, p99())
		c.sw.Swap(c.compile(t, on))
		ons = append(ons, p99())
	}
	// The best run of each (noise only adds); the copies cost the
	// shared CPU something, but the primary never waits for the mirror.
	offP, onP := slices.Min(offs), slices.Min(ons)
	t.Logf("primary p99: mirror off %v, mirror on (1s mirror) %v", offs, ons)
	if onP > 2*offP+150*time.Millisecond || slices.Max(ons) >= time.Second {
		t.Errorf("p99 with a 1s mirror %v, without %v: the mirror slows the primary", ons, offs)
	}
	dropped := counterValue(t, c.reg, "mesh_mirror_requests_total", map[string]string{"upstream_service": "orders/v2", "result": "dropped"})
	if dropped == 0 {
		t.Error("no copy dropped with 800 requests against 64 copies in flight of 1s each")
	}
	copies := func(result string) float64 {
		return counterValue(t, c.reg, "mesh_mirror_requests_total", map[string]string{"upstream_service": "orders/v2", "result": result})
	}
	eventually(t, 10*time.Second, "every copy sent or dropped", func() bool {
		return copies("sent")+copies("dropped")+copies("failed") == 800 // 2 runs of 400, all mirrored
	})
	if copies("failed") != 0 || copies("sent") != float64(shadow.served.Load()) {
		t.Errorf("%v copies failed, %v sent, the mirror answered %d", copies("failed"), copies("sent"), shadow.served.Load())
	}
	t.Logf("copies: %d sent, %v dropped", shadow.served.Load(), dropped)
}

// A ring hash or Maglev cluster with a header hash policy keeps each key
// on one instance; requests without the header spread.
func TestHashKeepsAHeaderOnOneInstance(t *testing.T) {
	bs := []*callee{
		startCallee(t, hostB1, "b1", "", table.Inbound{}),
		startCallee(t, hostB2, "b2", "", table.Inbound{}),
		startCallee(t, hostB3, "b3", "", table.Inbound{}),
	}
	for _, lb := range []string{"ring_hash", "maglev"} {
		t.Run(lb, func(t *testing.T) {
			r := toCluster("orders", "/", "orders")
			r.GetRoute().HashPolicy = []*routev3.RouteAction_HashPolicy{{PolicySpecifier: &routev3.RouteAction_HashPolicy_Header_{
				Header: &routev3.RouteAction_HashPolicy_Header{HeaderName: "x-user"}}}}
			p := bare()
			p.LoadBalancer.Policy = lb
			c := startRoutedCaller(t, ordersTable(routesOf(t, "orders", r), p, bs))
			cl := client(c.outbound, 4)
			seen := map[string]bool{}
			for u := range 20 {
				user := fmt.Sprintf("user-%d", u)
				first := ""
				for range 10 {
					req, _ := http.NewRequest("GET", "http://orders/x", nil)
					req.Header.Set("X-User", user)
					resp, err := cl.Do(req)
					if err != nil {
						t.Fatal(err)
					}
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if first == "" {
						first = string(body)
					} else if string(body) != first {
						t.Fatalf("%s went to %s, then %s", user, first, body)
					}
				}
				seen[first] = true
			}
			if len(seen) < 2 {
				t.Errorf("20 users all on %v", seen)
			}
			spread := tally(load(cl, "http://orders/x", 300, 4))
			from := map[string]int{}
			for _, x := range load(cl, "http://orders/x", 300, 4) {
				from[x.from]++
			}
			if len(from) != 3 || spread["200"] != 300 {
				t.Errorf("without the header: %v from %v, want all three instances", spread, from)
			}
		})
	}
}
