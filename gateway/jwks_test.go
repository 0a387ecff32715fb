package gateway_test

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	"github.com/go-jose/go-jose/v4"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/meshtest"
)

// A provider whose keys come from a JWKS URL (Envoy's remote_jwks): the
// gateway fetches them itself; with the endpoint down, a control-plane
// push (a route added) keeps the last good keys, so signed requests go on
// being accepted.
func TestRemoteJWKSSurvivesAPushWhileDown(t *testing.T) {
	v1 := startAgent(t, "127.0.0.93", "jwks-orders", startApp(t, "127.0.0.93", "jwks-orders-1"))
	is := newIssuer(t, t.TempDir())
	set, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &is.key.PublicKey, KeyID: is.kid, Algorithm: "RS256", Use: "sig"}}})
	var down atomic.Bool
	var fetches atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.93:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		if down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write(set)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	filter := &jwtv3.JwtAuthentication{
		Providers: map[string]*jwtv3.JwtProvider{"idp": {
			Issuer: is.iss, Audiences: []string{"shop"},
			JwksSourceSpecifier: &jwtv3.JwtProvider_RemoteJwks{RemoteJwks: &jwtv3.RemoteJwks{
				HttpUri: &corev3.HttpUri{Uri: "http://" + ln.Addr().String() + "/jwks.json",
					HttpUpstreamType: &corev3.HttpUri_Cluster{Cluster: "idp-jwks"}}}},
			ClaimToHeaders: []*jwtv3.JwtClaimToHeader{{HeaderName: "x-user-id", ClaimName: "sub"}},
		}},
		RequirementMap: map[string]*jwtv3.JwtRequirement{"user": {RequiresType: &jwtv3.JwtRequirement_ProviderName{ProviderName: "idp"}}},
	}
	routes := func(extra bool) *routev3.RouteConfiguration {
		api := prefixRoute("api", "/api", toCluster("jwks-orders"))
		api.TypedPerFilterConfig = perRoute(t, "user")
		rs := []*routev3.Route{api}
		if extra {
			rs = append(rs, prefixRoute("public", "/public", toCluster("jwks-orders")))
		}
		return &routev3.RouteConfiguration{VirtualHosts: []*routev3.VirtualHost{{Name: "shop", Domains: []string{"*"}, Routes: rs}}}
	}
	cp := startControlPlane(t)
	ca := newCA(t)
	g := startGateway(t, cp, ca, func(c *config.Config) { c.Gateway.Limits.PerIP = config.RateLimit{} })
	services := map[string][]string{"jwks-orders": {v1}}
	cp.set(t, g.node, gwConfig{services: services, routes: routes(false), jwt: filter})
	bearer := map[string]string{"Authorization": "Bearer " + is.token(t, "user-9", time.Hour, nil)}
	meshtest.Eventually(t, 15*time.Second, func() error {
		if resp, _ := g.get(t, "shop.test", "/api/x", bearer); resp.StatusCode != 200 {
			return fmt.Errorf("signed request: %d %s", resp.StatusCode, resp.Header.Get("x-mesh-reason"))
		}
		return nil
	})
	if fetches.Load() == 0 {
		t.Fatal("the gateway never fetched the JWKS URL")
	}

	down.Store(true)
	cp.set(t, g.node, gwConfig{services: services, routes: routes(true), jwt: filter})
	meshtest.Eventually(t, 15*time.Second, func() error {
		if resp, _ := g.get(t, "shop.test", "/public/x", nil); resp.StatusCode != 200 {
			return fmt.Errorf("the pushed route is not served yet: %d %s", resp.StatusCode, resp.Header.Get("x-mesh-reason"))
		}
		return nil
	})
	// A token not seen before: verified with the keys, not from the cache.
	fresh := map[string]string{"Authorization": "Bearer " + is.token(t, "user-10", 2*time.Hour, nil)}
	for _, hdr := range []map[string]string{bearer, fresh} {
		resp, body := g.get(t, "shop.test", "/api/x", hdr)
		if resp.StatusCode != 200 {
			t.Fatalf("after a push with the JWKS URL down: %d %s, want 200 (the last good keys)", resp.StatusCode, resp.Header.Get("x-mesh-reason"))
		}
		h, _ := body["headers"].(map[string]any)
		if got, _ := h["X-User-Id"].([]any); len(got) != 1 {
			t.Fatalf("app saw X-User-Id %v", got)
		}
	}
	if resp, _ := g.get(t, "shop.test", "/api/x", nil); resp.StatusCode != 401 {
		t.Fatalf("no token after the push: %d, want 401", resp.StatusCode)
	}
}
