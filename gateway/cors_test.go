package gateway_test

import (
	"fmt"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshvm/mesh/gateway"
	"github.com/meshvm/mesh/meshtest"
)

// A route's standard CORS policy: a preflight from an allowed origin is
// answered by the gateway; a request from it gets Allow-Origin; another
// origin gets no CORS headers.
func TestCORSPerRoute(t *testing.T) {
	inbound := startAgent(t, "127.0.0.93", "cors-app", startApp(t, "127.0.0.93", "cors-app"))
	cp := startControlPlane(t)
	ca := newCA(t)
	g := startGateway(t, cp, ca, nil)
	withCORS := prefixRoute("cors", "/cors", toCluster("cors-app"))
	withCORS.TypedPerFilterConfig = map[string]*anypb.Any{gateway.CORSFilter: mustAny(t, &corsv3.CorsPolicy{
		AllowOriginStringMatch: []*matcherv3.StringMatcher{{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "https://app.shop.test"}}},
		AllowMethods:           "GET, POST", AllowHeaders: "authorization", MaxAge: "600"})}
	cp.set(t, g.node, gwConfig{services: map[string][]string{"cors-app": {inbound}}, routes: &routev3.RouteConfiguration{
		VirtualHosts: []*routev3.VirtualHost{{Name: "all", Domains: []string{"*"}, Routes: []*routev3.Route{withCORS, prefixRoute("all", "/", toCluster("cors-app"))}}}}})
	meshtest.Eventually(t, 15*time.Second, func() error {
		if resp, _ := g.get(t, "shop.test", "/cors", nil); resp.StatusCode != 200 {
			return fmt.Errorf("%d", resp.StatusCode)
		}
		return nil
	})
	do := func(method, origin string) (int, map[string]string) {
		req := map[string]string{"Origin": origin}
		if method == "OPTIONS" {
			req["Access-Control-Request-Method"] = "POST"
		}
		resp, _ := g.do(t, method, "shop.test", "/cors/x", req)
		return resp.StatusCode, map[string]string{"origin": resp.Header.Get("Access-Control-Allow-Origin"),
			"methods": resp.Header.Get("Access-Control-Allow-Methods"), "age": resp.Header.Get("Access-Control-Max-Age")}
	}
	if st, h := do("OPTIONS", "https://app.shop.test"); st != 204 || h["origin"] != "https://app.shop.test" || h["methods"] != "GET, POST" || h["age"] != "600" {
		t.Errorf("preflight from an allowed origin: %d %v, want 204 with the policy", st, h)
	}
	if st, h := do("GET", "https://app.shop.test"); st != 200 || h["origin"] != "https://app.shop.test" {
		t.Errorf("GET from an allowed origin: %d %v", st, h)
	}
	if st, h := do("GET", "https://evil.test"); st != 200 || h["origin"] != "" {
		t.Errorf("GET from another origin: %d %v, want no Allow-Origin", st, h)
	}
}
