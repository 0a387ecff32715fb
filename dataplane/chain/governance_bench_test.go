package chain

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/dataplane/proxy"
	"github.com/meshvm/mesh/dataplane/table"
	"github.com/meshvm/mesh/governance/outlier"
	"github.com/meshvm/mesh/routematch"
)

// benchHandlers compiles a static table whose service "b" has three
// endpoints (nothing listens: these benchmarks never send) under the
// default policy (15s route timeout) with locality-aware least request and
// perTry as its per-try timeout, and an inbound rate limit that always
// admits.
func benchHandlers(b *testing.B, perTry time.Duration) *Handlers {
	p := config.DefaultPolicy()
	p.Retries.PerTryTimeout = perTry
	p.LoadBalancer = config.LoadBalancer{Policy: "least_request", LocalityAware: true}
	eps := []endpoint.Endpoint{{Addr: "127.0.0.42:1", Zone: "a"}, {Addr: "127.0.0.43:1", Zone: "a"}, {Addr: "127.0.0.44:1", Zone: "b"}}
	tbl := &table.Table{Version: "bench", Static: true, Default: p,
		Services: map[string]*table.Service{"b": {Name: "b", Policy: p, Endpoints: eps}},
		Inbound: table.Inbound{
			RateLimit:   config.RateLimit{MaxTokens: 1 << 40, TokensPerFill: 1 << 19, FillInterval: time.Millisecond},
			MaxRequests: 1 << 20,
		}}
	h, err := Compile(tbl, nil, Local{Service: "a", Zone: "a"}, proxy.NewForwarder(proxy.Options{}), NewState(nil), zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	return h
}

// outboundGovernance is what serve and exchange do for a request that
// succeeds at its first try, minus sending it: endpoints, max_requests,
// breaker, pick, max_pending, in-flight count, outlier and breaker
// reports.
func outboundGovernance(h *Handlers, ctx context.Context) {
	u, _ := h.lookup(ctx, "b")
	set, _ := u.endpoints(ctx)
	svc := u.svc
	if !svc.limits.Requests.Acquire() {
		panic("overflow")
	}
	permit, _ := svc.breaker.Allow()
	i := set.pick(-1)
	hst := set.hosts[i]
	svc.limits.Pending.Acquire()
	hst.active.Add(1)
	// ... Send: the response headers arrive ...
	svc.limits.Pending.Release()
	// ... Relay ...
	hst.active.Add(-1)
	svc.detector.Report(&hst.Host, outlier.Classify(effectiveStatus(200, grpcStatus(http.Header{})), false))
	svc.breaker.Report(permit, true)
	svc.limits.Requests.Release()
}

// BenchmarkGovernance is the governance layer alone, no network: the
// caller side and the callee side of one request, and the caller side
// with the deadline context of its one try (what a timeout costs: the
// route deadline, or the earlier of the route and per-try deadlines).
func BenchmarkGovernance(b *testing.B) {
	h := benchHandlers(b, 5*time.Second)
	ctx := context.Background()
	b.Run("outbound", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			outboundGovernance(h, ctx)
		}
	})
	b.Run("outbound-parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				outboundGovernance(h, ctx)
			}
		})
	})
	b.Run("outbound+route-timeout", func(b *testing.B) {
		b.ReportAllocs()
		h := benchHandlers(b, 0)
		u := h.services["b"]
		for b.Loop() {
			deadline := time.Now().Add(u.pol.timeout)
			tctx, cancel := u.tryContext(ctx, deadline)
			outboundGovernance(h, tctx)
			cancel()
		}
	})
	b.Run("outbound+route+per-try-timeouts", func(b *testing.B) {
		b.ReportAllocs()
		u := h.services["b"]
		for b.Loop() {
			deadline := time.Now().Add(u.pol.timeout)
			tctx, cancel := u.tryContext(ctx, deadline)
			outboundGovernance(h, tctx)
			cancel()
		}
	})
	b.Run("inbound", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if ok, _ := h.bucket.Allow(); !ok {
				b.Fatal("refused")
			}
			if !h.st.inLimit.Acquire() {
				b.Fatal("overflow")
			}
			h.st.inLimit.Release()
		}
	})
}

// okStep ends a path without sending: it picks an endpoint as tries does
// and reports a success.
type okStep struct{}

func (okStep) Name() string { return "ok" }

func (okStep) Serve(x *Exchange, _ Next) error {
	i := x.set.pick(-1)
	hst := x.set.hosts[i]
	hst.active.Add(1)
	hst.active.Add(-1)
	x.outcome = succeeded
	return nil
}

type nopWriter struct{ h http.Header }

func (w nopWriter) Header() http.Header         { return w.h }
func (w nopWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w nopWriter) WriteHeader(int)             {}

// BenchmarkPath runs the compiled outbound path (routing by Host, then
// endpoints, max-requests, circuit-breaker, route-timeout) with a final
// step that does not send, and the inbound path's policies: what the
// composition of named steps costs per request (no allocation).
func BenchmarkPath(b *testing.B) {
	steps := DefaultSteps()
	steps.Outbound[len(steps.Outbound)-1] = OutboundBuilder{Name: "ok", Build: func(*UpstreamTarget) (Step, error) { return okStep{}, nil }}
	steps.Inbound = steps.Inbound[:len(steps.Inbound)-1]
	p := config.DefaultPolicy()
	p.Timeout = 0 // the deadline's own cost is in BenchmarkGovernance
	eps := []endpoint.Endpoint{{Addr: "127.0.0.42:1", Zone: "a"}, {Addr: "127.0.0.43:1", Zone: "a"}}
	tbl := &table.Table{Version: "bench", Static: true, Default: p,
		Services: map[string]*table.Service{"b": {Name: "b", Policy: p, Endpoints: eps}},
		Inbound: table.Inbound{
			RateLimit:   config.RateLimit{MaxTokens: 1 << 40, TokensPerFill: 1 << 19, FillInterval: time.Millisecond},
			MaxRequests: 1 << 20,
		}}
	h, err := CompileSteps(tbl, nil, Local{Service: "a"}, proxy.NewForwarder(proxy.Options{}), NewState(nil), zerolog.Nop(), steps)
	if err != nil {
		b.Fatal(err)
	}
	w := nopWriter{h: http.Header{}}
	r, _ := http.NewRequest(http.MethodGet, "http://b/x", nil)
	b.Run("outbound", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			h.serveOutbound(w, r)
		}
	})
	b.Run("inbound", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			h.serveInbound(w, r, "127.0.0.1:1")
		}
	})
}

// BenchmarkRouteStep is the outbound path of BenchmarkPath for a service
// with n routes (issue 17's route-matching benchmark, through the agent's
// route step): the request matches the last one, the worst case of
// Envoy's first-match order, a 90/10 split over two subsets whose paths
// then run (endpoints, max-requests, circuit-breaker). routes=0 is the
// service without routes (no route step), BenchmarkPath's case.
func BenchmarkRouteStep(b *testing.B) {
	for _, n := range []int{0, 1, 10, 100} {
		b.Run(fmt.Sprintf("routes=%d", n), func(b *testing.B) {
			steps := DefaultSteps()
			steps.Outbound[len(steps.Outbound)-1] = OutboundBuilder{Name: "ok", Build: func(*UpstreamTarget) (Step, error) { return okStep{}, nil }}
			p := config.DefaultPolicy()
			p.Timeout = 0
			eps := []endpoint.Endpoint{{Addr: "127.0.0.42:1", Zone: "a"}, {Addr: "127.0.0.43:1", Zone: "a"}}
			tbl := &table.Table{Version: "bench", Static: true, Default: p, Services: map[string]*table.Service{
				"b":    {Name: "b", Policy: p, Endpoints: eps},
				"b/v1": {Name: "b/v1", Policy: p, Endpoints: eps[:1]},
				"b/v2": {Name: "b/v2", Policy: p, Endpoints: eps[1:]},
			}}
			if n > 0 {
				tbl.Services["b"].Routes = benchRoutes(b, n)
			}
			h, err := CompileSteps(tbl, nil, Local{Service: "a"}, proxy.NewForwarder(proxy.Options{}), NewState(nil), zerolog.Nop(), steps)
			if err != nil {
				b.Fatal(err)
			}
			w := nopWriter{h: http.Header{}}
			r, _ := http.NewRequest(http.MethodGet, "http://b/api/orders/42?v=2", nil)
			r.Header.Set("X-Tester", "1")
			b.ReportAllocs()
			for b.Loop() {
				h.serveOutbound(w, r)
			}
		})
	}
}

// benchRoutes is a virtual host of n routes whose last one matches
// BenchmarkRouteStep's request (as routematch's BenchmarkMatch).
func benchRoutes(b *testing.B, n int) *routematch.VirtualHost {
	prefix := func(p string) *routev3.RouteMatch {
		return &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: p}}
	}
	get := &routev3.HeaderMatcher{Name: ":method", HeaderMatchSpecifier: &routev3.HeaderMatcher_ExactMatch{ExactMatch: "GET"}}
	var routes []*routev3.Route
	for i := range n - 1 {
		routes = append(routes, &routev3.Route{Name: fmt.Sprintf("r%d", i), Match: &routev3.RouteMatch{
			PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: fmt.Sprintf("/svc%d/", i)}, Headers: []*routev3.HeaderMatcher{get},
		}, Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "b"}}}})
	}
	last := prefix("/api/orders")
	last.Headers = []*routev3.HeaderMatcher{get, {Name: "x-tester", HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}}}
	last.QueryParameters = []*routev3.QueryParameterMatcher{{Name: "v"}}
	routes = append(routes, &routev3.Route{Name: "canary", Match: last, Action: &routev3.Route_Route{Route: &routev3.RouteAction{
		ClusterSpecifier: &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{Clusters: []*routev3.WeightedCluster_ClusterWeight{
			{Name: "b/v1", Weight: wrapperspb.UInt32(90)}, {Name: "b/v2", Weight: wrapperspb.UInt32(10)},
		}}},
	}}})
	tb, err := routematch.Compile(&routev3.RouteConfiguration{VirtualHosts: []*routev3.VirtualHost{{Name: "b", Domains: []string{"b"}, Routes: routes}}})
	if err != nil {
		b.Fatal(err)
	}
	return tb.VirtualHosts()[0]
}
