package gateway_test

import (
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/wire"
)

func perRoute(t *testing.T, requirement string) map[string]*anypb.Any {
	return map[string]*anypb.Any{wire.JWTAuthnFilter: mustAny(t, &jwtv3.PerRouteConfig{
		RequirementSpecifier: &jwtv3.PerRouteConfig_RequirementName{RequirementName: requirement}})}
}

func prefixRoute(name, prefix string, action *routev3.Route_Route) *routev3.Route {
	return &routev3.Route{Name: name, Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: prefix}}, Action: action}
}

func toCluster(c string) *routev3.Route_Route {
	return &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: c}}}
}

func weighted(a string, wa uint32, b string, wb uint32) *routev3.Route_Route {
	return &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_WeightedClusters{
		WeightedClusters: &routev3.WeightedCluster{Clusters: []*routev3.WeightedCluster_ClusterWeight{
			{Name: a, Weight: wrapperspb.UInt32(wa)}, {Name: b, Weight: wrapperspb.UInt32(wb)}}}}}}
}

// One mesh for the gateway's end-to-end cases: two services behind real
// agents (registered in the real Consul), a control plane pushing the
// gateway's routes and JWT filter, a gateway with real TLS.
func TestGatewayIntoTheMesh(t *testing.T) {
	v1 := startAgent(t, "127.0.0.81", "orders", startApp(t, "127.0.0.81", "orders-v1"))
	v2 := startAgent(t, "127.0.0.82", "orders-canary", startApp(t, "127.0.0.82", "orders-v2"))
	ca := newCA(t)
	is := newIssuer(t, t.TempDir())
	cp := startControlPlane(t)
	g := startGateway(t, cp, ca, func(c *config.Config) {
		c.Gateway.Limits.PerIP = config.RateLimit{MaxTokens: 10000, TokensPerFill: 10000, FillInterval: time.Second}
	})

	routes := func(split bool) *routev3.RouteConfiguration {
		api := prefixRoute("orders-api", "/api/orders", toCluster("orders"))
		api.TypedPerFilterConfig = perRoute(t, "user")
		public := prefixRoute("public", "/public", toCluster("orders"))
		if split {
			public = prefixRoute("public", "/public", weighted("orders", 80, "orders-canary", 20))
		}
		return &routev3.RouteConfiguration{VirtualHosts: []*routev3.VirtualHost{{Name: "shop", Domains: []string{"shop.test"},
			Routes: []*routev3.Route{api, public}}}}
	}
	services := map[string][]string{"orders": {v1}, "orders-canary": {v2}}
	cp.set(t, g.node, gwConfig{services: services, routes: routes(false), jwt: is.jwtFilter()})
	meshtest.Eventually(t, 15*time.Second, func() error {
		resp, _ := g.get(t, "shop.test", "/public/x", nil)
		if resp.StatusCode != 200 {
			return fmt.Errorf("public route: %d %s", resp.StatusCode, resp.Header.Get("x-mesh-reason"))
		}
		return nil
	})

	t.Run("routed into the mesh over HTTP/2 with TLS", func(t *testing.T) {
		resp, body := g.get(t, "shop.test", "/public/x", nil)
		if resp.ProtoMajor != 2 || body["app"] != "orders-v1" || body["path"] != "/public/x" {
			t.Fatalf("got %s, app %v path %v; want HTTP/2 to orders-v1 at /public/x", resp.Proto, body["app"], body["path"])
		}
	})
	t.Run("unrouted host is 404 no-route", func(t *testing.T) {
		resp, _ := g.get(t, "other.test", "/", nil)
		if resp.StatusCode != 404 || resp.Header.Get("x-mesh-reason") != "no-route" {
			t.Fatalf("got %d %q, want 404 no-route", resp.StatusCode, resp.Header.Get("x-mesh-reason"))
		}
	})

	t.Run("authentication at the edge", func(t *testing.T) {
		valid := is.token(t, "user-42", time.Hour, nil)
		expired := is.token(t, "user-42", -time.Hour, nil)
		tampered := valid[:len(valid)-4] + "AAAA"
		if tampered == valid {
			tampered = valid[:len(valid)-4] + "BBBB"
		}
		cases := []struct {
			name       string
			hdr        map[string]string
			status     int
			reason     string
			wantUser   string
			challenged bool
		}{
			{name: "no token", status: 401, reason: "auth-missing", challenged: true},
			{name: "valid token, user id forwarded", hdr: map[string]string{"Authorization": "Bearer " + valid}, status: 200, wantUser: "user-42"},
			{name: "forged x-user-id is replaced", hdr: map[string]string{"Authorization": "Bearer " + valid, "X-User-Id": "admin"}, status: 200, wantUser: "user-42"},
			{name: "forged x-user-id without a token is refused", hdr: map[string]string{"X-User-Id": "admin"}, status: 401, reason: "auth-missing", challenged: true},
			{name: "expired", hdr: map[string]string{"Authorization": "Bearer " + expired}, status: 401, reason: "auth-invalid", challenged: true},
			{name: "tampered signature", hdr: map[string]string{"Authorization": "Bearer " + tampered}, status: 401, reason: "auth-invalid", challenged: true},
			{name: "alg none", hdr: map[string]string{"Authorization": "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."}, status: 401, reason: "auth-invalid", challenged: true},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				resp, body := g.get(t, "shop.test", "/api/orders/1", c.hdr)
				if resp.StatusCode != c.status || resp.Header.Get("x-mesh-reason") != c.reason {
					t.Fatalf("got %d %q, want %d %q", resp.StatusCode, resp.Header.Get("x-mesh-reason"), c.status, c.reason)
				}
				if c.challenged && resp.Header.Get("WWW-Authenticate") == "" {
					t.Fatal("401 without WWW-Authenticate")
				}
				if c.wantUser != "" {
					h, _ := body["headers"].(map[string]any)
					got, _ := h["X-User-Id"].([]any)
					if len(got) != 1 || got[0] != c.wantUser {
						t.Fatalf("app saw X-User-Id %v, want exactly [%s]", got, c.wantUser)
					}
				}
			})
		}
		t.Run("public route does not forward a forged x-user-id", func(t *testing.T) {
			_, body := g.get(t, "shop.test", "/public/y", map[string]string{"X-User-Id": "admin"})
			h, _ := body["headers"].(map[string]any)
			if h["X-User-Id"] != nil {
				t.Fatalf("app saw X-User-Id %v on a public route", h["X-User-Id"])
			}
		})
	})

	t.Run("weighted split within 5% over 2000 requests, and a live change loses no request", func(t *testing.T) {
		// Load runs through the change from one service to the split.
		var failed atomic.Int64
		var firstErr atomic.Value
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for i := 0; i < 4; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					req, _ := http.NewRequest("GET", "https://"+g.https+"/public/load", nil)
					req.Host = "shop.test"
					resp, err := g.client.Do(req)
					if err != nil {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, err.Error())
						continue
					}
					resp.Body.Close()
					if resp.StatusCode != 200 {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, fmt.Sprint(resp.StatusCode, resp.Header.Get("x-mesh-reason")))
					}
				}
			}()
		}
		time.Sleep(300 * time.Millisecond)
		cp.set(t, g.node, gwConfig{services: services, routes: routes(true), jwt: is.jwtFilter()})
		meshtest.Eventually(t, 10*time.Second, func() error {
			for i := 0; i < 20; i++ {
				if _, body := g.get(t, "shop.test", "/public/z", nil); body["app"] == "orders-v2" {
					return nil
				}
			}
			return fmt.Errorf("no request reached the canary yet")
		})
		time.Sleep(300 * time.Millisecond)
		close(stop)
		wg.Wait()
		if n := failed.Load(); n > 0 {
			t.Errorf("%d requests failed across the live route change (first: %v)", n, firstErr.Load())
		}

		counts := map[string]int{}
		for i := 0; i < 2000; i++ {
			_, body := g.get(t, "shop.test", "/public/split", nil)
			counts[fmt.Sprint(body["app"])]++
		}
		share := float64(counts["orders-v2"]) / 2000
		if share < 0.15 || share > 0.25 {
			t.Fatalf("canary got %.1f%% of 2000 requests (%v), want 20%% ± 5", share*100, counts)
		}
		t.Logf("split over 2000 requests: %v", counts)
	})
}

// A burst from one client IP is cut off with 429 and Retry-After while
// another client is served.
func TestPerIPRateLimit(t *testing.T) {
	v1 := startAgent(t, "127.0.0.83", "catalog", startApp(t, "127.0.0.83", "catalog-1"))
	cp := startControlPlane(t)
	ca := newCA(t)
	g := startGateway(t, cp, ca, func(c *config.Config) {
		c.Gateway.Limits.PerIP = config.RateLimit{MaxTokens: 5, TokensPerFill: 1, FillInterval: time.Minute}
	})
	cp.set(t, g.node, gwConfig{services: map[string][]string{"catalog": {v1}}, routes: &routev3.RouteConfiguration{
		VirtualHosts: []*routev3.VirtualHost{{Name: "shop", Domains: []string{"*"}, Routes: []*routev3.Route{prefixRoute("all", "/", toCluster("catalog"))}}}}})
	g.client = clientFrom(g, ca, "127.0.0.84")
	meshtest.Eventually(t, 15*time.Second, func() error {
		resp, _ := g.get(t, "shop.test", "/", nil)
		if resp.StatusCode != 200 {
			return fmt.Errorf("%d %s", resp.StatusCode, resp.Header.Get("x-mesh-reason"))
		}
		return nil
	})
	var limited *http.Response
	for i := 0; i < 10; i++ {
		resp, _ := g.get(t, "shop.test", "/", nil)
		if resp.StatusCode == 429 {
			limited = resp
			break
		}
	}
	if limited == nil || limited.Header.Get("Retry-After") == "" || limited.Header.Get("x-mesh-reason") != "rate-limited" {
		t.Fatalf("a burst of 10 from one IP with 5 tokens was not cut off with 429 + Retry-After: %v", limited)
	}
	g.client = clientFrom(g, ca, "127.0.0.85") // another client
	if resp, _ := g.get(t, "shop.test", "/", nil); resp.StatusCode != 200 {
		t.Fatalf("another client got %d while the first was limited", resp.StatusCode)
	}
}
