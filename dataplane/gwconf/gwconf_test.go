package gwconf_test

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	xdstypev3 "github.com/cncf/xds/go/xds/type/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	rbacfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshvm/mesh/authn"
	"github.com/meshvm/mesh/dataplane/gwconf"
	"github.com/meshvm/mesh/routematch"
	"github.com/meshvm/mesh/wire"
	"github.com/meshvm/mesh/wire/wiretest"
	"github.com/meshvm/mesh/xdsclient"
)

func parse(t *testing.T) *gwconf.Config {
	t.Helper()
	c, err := gwconf.Parse(wiretest.Load(t, wiretest.Gateway))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestGolden reads what mesh control sends a gateway (the golden
// resources) into what the gateway serves.
func TestGolden(t *testing.T) {
	c := parse(t)
	if c.HTTPSAddr != "127.0.0.1:8443" || c.HTTPAddr != "127.0.0.1:8080" {
		t.Errorf("addresses %s %s", c.HTTPSAddr, c.HTTPAddr)
	}
	jwks, err := os.ReadFile(wiretest.File(wiretest.GatewayIdPJWKS))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]*gwconf.Provider{
		"idp": {Name: "idp", Issuer: "https://idp.example", Audiences: []string{"shop"}, JWKS: jwks, ClockSkew: 30 * time.Second,
			ClaimsToHeaders: []gwconf.ClaimHeader{{Claim: "email", Header: "x-user-email"}, {Claim: "sub", Header: "x-user-id"}}},
		"partners": {Name: "partners", Issuer: "https://partners.example", JWKSURL: "https://partners.example/.well-known/jwks.json",
			Refresh: 5 * time.Minute, ClockSkew: 10 * time.Second, Headers: []gwconf.TokenHeader{{Name: "x-partner-token"}}, Cookies: []string{"partner_session"}},
	}
	if !reflect.DeepEqual(c.Providers, want) {
		t.Errorf("providers\n%+v\n%+v\nwant\n%+v\n%+v", c.Providers["idp"], c.Providers["partners"], want["idp"], want["partners"])
	}
	if strings.Join(c.StripHeaders, ",") != "x-user-email,x-user-id" {
		t.Errorf("strip %v", c.StripHeaders)
	}
	if len(c.APIKeys) != 1 || c.APIKeys[0].Subject != "billing-batch" || c.APIKeyHeader != "x-api-key" {
		t.Errorf("api keys %v %s", c.APIKeys, c.APIKeyHeader)
	}
	if !c.BypassCORSPreflight {
		t.Error("CORS preflights are not let through authentication")
	}
	if strings.Join(c.Clusters, ",") != "orders,orders-v2,payments,search" {
		t.Errorf("clusters %v", c.Clusters)
	}

	https := func(method, target string, hdr ...string) *http.Request {
		r := httptest.NewRequest(method, target, nil)
		r.TLS = &tls.ConnectionState{}
		for i := 0; i+1 < len(hdr); i += 2 {
			r.Header.Set(hdr[i], hdr[i+1])
		}
		return r
	}
	for _, tc := range []struct {
		name     string
		req      *http.Request
		route    string
		cluster  string
		auth     gwconf.Auth
		location string
	}{
		{"jwt with a claim rule", https("GET", "https://shop.example.com/api/orders/7"), "orders-read", "orders",
			gwconf.Auth{Require: gwconf.Required, JWT: "idp", Claims: []gwconf.Claim{{Claim: "https://example.com/Roles", Contains: "Buyer"}, {Claim: "scope", Contains: "orders:read"}}}, ""},
		{"split, optional jwt", https("POST", "https://shop.example.com/api/orders"), "route-1", "orders",
			gwconf.Auth{Require: gwconf.Optional, JWT: "idp"}, ""},
		{"api key or jwt", https("GET", "https://api.example.com/pay/v2/charge?debug=1&trace"), "payments", "payments",
			gwconf.Auth{Require: gwconf.Required, JWT: "partners", APIKey: true}, ""},
		{"optional api key", https("GET", "https://shop.example.com/search?q=x", "User-Agent", "curl/8"), "search", "search",
			gwconf.Auth{Require: gwconf.Optional, APIKey: true}, ""},
		{"no auth: direct response", https("GET", "https://anything.example.org/robots.txt"), "robots", "", gwconf.Auth{Require: gwconf.None}, ""},
		{"plain http redirected", httptest.NewRequest("GET", "http://shop.example.com/api/orders/7", nil), "orders-read/https", "",
			gwconf.Auth{Require: gwconf.None}, "https://shop.example.com/api/orders/7"},
		{"plaintext route served on http", httptest.NewRequest("GET", "http://old.example.com/shop/cart", nil), "old-shop", "",
			gwconf.Auth{Require: gwconf.None}, "http://shop.example.com/cart"},
		{"unknown host on http", httptest.NewRequest("GET", "http://nowhere.test/x", nil), "https-redirect", "",
			gwconf.Auth{Require: gwconf.None}, "https://nowhere.test/x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt, ok := c.Routes.Match(tc.req)
			if !ok {
				t.Fatalf("no route")
			}
			if rt.Name != tc.route {
				t.Errorf("route %s, want %s", rt.Name, tc.route)
			}
			if tc.cluster != "" && rt.Pick(0) != tc.cluster {
				t.Errorf("cluster %s, want %s", rt.Pick(0), tc.cluster)
			}
			if got := c.Auth(rt); !reflect.DeepEqual(*got, tc.auth) {
				t.Errorf("auth %+v, want %+v", *got, tc.auth)
			}
			if tc.location != "" && rt.RedirectLocation(tc.req) != tc.location {
				t.Errorf("location %s, want %s", rt.RedirectLocation(tc.req), tc.location)
			}
		})
	}
	// No route for an unknown host on HTTPS.
	if rt, ok := c.Routes.Match(https("GET", "https://nowhere.test/x")); ok {
		t.Errorf("matched %s", rt.Name)
	}
	// The payments route's rewrite, headers and CORS policy.
	rt, _ := c.Routes.Match(https("GET", "https://api.example.com/pay/v2/charge?debug=1&trace"))
	wantCORS := &gwconf.CORS{AllowOrigins: []string{"https://shop.example.com", "https://admin.example.com"}, AllowMethods: "GET,POST",
		AllowHeaders: "authorization,x-api-key", ExposeHeaders: "x-request-id", MaxAge: "600", AllowCredentials: true}
	if got := c.CORS(rt); !reflect.DeepEqual(got, wantCORS) {
		t.Errorf("cors %+v, want %+v", got, wantCORS)
	}
	if orders, _ := c.Routes.Match(https("GET", "https://shop.example.com/api/orders/7")); c.CORS(orders) != nil {
		t.Error("a route without CORS has a policy")
	}
	if got := rt.RewritePath("/pay/v2/charge"); got != "/charge" {
		t.Errorf("rewrite %s", got)
	}
	h := http.Header{"X-Internal": {"1"}, "X-Via": {"client"}}
	rt.ApplyRequestHeaders(h, rt.Pick(0))
	if h.Get("X-Via") != "mesh-gateway" || h.Get("X-Discount") != "10%" || h.Get("X-Internal") != "" {
		t.Errorf("headers %v", h)
	}
}

// TestRejects: what the gateway cannot enforce exactly is refused, naming
// where it is.
func TestRejects(t *testing.T) {
	hcmOf := func(r xdsclient.Resources, name string) (*hcmv3.HttpConnectionManager, func()) {
		l := r.Listeners[name]
		var h hcmv3.HttpConnectionManager
		if err := l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&h); err != nil {
			t.Fatal(err)
		}
		return &h, func() {
			a, _ := anypb.New(&h)
			l.GetFilterChains()[0].GetFilters()[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
		}
	}
	jwtOf := func(h *hcmv3.HttpConnectionManager) (*jwtv3.JwtAuthentication, func()) {
		for _, f := range h.GetHttpFilters() {
			if f.GetName() == wire.JWTAuthnFilter {
				var j jwtv3.JwtAuthentication
				_ = f.GetTypedConfig().UnmarshalTo(&j)
				return &j, func() { f.ConfigType = &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&j)} }
			}
		}
		t.Fatal("no jwt filter")
		return nil, nil
	}
	route := func(r xdsclient.Resources, name string) *routev3.Route {
		for _, vh := range r.Routes[wire.GatewayRoute].GetVirtualHosts() {
			for _, rt := range vh.GetRoutes() {
				if rt.GetName() == name {
					return rt
				}
			}
		}
		t.Fatalf("no route %s", name)
		return nil
	}
	for _, tc := range []struct {
		name string
		edit func(r xdsclient.Resources)
		want string
	}{
		{"unknown filter", func(r xdsclient.Resources) {
			h, save := hcmOf(r, wire.GatewayHTTPSListener)
			h.HttpFilters = append([]*hcmv3.HttpFilter{{Name: "envoy.filters.http.lua", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&xdstypev3.TypedStruct{})}}}, h.HttpFilters...)
			save()
		}, "listener mesh_gateway_https: envoy.filters.network.http_connection_manager: http_filters[0] envoy.filters.http.lua: the gateway cannot enforce this filter"},
		{"listeners differ", func(r xdsclient.Resources) {
			h, save := hcmOf(r, wire.GatewayHTTPListener)
			h.HttpFilters = h.HttpFilters[1:]
			save()
		}, "listener mesh_gateway_http: its HTTP filters differ"},
		{"forwarded token", func(r xdsclient.Resources) {
			for _, name := range []string{wire.GatewayHTTPSListener, wire.GatewayHTTPListener} {
				h, save := hcmOf(r, name)
				j, saveJ := jwtOf(h)
				j.Providers["idp"].Forward = true
				saveJ()
				save()
			}
		}, "providers[idp]: forward: the gateway never forwards tokens"},
		{"requires_all", func(r xdsclient.Resources) {
			for _, name := range []string{wire.GatewayHTTPSListener, wire.GatewayHTTPListener} {
				h, save := hcmOf(r, name)
				j, saveJ := jwtOf(h)
				j.RequirementMap["idp"] = &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_RequiresAll{RequiresAll: &jwtv3.JwtRequirementAndList{}}}
				saveJ()
				save()
			}
		}, `route 1 "orders-read": envoy.filters.http.jwt_authn: requirement "idp": only provider_name`},
		{"unknown requirement", func(r xdsclient.Resources) {
			route(r, "orders-read").TypedPerFilterConfig[wire.JWTAuthnFilter] = mustAny(&jwtv3.PerRouteConfig{RequirementSpecifier: &jwtv3.PerRouteConfig_RequirementName{RequirementName: "nope"}})
		}, `requirement "nope" is not in the requirement_map`},
		{"other rbac shape", func(r xdsclient.Resources) {
			var pr rbacfilterv3.RBACPerRoute
			rt := route(r, "orders-read")
			_ = rt.TypedPerFilterConfig[wire.RBACFilter].UnmarshalTo(&pr)
			m := pr.Rbac.Rules.Policies["claims"].Principals[0].GetAndIds().Ids[0].GetMetadata()
			m.Value = &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "orders"}}}}
			rt.TypedPerFilterConfig[wire.RBACFilter] = mustAny(&pr)
		}, "typed_per_filter_config[envoy.filters.http.rbac]: rules principal and_ids[0]: claim https://example.com/Roles: want an or_match"},
		{"unknown per-route filter", func(r xdsclient.Resources) {
			route(r, "search").TypedPerFilterConfig["envoy.filters.http.buffer"] = mustAny(&xdstypev3.TypedStruct{})
		}, "typed_per_filter_config[envoy.filters.http.buffer]: the gateway cannot enforce this filter"},
		{"fault injection", func(r xdsclient.Resources) {
			route(r, "search").TypedPerFilterConfig[routematch.FaultFilter] = mustAny(&faultv3.HTTPFault{Abort: &faultv3.FaultAbort{
				ErrorType: &faultv3.FaultAbort_HttpStatus{HttpStatus: 503}, Percentage: &typev3.FractionalPercent{Numerator: 50}}})
		}, `route 5 "search": fault injection, request_mirror_policies and hash_policy are not supported by the gateway`},
		{"bad route regex", func(r xdsclient.Resources) {
			route(r, "payments").Match.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "(("}}
		}, `route configuration mesh_gateway: virtual_hosts[1] "*.example.com": routes[1] "payments": match: safe_regex: bad regex`},
		{"missing cluster", func(r xdsclient.Resources) { delete(r.Clusters, "orders-v2") }, `routes to cluster "orders-v2", which was not sent`},
		{"missing route configuration", func(r xdsclient.Resources) { delete(r.Routes, wire.GatewayRoute) }, "route configuration mesh_gateway: missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := wiretest.Load(t, wiretest.Gateway)
			tc.edit(r)
			_, err := gwconf.Parse(r)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v\nwant an error containing %q", err, tc.want)
			}
		})
	}
}

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err)
	}
	return a
}

// TestAuthn: what authn needs comes straight from the config: token
// sources, claim rules, and API keys that authn accepts.
func TestAuthn(t *testing.T) {
	c := parse(t)
	if got := c.Providers["idp"].Sources(); !reflect.DeepEqual(got, authn.DefaultSources) {
		t.Errorf("idp sources %v", got)
	}
	if got, want := c.Providers["partners"].Sources(), []authn.Source{{Header: "x-partner-token"}, {Cookie: "partner_session"}}; !reflect.DeepEqual(got, want) {
		t.Errorf("partners sources %v, want %v", got, want)
	}
	if _, err := authn.NewAPIKeys(c.Keys()); err != nil {
		t.Errorf("authn refuses the pushed keys: %v", err)
	}
	var orders *gwconf.Auth
	for _, vh := range c.Routes.VirtualHosts() {
		for _, r := range vh.Routes {
			if r.Name == "orders-read" {
				orders = c.Auth(r)
			}
		}
	}
	claims := &authn.Claims{All: map[string]any{"scope": "profile orders:read", "https://example.com/Roles": []any{"Buyer"}}}
	if err := claims.Allow(orders.Rules()); err != nil {
		t.Errorf("scope with orders:read refused: %v", err)
	}
	claims = &authn.Claims{All: map[string]any{"scope": "orders:readall"}}
	if err := claims.Allow(orders.Rules()); err == nil {
		t.Error("scope orders:readall allowed by a rule on orders:read")
	}
}
