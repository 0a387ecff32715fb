package routematch_test

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshvm/mesh/routematch"
)

func prefix(p, cluster string) *routev3.Route {
	return &routev3.Route{Name: cluster, Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: p}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster}}}}
}

func vhost(name string, domains []string, routes ...*routev3.Route) *routev3.VirtualHost {
	return &routev3.VirtualHost{Name: name, Domains: domains, Routes: routes}
}

func compile(t testing.TB, vhs ...*routev3.VirtualHost) *routematch.Table {
	t.Helper()
	tb, err := routematch.Compile(&routev3.RouteConfiguration{Name: "test", VirtualHosts: vhs})
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

func req(method, target string, hdr ...string) *http.Request {
	r := httptest.NewRequest(method, target, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		if strings.EqualFold(hdr[i], "host") {
			r.Host = hdr[i+1]
			continue
		}
		r.Header.Add(hdr[i], hdr[i+1])
	}
	return r
}

func matched(tb *routematch.Table, r *http.Request) string {
	rt, ok := tb.Match(r)
	if !ok {
		return "-"
	}
	return rt.VirtualHost + "/" + rt.Name
}

func TestHostPrecedence(t *testing.T) {
	tb := compile(t,
		vhost("any", []string{"*"}, prefix("/", "a")),
		vhost("wild", []string{"*.example.com"}, prefix("/", "w")),
		vhost("deeper", []string{"*.api.example.com"}, prefix("/", "d")),
		vhost("pre", []string{"shop.*"}, prefix("/", "p")),
		vhost("exact", []string{"shop.example.com", "Other.Example.com:8443"}, prefix("/", "e")),
		vhost("port", []string{"orders:*"}, prefix("/", "o")),
	)
	for _, c := range []struct{ host, want string }{
		{"shop.example.com", "exact/e"},
		{"SHOP.example.com", "exact/e"},
		{"shop.example.com:8443", "exact/e"},  // port stripped
		{"other.example.com:8443", "exact/e"}, // domain with a port
		{"other.example.com:9000", "wild/w"},  // that port only
		{"x.example.com", "wild/w"},           // suffix wildcard
		{"a.b.example.com", "wild/w"},         // several labels
		{"v1.api.example.com", "deeper/d"},    // the longest suffix wins
		{"example.com", "any/a"},              // the wildcard needs a label
		{"shop.example.org", "pre/p"},         // prefix wildcard after suffixes
		{"shop.example.com.evil", "pre/p"},    // and not the exact one
		{"elsewhere", "any/a"},                // default
		{"[::1]:8080", "any/a"},
		{"orders:15001", "port/o"}, // a wildcard naming a port
		{"orders", "any/a"},
	} {
		if got := matched(tb, req("GET", "/", "host", c.host)); got != c.want {
			t.Errorf("host %q: got %s, want %s", c.host, got, c.want)
		}
	}
	// Without "*", an unknown host matches nothing.
	tb = compile(t, vhost("exact", []string{"shop.example.com"}, prefix("/", "e")))
	if got := matched(tb, req("GET", "/", "host", "nope")); got != "-" {
		t.Errorf("unknown host matched %s", got)
	}
}

func TestFirstMatchInOrder(t *testing.T) {
	tb := compile(t, vhost("v", []string{"*"}, prefix("/api", "broad"), prefix("/api/orders", "narrow"), prefix("/", "rest")))
	if got := matched(tb, req("GET", "/api/orders/1")); got != "v/broad" {
		t.Errorf("got %s: Envoy takes the first route that matches, not the longest", got)
	}
	if got := matched(tb, req("GET", "/other")); got != "v/rest" {
		t.Errorf("got %s", got)
	}
}

func rm(m *routev3.RouteMatch, name string) *routev3.Route {
	return &routev3.Route{Name: name, Match: m,
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: name}}}}
}

func re(s string) *matcherv3.RegexMatcher { return &matcherv3.RegexMatcher{Regex: s} }

func TestMatchKinds(t *testing.T) {
	pfx := func(p string) *routev3.RouteMatch {
		return &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: p}}
	}
	hdr := func(m *routev3.HeaderMatcher) *routev3.RouteMatch {
		x := pfx("/")
		x.Headers = []*routev3.HeaderMatcher{m}
		return x
	}
	query := func(q *routev3.QueryParameterMatcher) *routev3.RouteMatch {
		x := pfx("/")
		x.QueryParameters = []*routev3.QueryParameterMatcher{q}
		return x
	}
	sm := func(m *matcherv3.StringMatcher) *routev3.HeaderMatcher_StringMatch {
		return &routev3.HeaderMatcher_StringMatch{StringMatch: m}
	}
	cases := []struct {
		name  string
		match *routev3.RouteMatch
		yes   []*http.Request
		no    []*http.Request
	}{
		{"path exact", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/health"}},
			[]*http.Request{req("GET", "/health"), req("GET", "/health?x=1")},
			[]*http.Request{req("GET", "/health/"), req("GET", "/Health")}},
		{"path exact, case-insensitive", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/health"}, CaseSensitive: wrapperspb.Bool(false)},
			[]*http.Request{req("GET", "/HEALTH")}, []*http.Request{req("GET", "/healthz")}},
		{"prefix", pfx("/api/"), []*http.Request{req("GET", "/api/"), req("GET", "/api/x")}, []*http.Request{req("GET", "/api"), req("GET", "/API/x")}},
		{"path separated prefix", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: "/api"}},
			[]*http.Request{req("GET", "/api"), req("GET", "/api/x"), req("GET", "/api?q")}, []*http.Request{req("GET", "/apix")}},
		{"regex (whole path, RE2)", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: re(`/orders/[0-9]+`)}},
			[]*http.Request{req("GET", "/orders/42"), req("GET", "/orders/42?x")}, []*http.Request{req("GET", "/orders/42/items"), req("GET", "/x/orders/42")}},
		{"method", hdr(&routev3.HeaderMatcher{Name: ":method", HeaderMatchSpecifier: sm(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "POST"}})}),
			[]*http.Request{req("POST", "/")}, []*http.Request{req("GET", "/")}},
		{"methods by regex", hdr(&routev3.HeaderMatcher{Name: ":method", HeaderMatchSpecifier: sm(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: re("GET|HEAD")}})}),
			[]*http.Request{req("GET", "/"), req("HEAD", "/")}, []*http.Request{req("POST", "/"), req("GETX", "/")}},
		{"header exact", hdr(&routev3.HeaderMatcher{Name: "x-tester", HeaderMatchSpecifier: &routev3.HeaderMatcher_ExactMatch{ExactMatch: "yes"}}),
			[]*http.Request{req("GET", "/", "X-Tester", "yes")}, []*http.Request{req("GET", "/", "X-Tester", "no"), req("GET", "/")}},
		{"header exact, ignore case", hdr(&routev3.HeaderMatcher{Name: "x-tester", HeaderMatchSpecifier: sm(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "yes"}, IgnoreCase: true})}),
			[]*http.Request{req("GET", "/", "X-Tester", "YES")}, []*http.Request{req("GET", "/", "X-Tester", "no")}},
		{"header prefix", hdr(&routev3.HeaderMatcher{Name: "user-agent", HeaderMatchSpecifier: &routev3.HeaderMatcher_PrefixMatch{PrefixMatch: "curl/"}}),
			[]*http.Request{req("GET", "/", "User-Agent", "curl/8")}, []*http.Request{req("GET", "/", "User-Agent", "wget")}},
		{"header suffix", hdr(&routev3.HeaderMatcher{Name: "x-a", HeaderMatchSpecifier: sm(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: "-canary"}})}),
			[]*http.Request{req("GET", "/", "x-a", "v2-canary")}, []*http.Request{req("GET", "/", "x-a", "canary-v2")}},
		{"header contains", hdr(&routev3.HeaderMatcher{Name: "x-a", HeaderMatchSpecifier: sm(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Contains{Contains: "bc"}})}),
			[]*http.Request{req("GET", "/", "x-a", "abcd")}, []*http.Request{req("GET", "/", "x-a", "acbd")}},
		{"header regex", hdr(&routev3.HeaderMatcher{Name: "x-version", HeaderMatchSpecifier: &routev3.HeaderMatcher_SafeRegexMatch{SafeRegexMatch: re(`v[0-9]+`)}}),
			[]*http.Request{req("GET", "/", "x-version", "v12")}, []*http.Request{req("GET", "/", "x-version", "v12b"), req("GET", "/")}},
		{"header present", hdr(&routev3.HeaderMatcher{Name: "authorization", HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}}),
			[]*http.Request{req("GET", "/", "Authorization", "x")}, []*http.Request{req("GET", "/")}},
		{"header present (no specifier)", hdr(&routev3.HeaderMatcher{Name: "authorization"}),
			[]*http.Request{req("GET", "/", "Authorization", "")}, []*http.Request{req("GET", "/")}},
		{"header absent", hdr(&routev3.HeaderMatcher{Name: "authorization", HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: false}}),
			[]*http.Request{req("GET", "/")}, []*http.Request{req("GET", "/", "Authorization", "x")}},
		{"header inverted", hdr(&routev3.HeaderMatcher{Name: "x-env", HeaderMatchSpecifier: &routev3.HeaderMatcher_ExactMatch{ExactMatch: "prod"}, InvertMatch: true}),
			[]*http.Request{req("GET", "/", "x-env", "staging")}, []*http.Request{req("GET", "/", "x-env", "prod"), req("GET", "/")}},
		{"header missing as empty", hdr(&routev3.HeaderMatcher{Name: "x-env", HeaderMatchSpecifier: &routev3.HeaderMatcher_ExactMatch{ExactMatch: ""}, TreatMissingHeaderAsEmpty: true}),
			[]*http.Request{req("GET", "/")}, []*http.Request{req("GET", "/", "x-env", "x")}},
		{"header values joined", hdr(&routev3.HeaderMatcher{Name: "x-a", HeaderMatchSpecifier: &routev3.HeaderMatcher_ExactMatch{ExactMatch: "1,2"}}),
			[]*http.Request{req("GET", "/", "x-a", "1", "x-a", "2")}, []*http.Request{req("GET", "/", "x-a", "1")}},
		{"authority", hdr(&routev3.HeaderMatcher{Name: ":authority", HeaderMatchSpecifier: &routev3.HeaderMatcher_PrefixMatch{PrefixMatch: "shop."}}),
			[]*http.Request{req("GET", "/", "host", "shop.x")}, []*http.Request{req("GET", "/", "host", "api.x")}},
		{"query exact", query(&routev3.QueryParameterMatcher{Name: "debug", QueryParameterMatchSpecifier: &routev3.QueryParameterMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "on"}}}}),
			[]*http.Request{req("GET", "/?debug=on"), req("GET", "/?a=1&debug=on"), req("GET", "/?debug=%6Fn")}, []*http.Request{req("GET", "/?debug=off"), req("GET", "/"), req("GET", "/?xdebug=on")}},
		{"query present", query(&routev3.QueryParameterMatcher{Name: "debug", QueryParameterMatchSpecifier: &routev3.QueryParameterMatcher_PresentMatch{PresentMatch: true}}),
			[]*http.Request{req("GET", "/?debug"), req("GET", "/?debug=")}, []*http.Request{req("GET", "/?x=debug")}},
		{"grpc", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}, Grpc: &routev3.RouteMatch_GrpcRouteMatchOptions{}},
			[]*http.Request{req("POST", "/", "Content-Type", "application/grpc+proto")}, []*http.Request{req("POST", "/", "Content-Type", "application/json")}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tb := compile(t, vhost("v", []string{"*"}, rm(c.match, "hit"), prefix("/", "miss")))
			for _, r := range c.yes {
				if got := matched(tb, r); got != "v/hit" {
					t.Errorf("%s %s %v: got %s, want the route", r.Method, r.URL, r.Header, got)
				}
			}
			for _, r := range c.no {
				if got := matched(tb, r); got != "v/miss" {
					t.Errorf("%s %s %v: got %s, want no match", r.Method, r.URL, r.Header, got)
				}
			}
		})
	}
}

func weighted(ws ...any) *routev3.Route {
	var cs []*routev3.WeightedCluster_ClusterWeight
	for i := 0; i < len(ws); i += 2 {
		cs = append(cs, &routev3.WeightedCluster_ClusterWeight{Name: ws[i].(string), Weight: wrapperspb.UInt32(uint32(ws[i+1].(int)))})
	}
	return &routev3.Route{Name: "split", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_WeightedClusters{
			WeightedClusters: &routev3.WeightedCluster{Clusters: cs}}}}}
}

func TestWeightedSplit(t *testing.T) {
	tb := compile(t, vhost("v", []string{"*"}, weighted("orders", 90, "orders-v2", 10)))
	rt, _ := tb.Match(req("GET", "/"))
	// Deterministic: the walk over cumulative weights.
	for rnd, want := range map[uint64]string{0: "orders", 89: "orders", 90: "orders-v2", 99: "orders-v2", 100: "orders", 190: "orders-v2"} {
		if got := rt.Pick(rnd); got != want {
			t.Errorf("Pick(%d) = %s, want %s", rnd, got, want)
		}
	}
	for _, split := range [][2]int{{90, 10}, {50, 50}, {1, 3}} {
		tb := compile(t, vhost("v", []string{"*"}, weighted("a", split[0], "b", split[1])))
		rt, _ := tb.Match(req("GET", "/"))
		rng := rand.New(rand.NewPCG(1, uint64(split[0])))
		n := 2000
		got := 0
		for range n {
			if rt.Pick(rng.Uint64()) == "a" {
				got++
			}
		}
		want := float64(split[0]) / float64(split[0]+split[1])
		if share := float64(got) / float64(n); share < want-0.05 || share > want+0.05 {
			t.Errorf("split %v: share of a %.3f over %d picks, want %.2f±0.05", split, share, n, want)
		}
	}
}

func TestActions(t *testing.T) {
	fwd := func(a *routev3.RouteAction) *routev3.Route {
		a.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: "orders"}
		return &routev3.Route{Name: "r", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/api/orders"}},
			Action: &routev3.Route_Route{Route: a}}
	}
	t.Run("prefix rewrite", func(t *testing.T) {
		rt := one(t, fwd(&routev3.RouteAction{PrefixRewrite: "/v2", HostRewriteSpecifier: &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: "orders.internal"}}))
		r := req("GET", "/api/orders/7?x=1")
		rt.Rewrite(r)
		if r.URL.Path != "/v2/7" || r.URL.RawQuery != "x=1" || r.Host != "orders.internal" {
			t.Errorf("got path %q query %q host %q", r.URL.Path, r.URL.RawQuery, r.Host)
		}
	})
	t.Run("regex rewrite", func(t *testing.T) {
		rt := one(t, fwd(&routev3.RouteAction{RegexRewrite: &matcherv3.RegexMatchAndSubstitute{
			Pattern: re(`^/api/orders/([0-9]+)$`), Substitution: `/orders?id=\1`}}))
		if got := rt.RewritePath("/api/orders/42"); got != "/orders?id=42" {
			t.Errorf("got %q", got)
		}
		r := req("GET", "/api/orders/a%20b")
		rt.Rewrite(r) // no match: unchanged
		if r.URL.EscapedPath() != "/api/orders/a%20b" {
			t.Errorf("got %q", r.URL.EscapedPath())
		}
	})
	t.Run("timeout and retries", func(t *testing.T) {
		rt := one(t, fwd(&routev3.RouteAction{Timeout: durationpb.New(5 * time.Second), RetryPolicy: &routev3.RetryPolicy{
			RetryOn: "5xx, connect-failure", NumRetries: wrapperspb.UInt32(3), PerTryTimeout: durationpb.New(time.Second),
			RetriableStatusCodes: []uint32{409},
			RetryHostPredicate:   []*routev3.RetryPolicy_RetryHostPredicate{{Name: "envoy.retry_host_predicates.previous_hosts"}}}}))
		if !rt.TimeoutSet || rt.Timeout != 5*time.Second {
			t.Errorf("timeout %v %v", rt.Timeout, rt.TimeoutSet)
		}
		p := rt.Retry
		if p == nil || strings.Join(p.RetryOn, ",") != "5xx,connect-failure" || p.NumRetries != 3 || p.PerTryTimeout != time.Second || !p.OtherHost || p.RetriableStatusCodes[0] != 409 {
			t.Errorf("retry %+v", p)
		}
		if rt.Pick(7) != "orders" || rt.Kind != routematch.Forward {
			t.Errorf("pick %s kind %v", rt.Pick(7), rt.Kind)
		}
	})
	t.Run("headers", func(t *testing.T) {
		hv := func(k, v string, a corev3.HeaderValueOption_HeaderAppendAction) *corev3.HeaderValueOption {
			return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: v}, AppendAction: a}
		}
		r := fwd(&routev3.RouteAction{})
		r.RequestHeadersToAdd = []*corev3.HeaderValueOption{
			hv("x-via", "mesh", corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD),
			hv("x-set", "route", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD),
			hv("x-once", "new", corev3.HeaderValueOption_ADD_IF_ABSENT),
			hv("x-only", "new", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS),
			hv("x-pct", "100%%", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD)}
		r.RequestHeadersToRemove = []string{"x-internal"}
		r.ResponseHeadersToAdd = []*corev3.HeaderValueOption{hv("x-served-by", "gw", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD)}
		r.ResponseHeadersToRemove = []string{"server"}
		v := vhost("v", []string{"*"}, r)
		v.RequestHeadersToAdd = []*corev3.HeaderValueOption{hv("x-set", "vhost", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD)}
		tb := compile(t, v)
		rt, _ := tb.Match(req("GET", "/api/orders"))
		h := http.Header{"X-Via": {"lb"}, "X-Once": {"old"}, "X-Internal": {"1"}, "X-Set": {"client"}}
		rt.ApplyRequestHeaders(h, rt.Pick(0))
		want := http.Header{"X-Via": {"lb", "mesh"}, "X-Once": {"old"}, "X-Set": {"vhost"}, "X-Pct": {"100%"}}
		if fmt.Sprint(h) != fmt.Sprint(want) {
			t.Errorf("request headers %v, want %v (the virtual host's additions come after the route's)", h, want)
		}
		resp := http.Header{"Server": {"app"}}
		rt.ApplyResponseHeaders(resp, "orders")
		if fmt.Sprint(resp) != fmt.Sprint(http.Header{"X-Served-By": {"gw"}}) {
			t.Errorf("response headers %v", resp)
		}
	})
	t.Run("direct response", func(t *testing.T) {
		rt := one(t, &routev3.Route{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/robots.txt"}},
			Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 200,
				Body: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "User-agent: *\n"}}}}})
		if rt.Kind != routematch.DirectKind || rt.Direct.Status != 200 || string(rt.Direct.Body) != "User-agent: *\n" {
			t.Errorf("%+v", rt.Direct)
		}
	})
	t.Run("redirects", func(t *testing.T) {
		for _, c := range []struct {
			name string
			a    *routev3.RedirectAction
			req  *http.Request
			want string
			code int
		}{
			{"https", &routev3.RedirectAction{SchemeRewriteSpecifier: &routev3.RedirectAction_HttpsRedirect{HttpsRedirect: true}},
				req("GET", "/a?b=1", "host", "shop.example.com:8080"), "https://shop.example.com/a?b=1", 301},
			{"host and path, 302", &routev3.RedirectAction{HostRedirect: "new.example.com", PathRewriteSpecifier: &routev3.RedirectAction_PathRedirect{PathRedirect: "/home"}, ResponseCode: routev3.RedirectAction_FOUND},
				req("GET", "/a?b=1", "host", "old.example.com"), "http://new.example.com/home?b=1", 302},
			{"prefix, strip query, 308", &routev3.RedirectAction{PathRewriteSpecifier: &routev3.RedirectAction_PrefixRewrite{PrefixRewrite: "/v2/"}, StripQuery: true, ResponseCode: routev3.RedirectAction_PERMANENT_REDIRECT},
				req("GET", "/api/orders/1?b=1", "host", "h"), "http://h/v2//1", 308},
			{"scheme and port", &routev3.RedirectAction{SchemeRewriteSpecifier: &routev3.RedirectAction_SchemeRedirect{SchemeRedirect: "https"}, PortRedirect: 8443, ResponseCode: routev3.RedirectAction_TEMPORARY_REDIRECT},
				req("GET", "/x", "host", "h:8080"), "https://h:8443/x", 307},
		} {
			rt := one(t, &routev3.Route{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}, Action: &routev3.Route_Redirect{Redirect: c.a}})
			if c.name == "prefix, strip query, 308" {
				rt = one(t, &routev3.Route{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/api/orders"}}, Action: &routev3.Route_Redirect{Redirect: c.a}})
			}
			if got := rt.RedirectLocation(c.req); got != c.want || rt.Redirect.Code != c.code || rt.Kind != routematch.RedirectKind {
				t.Errorf("%s: got %s %d, want %s %d", c.name, got, rt.Redirect.Code, c.want, c.code)
			}
		}
	})
	t.Run("jwt per route", func(t *testing.T) {
		req1, _ := anypb.New(&jwtv3.PerRouteConfig{RequirementSpecifier: &jwtv3.PerRouteConfig_RequirementName{RequirementName: "idp"}})
		off, _ := anypb.New(&jwtv3.PerRouteConfig{RequirementSpecifier: &jwtv3.PerRouteConfig_Disabled{Disabled: true}})
		a, b := prefix("/a", "a"), prefix("/b", "b")
		b.TypedPerFilterConfig = map[string]*anypb.Any{routematch.JWTAuthnFilter: off}
		v := vhost("v", []string{"*"}, a, b)
		v.TypedPerFilterConfig = map[string]*anypb.Any{routematch.JWTAuthnFilter: req1}
		tb := compile(t, v)
		ra, _ := tb.Match(req("GET", "/a"))
		rb, _ := tb.Match(req("GET", "/b"))
		if ra.JWT != (routematch.JWTPerRoute{Set: true, RequirementName: "idp"}) || rb.JWT != (routematch.JWTPerRoute{Set: true, Disabled: true}) {
			t.Errorf("a %+v b %+v", ra.JWT, rb.JWT)
		}
	})
}

func one(t *testing.T, r *routev3.Route) *routematch.Route {
	t.Helper()
	tb := compile(t, vhost("v", []string{"*"}, r))
	return tb.VirtualHosts()[0].Routes[0]
}

func TestCompileErrors(t *testing.T) {
	bad := func(mod func(*routev3.Route)) *routev3.RouteConfiguration {
		r := prefix("/", "c")
		r.Name = "r1"
		mod(r)
		return &routev3.RouteConfiguration{VirtualHosts: []*routev3.VirtualHost{vhost("ok", []string{"a"}, prefix("/", "a")), vhost("shop", []string{"shop"}, prefix("/", "x"), r)}}
	}
	for _, c := range []struct {
		name string
		rc   *routev3.RouteConfiguration
		want string
	}{
		{"bad path regex", bad(func(r *routev3.Route) {
			r.Match.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: re("(")}
		}), `virtual_hosts[1] "shop": routes[1] "r1": match: safe_regex: bad regex "("`},
		{"bad header regex", bad(func(r *routev3.Route) {
			r.Match.Headers = []*routev3.HeaderMatcher{{Name: "x", HeaderMatchSpecifier: &routev3.HeaderMatcher_SafeRegexMatch{SafeRegexMatch: re("[")}}}
		}), `routes[1] "r1": match: headers[0] "x": safe_regex_match: bad regex`},
		{"weights sum to 0", bad(func(r *routev3.Route) { r.Action = weighted("a", 0, "b", 0).Action }), `weighted_clusters: clusters: the weights sum to 0`},
		{"no action", bad(func(r *routev3.Route) { r.Action = nil }), `routes[1] "r1": action: missing`},
		{"mirror by header", bad(func(r *routev3.Route) {
			r.GetRoute().RequestMirrorPolicies = []*routev3.RouteAction_RequestMirrorPolicy{{ClusterHeader: "x-mirror"}}
		}), `routes[1] "r1": route: request_mirror_policies[0]: cluster_header: not supported`},
		{"header command", bad(func(r *routev3.Route) {
			r.RequestHeadersToAdd = []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-ip", Value: "%DOWNSTREAM_REMOTE_ADDRESS%"}}}
		}), `request_headers_to_add[0] "x-ip": value "%DOWNSTREAM_REMOTE_ADDRESS%": %COMMAND% substitutions are not supported`},
		{"duplicate domain", &routev3.RouteConfiguration{VirtualHosts: []*routev3.VirtualHost{vhost("a", []string{"x"}, prefix("/", "a")), vhost("b", []string{"X"}, prefix("/", "a"))}},
			`virtual_hosts[1] "b": domains[0]: "x" is also a domain of virtual_hosts[0]`},
		{"wildcard inside", &routev3.RouteConfiguration{VirtualHosts: []*routev3.VirtualHost{vhost("a", []string{"a.*.com"}, prefix("/", "a"))}},
			`virtual_hosts[0] "a": domains[0]: "a.*.com": a wildcard may only be the first or last character`},
		{"bad jwt per route", bad(func(r *routev3.Route) {
			a, _ := anypb.New(&routev3.Route{})
			r.TypedPerFilterConfig = map[string]*anypb.Any{routematch.JWTAuthnFilter: a}
		}), `typed_per_filter_config[envoy.filters.http.jwt_authn]: want a jwt_authn PerRouteConfig`},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := routematch.Compile(c.rc)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
}

// BenchmarkMatch is the cost of matching one request against a virtual
// host of n routes (issue 17's benchmark): the request matches the last
// route, the worst case of Envoy's first-match order.
func BenchmarkMatch(b *testing.B) {
	for _, n := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("routes=%d", n), func(b *testing.B) {
			var routes []*routev3.Route
			for i := range n - 1 {
				r := prefix(fmt.Sprintf("/svc%d/", i), fmt.Sprintf("c%d", i))
				r.Match.Headers = []*routev3.HeaderMatcher{{Name: ":method", HeaderMatchSpecifier: &routev3.HeaderMatcher_ExactMatch{ExactMatch: "GET"}}}
				routes = append(routes, r)
			}
			last := prefix("/api/orders", "orders")
			last.Match.Headers = []*routev3.HeaderMatcher{
				{Name: ":method", HeaderMatchSpecifier: &routev3.HeaderMatcher_ExactMatch{ExactMatch: "GET"}},
				{Name: "x-tester", HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}}}
			last.Match.QueryParameters = []*routev3.QueryParameterMatcher{{Name: "v"}}
			routes = append(routes, last)
			tb := compile(b, vhost("other", []string{"*.example.org"}), vhost("shop", []string{"shop.example.com", "*.example.com"}, routes...))
			r := req("GET", "/api/orders/42?v=2", "host", "shop.example.com:8443", "X-Tester", "1")
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				rt, ok := tb.Match(r)
				if !ok || rt.Pick(7) != "orders" {
					b.Fatal("no match")
				}
			}
		})
	}
}
