package translate_test

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/controlplane/translate"
	"github.com/meshvm/mesh/wire"
	"github.com/meshvm/mesh/wire/wiretest"
)

// gatewayConfig has a route of every kind: JWT with a claim rule, a split
// onto a service the model does not know yet, API key or JWT, a redirect
// served on plain HTTP, a direct response, header and method matches,
// rewrites, header mutations, a timeout and retries.
func gatewayConfig(t *testing.T) *translate.Gateway {
	t.Helper()
	jwks, err := os.ReadFile(wiretest.File(wiretest.GatewayIdPJWKS))
	if err != nil {
		t.Fatal(err)
	}
	return &translate.Gateway{
		JWKS: map[string]string{"idp": string(jwks)},
		Config: config.ControlGateway{
			JWTProviders: []config.JWTProvider{
				{Name: "idp", Issuer: "https://idp.example", Audiences: []string{"shop"}, JWKSFile: "/etc/mesh/jwks.json",
					ClaimsToHeaders: map[string]string{"sub": "x-user-id", "email": "x-user-email"}},
				{Name: "partners", Issuer: "https://partners.example", JWKSURL: "https://partners.example/.well-known/jwks.json",
					FromHeaders: []config.TokenHeader{{Name: "x-partner-token"}}, FromCookies: []string{"partner_session"}, ClockSkew: 10 * time.Second},
			},
			APIKeys: []config.GatewayAPIKey{{Subject: "billing-batch", Hash: "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"}},
			Routes: []config.GatewayRoute{
				{Name: "orders-read", Host: "shop.example.com", PathPrefix: "/api/orders", Methods: []string{"GET", "HEAD"}, Service: "orders",
					Rewrite: "/orders", Timeout: 5 * time.Second,
					Auth: config.RouteAuth{JWT: "idp", Require: "required", Claims: map[string]string{"scope": "orders:read"},
						ClaimRules: []config.ClaimRule{{Claim: "https://example.com/Roles", Contains: "Buyer"}}}},
				{Host: "shop.example.com", PathPrefix: "/api/orders", Methods: []string{"POST"},
					Split:   []config.SplitTarget{{Service: "orders", Weight: 90}, {Service: "orders-v2", Weight: 10}},
					Headers: []config.HeaderMatch{{Name: "x-tester", Exact: "yes", Invert: true}},
					Retries: config.RouteRetries{Attempts: 2, PerTryTimeout: time.Second, RetryOn: []string{"5xx", "connect-failure"}},
					Auth:    config.RouteAuth{JWT: "idp", Require: "optional"}},
				{Name: "payments", Host: "*.example.com", PathRegex: "/pay/v[0-9]+/.*", Service: "payments",
					RewriteRegex:         config.RegexRewrite{Pattern: "^/pay/v[0-9]+", Substitution: ""},
					HeadersToAdd:         map[string]string{"x-via": "mesh-gateway", "x-discount": "10%"},
					HeadersToRemove:      []string{"x-internal"},
					ResponseHeadersToAdd: map[string]string{"strict-transport-security": "max-age=31536000"},
					Query:                []config.QueryMatch{{Name: "debug", Exact: "1"}, {Name: "trace"}},
					Auth:                 config.RouteAuth{JWT: "partners", APIKey: true},
					CORS: config.RouteCORS{AllowOrigins: []string{"https://shop.example.com", "https://admin.example.com"}, AllowMethods: []string{"GET", "POST"},
						AllowHeaders: []string{"Authorization", "X-Api-Key"}, ExposeHeaders: []string{"x-request-id"}, MaxAge: 10 * time.Minute, AllowCredentials: true}},
				{Name: "search", Host: "shop.example.com", PathPrefix: "/search", Service: "search", HostRewrite: "search.internal",
					Headers: []config.HeaderMatch{{Name: "x-debug", Absent: true}, {Name: "user-agent", Regex: "curl/.*"}},
					Auth:    config.RouteAuth{APIKey: true, Require: "optional"}},
				{Name: "old-shop", Host: "old.example.com", Redirect: config.RouteRedirect{Host: "shop.example.com", Prefix: "/", Code: 308}, PathPrefix: "/shop/", Plaintext: true},
				{Name: "robots", Path: "/robots.txt", DirectResponse: config.DirectResponse{Status: 200, Body: "User-agent: *\nDisallow: /api\n"}, Plaintext: true},
			},
		},
	}
}

func gatewayNode() model.Node {
	return model.Node{ID: "gw-1", Gateway: true, HTTPSAddr: "127.0.0.1:8443", HTTPAddr: "127.0.0.1:8080"}
}

func gatewayMesh(t *testing.T, g *translate.Gateway) *translate.Mesh {
	t.Helper()
	m := realistic()
	tr := translate.NewTranslator()
	tr.SetGateway(g)
	mesh, err := tr.Translate(&m, policies())
	if err != nil {
		t.Fatal(err)
	}
	return mesh
}

// TestGatewayGolden: a gateway node's whole output, against the golden
// file the gateway's tests read (wire/testdata/gateway.golden.json).
func TestGatewayGolden(t *testing.T) {
	mesh := gatewayMesh(t, gatewayConfig(t))
	all := nodeResources(t, mesh, gatewayNode())
	if err := translate.Validate(all); err != nil {
		t.Fatalf("node view invalid: %v", err)
	}
	if err := translate.Consistent(all); err != nil {
		t.Fatalf("node view inconsistent: %v", err)
	}
	got := dump(t, all)
	path := wiretest.Path(wiretest.Gateway)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the translation; diff it with go test -update and git diff", path)
	}
}

func TestGatewayNode(t *testing.T) {
	mesh := gatewayMesh(t, gatewayConfig(t))
	all := nodeResources(t, mesh, gatewayNode())
	// The gateway gets no agent listeners, every service's cluster, and
	// its own: orders-v2 (unknown yet) and the remote JWKS's.
	if _, ok := all.Listeners[wire.OutboundListener]; ok || len(all.Listeners) != 2 {
		t.Errorf("listeners %v", keys(all.Listeners))
	}
	for _, c := range []string{"orders", "payments", "search", "orders-v2", wire.JWKSClusterPrefix + "partners"} {
		if _, ok := all.Clusters[c]; !ok {
			t.Errorf("no cluster %s in %v", c, keys(all.Clusters))
		}
	}
	if _, ok := all.Endpoints["orders-v2"]; !ok {
		t.Errorf("no load assignment for orders-v2")
	}
	if len(all.Routes) != 1 || all.Routes[wire.GatewayRoute] == nil {
		t.Fatalf("routes %v", keys(all.Routes))
	}
	l := all.Listeners[wire.GatewayHTTPSListener].(*listenerv3.Listener)
	var hcm hcmv3.HttpConnectionManager
	if err := l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		t.Fatal(err)
	}
	var filters []string
	for _, f := range hcm.GetHttpFilters() {
		filters = append(filters, f.GetName())
	}
	if got, want := strings.Join(filters, ","), strings.Join([]string{wire.HeaderMutationFilter, wire.CORSFilter, wire.JWTAuthnFilter, wire.APIKeyFilter, wire.RBACFilter, wire.RouterFilter}, ","); got != want {
		t.Errorf("filters %s, want %s", got, want)
	}
	if hcm.GetRds().GetRouteConfigName() != wire.GatewayRoute {
		t.Errorf("rds %v", hcm.GetRds())
	}
	// An agent still gets its own listeners only.
	agent := nodeResources(t, mesh, model.Node{ID: "vm-9"})
	if _, ok := agent.Listeners[wire.GatewayHTTPSListener]; ok {
		t.Error("an agent got the gateway listener")
	}
	// The same config gives the same messages (no churn for the node).
	m2 := realistic()
	tr := translate.NewTranslator()
	tr.SetGateway(gatewayConfig(t))
	a, _ := tr.Translate(&m2, policies())
	na, _ := a.Node(gatewayNode())
	b, _ := tr.Translate(&m2, policies())
	nb, _ := b.Node(gatewayNode())
	if !na.SameOwn(nb) {
		t.Error("an unchanged gateway config rebuilt the gateway node's resources")
	}
	tr.SetGateway(nil)
	c, err := tr.Translate(&m2, policies())
	if err != nil {
		t.Fatal(err)
	}
	nc, _ := c.Node(gatewayNode())
	if nc.SameOwn(nb) {
		t.Error("a changed gateway config kept the old resources")
	}
	rc := nc.Resources().Routes[wire.GatewayRoute].(*routev3.RouteConfiguration)
	if len(rc.GetVirtualHosts()) != 1 || rc.GetVirtualHosts()[0].GetRoutes()[0].GetRedirect().GetHttpsRedirect() != true {
		t.Errorf("no gateway config: want only the HTTPS redirect, got %v", rc)
	}
}

func TestGatewayErrors(t *testing.T) {
	g := gatewayConfig(t)
	g.JWKS = map[string]string{"idp": `{"keys": []}`}
	m := realistic()
	tr := translate.NewTranslator()
	tr.SetGateway(g)
	if _, err := tr.Translate(&m, policies()); err == nil || !strings.Contains(err.Error(), "control.gateway.jwt_providers[0] (idp): jwks_file /etc/mesh/jwks.json: no keys") {
		t.Errorf("got %v", err)
	}
	g.JWKS = nil
	if _, err := tr.Translate(&m, policies()); err == nil || !strings.Contains(err.Error(), "were not read") {
		t.Errorf("got %v", err)
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
