package routematch_test

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshvm/mesh/routematch"
	"github.com/meshvm/mesh/wire"
	"github.com/meshvm/mesh/wire/wiretest"
)

func pct(n uint32, d typev3.FractionalPercent_DenominatorType) *typev3.FractionalPercent {
	return &typev3.FractionalPercent{Numerator: n, Denominator: d}
}

func withFault(r *routev3.Route, f proto.Message) *routev3.Route {
	a, err := anypb.New(f)
	if err != nil {
		panic(err)
	}
	r.TypedPerFilterConfig = map[string]*anypb.Any{routematch.FaultFilter: a}
	return r
}

func TestFaultCompiles(t *testing.T) {
	delay := &faultcommonv3.FaultDelay{
		FaultDelaySecifier: &faultcommonv3.FaultDelay_FixedDelay{FixedDelay: durationpb.New(250 * time.Millisecond)},
		Percentage:         pct(25, typev3.FractionalPercent_HUNDRED),
	}
	abort := &faultv3.FaultAbort{ErrorType: &faultv3.FaultAbort_HttpStatus{HttpStatus: 503}, Percentage: pct(1500, typev3.FractionalPercent_TEN_THOUSAND)}
	hf := &faultv3.HTTPFault{Delay: delay, Abort: abort,
		Headers:         []*routev3.HeaderMatcher{{Name: "x-chaos", HeaderMatchSpecifier: &routev3.HeaderMatcher_ExactMatch{ExactMatch: "on"}}},
		MaxActiveFaults: wrapperspb.UInt32(2)}
	f := one(t, withFault(prefix("/", "orders"), hf)).Fault
	if f == nil {
		t.Fatal("no fault compiled")
	}
	if f.Delay != 250*time.Millisecond || f.DelayFraction != (routematch.Fraction{Numerator: 25, Denominator: 100}) ||
		f.AbortStatus != 503 || f.AbortGRPC != -1 || f.AbortFraction != (routematch.Fraction{Numerator: 1500, Denominator: 10000}) || f.MaxActive != 2 {
		t.Errorf("fault %+v", f)
	}
	if f.Applies(req("GET", "/"), "orders") || !f.Applies(req("GET", "/", "X-Chaos", "on"), "orders") {
		t.Error("the header condition is not applied")
	}
	if !f.Begin() || !f.Begin() || f.Begin() {
		t.Error("max_active_faults 2 is not a bound of 2")
	}
	f.End()
	if !f.Begin() {
		t.Error("a slot ended is not free again")
	}

	// gRPC abort, in a FilterConfig wrapper; the virtual host's fault is
	// the route's when the route has none.
	g := &faultv3.HTTPFault{Abort: &faultv3.FaultAbort{ErrorType: &faultv3.FaultAbort_GrpcStatus{GrpcStatus: 14}, Percentage: pct(1, typev3.FractionalPercent_HUNDRED)}}
	ga, _ := anypb.New(g)
	fc, _ := anypb.New(&routev3.FilterConfig{Config: ga})
	v := vhost("v", []string{"*"}, prefix("/", "orders"))
	v.TypedPerFilterConfig = map[string]*anypb.Any{routematch.FaultFilter: fc}
	gf := compile(t, v).VirtualHosts()[0].Routes[0].Fault
	if gf == nil || gf.AbortGRPC != 14 || gf.AbortStatus != http.StatusOK || gf.DelayFraction.Numerator != 0 {
		t.Errorf("gRPC fault %+v", gf)
	}
	// A disabled FilterConfig, and an empty HTTPFault, inject nothing.
	off, _ := anypb.New(&routev3.FilterConfig{Config: ga, Disabled: true})
	r := prefix("/", "orders")
	r.TypedPerFilterConfig = map[string]*anypb.Any{routematch.FaultFilter: off}
	if one(t, r).Fault != nil {
		t.Error("a disabled fault config injects")
	}
	if one(t, withFault(prefix("/", "orders"), &faultv3.HTTPFault{})).Fault != nil {
		t.Error("an empty HTTPFault injects")
	}
}

func TestFractionHit(t *testing.T) {
	for _, tc := range []struct {
		f    routematch.Fraction
		want int // of 1,000,000 consecutive numbers
	}{
		{routematch.Fraction{Numerator: 10, Denominator: 100}, 100000},
		{routematch.Fraction{Numerator: 5, Denominator: 10000}, 500},
		{routematch.Fraction{Numerator: 1, Denominator: 1000000}, 1},
		{routematch.Fraction{Numerator: 200, Denominator: 100}, 1000000}, // over: all
		{routematch.Fraction{}, 0},
	} {
		n := 0
		for r := range uint64(1000000) {
			if tc.f.Hit(r) {
				n++
			}
		}
		if n != tc.want {
			t.Errorf("%v: %d hits, want %d", tc.f, n, tc.want)
		}
	}
}

func TestMirrorsCompile(t *testing.T) {
	r := prefix("/", "orders")
	r.GetRoute().RequestMirrorPolicies = []*routev3.RouteAction_RequestMirrorPolicy{
		{Cluster: "orders/v2", RuntimeFraction: &corev3.RuntimeFractionalPercent{DefaultValue: pct(20, typev3.FractionalPercent_HUNDRED)}},
		{Cluster: "audit", DisableShadowHostSuffixAppend: true},
	}
	got := one(t, r).Mirrors
	want := []routematch.Mirror{
		{Cluster: "orders/v2", Fraction: routematch.Fraction{Numerator: 20, Denominator: 100}},
		{Cluster: "audit", Fraction: routematch.All, NoHostSuffix: true},
	}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("mirrors %+v, want %+v", got, want)
	}
	for host, want := range map[string]string{"orders": "orders-shadow", "orders:8080": "orders-shadow:8080", "[::1]:80": "[::1]-shadow:80"} {
		if got := routematch.ShadowHost(host); got != want {
			t.Errorf("ShadowHost(%q) = %q, want %q", host, got, want)
		}
	}
}

func hashRoute(t *testing.T, ps ...*routev3.RouteAction_HashPolicy) *routematch.Route {
	r := prefix("/", "orders")
	r.GetRoute().HashPolicy = ps
	return one(t, r)
}

func header(name string) *routev3.RouteAction_HashPolicy {
	return &routev3.RouteAction_HashPolicy{PolicySpecifier: &routev3.RouteAction_HashPolicy_Header_{Header: &routev3.RouteAction_HashPolicy_Header{HeaderName: name}}}
}

func TestRequestHash(t *testing.T) {
	sourceIP := &routev3.RouteAction_HashPolicy{PolicySpecifier: &routev3.RouteAction_HashPolicy_ConnectionProperties_{
		ConnectionProperties: &routev3.RouteAction_HashPolicy_ConnectionProperties{SourceIp: true}}}
	cookie := &routev3.RouteAction_HashPolicy{PolicySpecifier: &routev3.RouteAction_HashPolicy_Cookie_{
		Cookie: &routev3.RouteAction_HashPolicy_Cookie{Name: "session"}}}
	x := xxhash.Sum64String
	rot := func(h uint64) uint64 { return h<<1 | h>>63 }

	rt := hashRoute(t, header("x-user"))
	if h, ok, _ := rt.Hash(req("GET", "/", "X-User", "alice"), "127.0.0.1:5000"); !ok || h != x("alice") {
		t.Errorf("header hash %x %v, want xxHash64(alice)", h, ok)
	}
	if _, ok, _ := rt.Hash(req("GET", "/"), "127.0.0.1:5000"); ok {
		t.Error("a request without the header has a hash")
	}
	// Several values: sorted, so their order does not matter.
	a, _, _ := rt.Hash(req("GET", "/", "X-User", "b", "X-User", "a"), "")
	b, _, _ := rt.Hash(req("GET", "/", "X-User", "a", "X-User", "b"), "")
	if a != b || a != x("ab") {
		t.Errorf("multi-value hashes %x %x, want both xxHash64(ab)", a, b)
	}

	rt = hashRoute(t, sourceIP)
	if h, ok, _ := rt.Hash(req("GET", "/"), "127.0.0.9:41234"); !ok || h != x("127.0.0.9") {
		t.Errorf("source ip hash %x %v", h, ok)
	}

	// Folded in order; a terminal policy that yielded a hash ends it.
	rt = hashRoute(t, header("x-a"), header("x-b"))
	if h, _, _ := rt.Hash(req("GET", "/", "X-A", "1", "X-B", "2"), ""); h != rot(x("1"))^x("2") {
		t.Errorf("two policies %x, want rotl(h1)^h2", h)
	}
	term := header("x-a")
	term.Terminal = true
	rt = hashRoute(t, term, header("x-b"))
	if h, _, _ := rt.Hash(req("GET", "/", "X-A", "1", "X-B", "2"), ""); h != x("1") {
		t.Errorf("terminal policy went on: %x", h)
	}
	if h, _, _ := rt.Hash(req("GET", "/", "X-B", "2"), ""); h != x("2") {
		t.Errorf("a terminal policy that yielded nothing stopped the list: %x", h)
	}

	rt = hashRoute(t, cookie)
	r := req("GET", "/")
	r.AddCookie(&http.Cookie{Name: "session", Value: "s-42"})
	if h, ok, set := rt.Hash(r, ""); !ok || h != x("s-42") || set != nil {
		t.Errorf("cookie hash %x %v %v", h, ok, set)
	}
	if _, ok, set := rt.Hash(req("GET", "/"), "127.0.0.1:1"); ok || set != nil {
		t.Error("a cookie without ttl was generated")
	}
	// With a ttl, an absent cookie is generated, and the hash is the
	// generated value's, so the next request with it goes to the same place.
	withTTL := &routev3.RouteAction_HashPolicy{PolicySpecifier: &routev3.RouteAction_HashPolicy_Cookie_{
		Cookie: &routev3.RouteAction_HashPolicy_Cookie{Name: "session", Ttl: durationpb.New(time.Hour), Path: "/"}}}
	rt = hashRoute(t, withTTL)
	h, ok, set := rt.Hash(req("GET", "/"), "127.0.0.1:1234")
	if !ok || set == nil || set.MaxAge != 3600 || set.Path != "/" || h != x(set.Value) {
		t.Fatalf("generated cookie %+v, hash %x %v", set, h, ok)
	}
	if !strings.Contains(set.String(), "session="+set.Value) {
		t.Errorf("Set-Cookie %q", set.String())
	}
	if _, err := strconv.ParseUint(set.Value, 16, 64); err != nil {
		t.Errorf("generated value %q is not hex", set.Value)
	}
}

func TestTrafficCompileErrors(t *testing.T) {
	for _, c := range []struct {
		name  string
		route func() *routev3.Route
		want  string
	}{
		{"abort status", func() *routev3.Route {
			return withFault(prefix("/", "c"), &faultv3.HTTPFault{Abort: &faultv3.FaultAbort{ErrorType: &faultv3.FaultAbort_HttpStatus{HttpStatus: 99}}})
		}, `typed_per_filter_config[envoy.filters.http.fault]: abort.http_status: 99, want 200-599`},
		{"header abort", func() *routev3.Route {
			return withFault(prefix("/", "c"), &faultv3.HTTPFault{Abort: &faultv3.FaultAbort{ErrorType: &faultv3.FaultAbort_HeaderAbort_{HeaderAbort: &faultv3.FaultAbort_HeaderAbort{}}}})
		}, `abort.header_abort: not supported`},
		{"delay without duration", func() *routev3.Route {
			return withFault(prefix("/", "c"), &faultv3.HTTPFault{Delay: &faultcommonv3.FaultDelay{Percentage: pct(1, typev3.FractionalPercent_HUNDRED)}})
		}, `delay.fixed_delay: missing`},
		{"not an HTTPFault", func() *routev3.Route { return withFault(prefix("/", "c"), &routev3.Route{}) }, `want an HTTPFault`},
		{"mirror without cluster", func() *routev3.Route {
			r := prefix("/", "c")
			r.GetRoute().RequestMirrorPolicies = []*routev3.RouteAction_RequestMirrorPolicy{{}}
			return r
		}, `request_mirror_policies[0]: cluster: empty`},
		{"filter state hash", func() *routev3.Route {
			r := prefix("/", "c")
			r.GetRoute().HashPolicy = []*routev3.RouteAction_HashPolicy{{PolicySpecifier: &routev3.RouteAction_HashPolicy_FilterState_{}}}
			return r
		}, `hash_policy[0].filter_state: not supported`},
		{"hash header empty", func() *routev3.Route {
			r := prefix("/", "c")
			r.GetRoute().HashPolicy = []*routev3.RouteAction_HashPolicy{header("")}
			return r
		}, `hash_policy[0].header.header_name: "" is not supported`},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := c.route()
			r.Name = "r1"
			_, err := routematch.Compile(&routev3.RouteConfiguration{VirtualHosts: []*routev3.VirtualHost{vhost("shop", []string{"shop"}, r)}})
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), `routes[0] "r1"`) {
				t.Errorf("got %v, want an error naming the route and containing %q", err, c.want)
			}
		})
	}
}

// What mesh control sends for issue 17's model (wire/testdata's
// agent-traffic golden, written by controlplane/translate) compiles: the
// canary's mirror, the fault route's delay and abort, the hash policies.
func TestTrafficGoldenCompiles(t *testing.T) {
	res := wiretest.Load(t, wiretest.AgentTraffic)
	tb, err := routematch.Compile(res.Routes[wire.OutboundRoute])
	if err != nil {
		t.Fatal(err)
	}
	routes := map[string]*routematch.Route{}
	for _, vh := range tb.VirtualHosts() {
		if vh.Name == "orders" {
			for _, rt := range vh.Routes {
				routes[rt.Name] = rt
			}
		}
	}
	if c := routes["canary"]; c == nil || len(c.Mirrors) != 1 || c.Mirrors[0].Cluster != "orders/v2" || c.Mirrors[0].Fraction.String() != "5%" {
		t.Errorf("canary route %+v", c)
	}
	f := routes["fault"]
	if f == nil || f.Fault == nil || f.Fault.Delay != time.Second || f.Fault.AbortStatus != 503 {
		t.Fatalf("fault route %+v", f)
	}
	if f.Fault.Applies(req("GET", "/"), "orders") || !f.Fault.Applies(req("GET", "/", "X-Fault", "1"), "orders") {
		t.Error("the fault route's header condition")
	}
	if g := routes["grpc-fault"]; g == nil || g.Fault == nil || g.Fault.AbortGRPC != 14 {
		t.Errorf("grpc-fault route %+v", g)
	}
	if len(routes["orders"].HashPolicies) == 0 {
		t.Error("the catch-all route has no hash policy")
	}
}
