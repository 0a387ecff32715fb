package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/meshvm/mesh/config"
)

const gatewayYAML = `
control:
  gateway:
    jwt_providers:
      - {name: idp, issuer: https://idp.example, audiences: [shop], jwks_file: /etc/mesh/jwks.json,
         claims_to_headers: {sub: x-user-id, preferred_username: X-User-Name},
         claim_headers: [{claim: https://example.com/Roles, header: x-roles}]}
      - name: partners
        issuer: https://partners.example
        jwks_url: https://partners.example/.well-known/jwks.json
        from_headers: [{name: x-partner-token}]
        from_cookies: [session]
    api_keys:
      - {subject: billing-batch, hash: "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"}
    routes:
      - {host: shop.example.com, path_prefix: /api/orders, service: orders,
         auth: {jwt: idp, require: required, claims: {scope: "orders:read"}, claim_rules: [{claim: https://example.com/Roles, contains: Admin}]}, timeout: 5s}
      - host: "*.example.com"
        path_regex: "/v[0-9]+/.*"
        methods: [GET, HEAD]
        headers: [{name: x-tester, exact: "yes"}, {name: x-debug, absent: true}]
        query: [{name: canary}]
        split: [{service: orders, weight: 90}, {service: orders-v2, weight: 10}]
        rewrite_regex: {pattern: "^/v[0-9]+", substitution: ""}
        headers_to_add: {x-via: mesh-gateway}
        headers_to_remove: [x-internal]
        retries: {attempts: 2, per_try_timeout: 1s, retry_on: [5xx, connect-failure]}
        auth: {api_key: true, jwt: partners, require: optional}
      - {host: shop.example.com, path: /old, redirect: {path: /new, code: 302}, plaintext: true}
      - {path: /robots.txt, direct_response: {status: 200, body: "User-agent: *"}}
      - {host: api.example.com, service: orders, cors: {allow_origins: [https://shop.example.com], allow_methods: [GET, POST], allow_headers: [authorization], max_age: 10m, allow_credentials: true}}
`

func TestControlGatewayLoads(t *testing.T) {
	jwks := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(jwks, []byte(`{"keys":[]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(Options{File: writeFile(t, strings.ReplaceAll(gatewayYAML, "/etc/mesh/jwks.json", jwks)), Role: RoleControl})
	if err != nil {
		t.Fatal(err)
	}
	g := c.Control.Gateway
	if len(g.JWTProviders) != 2 || len(g.Routes) != 5 || len(g.APIKeys) != 1 {
		t.Fatalf("got %+v", g)
	}
	p := g.JWTProviders[0]
	if p.Issuer != "https://idp.example" || p.ClaimsToHeaders["sub"] != "x-user-id" || p.ClaimsToHeaders["preferred_username"] != "X-User-Name" {
		t.Errorf("provider %+v", p)
	}
	if h := p.AllClaimHeaders(); h["https://example.com/Roles"] != "x-roles" || h["sub"] != "x-user-id" {
		t.Errorf("claim headers %v", h)
	}
	r := g.Routes[0]
	if c := r.Auth.AllClaims(); c["https://example.com/Roles"] != "Admin" || c["scope"] != "orders:read" {
		t.Errorf("claims %v", c)
	}
	if r.Timeout != 5*time.Second || r.Auth.Claims["scope"] != "orders:read" || r.Auth.Requirement() != AuthRequired {
		t.Errorf("route 0 %+v", r)
	}
	r = g.Routes[1]
	if r.Split[1].Weight != 10 || !r.Headers[1].Absent || r.Retries.PerTryTimeout != time.Second || r.HeadersToAdd["x-via"] != "mesh-gateway" {
		t.Errorf("route 1 %+v", r)
	}
	if c := g.Routes[4].CORS; !c.Set() || c.MaxAge != 10*time.Minute || !c.AllowCredentials || c.AllowMethods[1] != "POST" {
		t.Errorf("cors %+v", c)
	}
	if g.Routes[2].Redirect.Code != 302 || !g.Routes[2].Plaintext || g.Routes[3].DirectResponse.Body != "User-agent: *" {
		t.Errorf("routes 2, 3 %+v %+v", g.Routes[2], g.Routes[3])
	}
}

func TestControlGatewayErrors(t *testing.T) {
	base := `
control:
  gateway:
    jwt_providers: [{name: idp, issuer: https://idp.example, jwks_file: /j.json}]
    routes:
`
	for _, c := range []struct{ name, route, path, want string }{
		{"weights", `[{split: [{service: a, weight: 50}, {service: b, weight: 40}]}]`, "control.gateway.routes[0].split", "add up to 100, got 90"},
		{"unknown provider", `[{service: a, auth: {jwt: nope}}]`, "control.gateway.routes[0].auth.jwt", `"nope" is not a provider`},
		{"bad regex", `[{service: a, path_regex: "(("}]`, "control.gateway.routes[0].path_regex", "not an RE2 regular expression"},
		{"service and split", `[{service: a, split: [{service: b, weight: 100}]}]`, "control.gateway.routes[0]", "exactly one of service, split, redirect and direct_response (has 2)"},
		{"no action", `[{path: /x}]`, "control.gateway.routes[0]", "(has 0)"},
		{"two paths", `[{service: a, path: /a, path_prefix: /b}]`, "control.gateway.routes[0].path", "at most one"},
		{"bad method", `[{service: a, methods: [get]}]`, "control.gateway.routes[0].methods[0]", "not an HTTP method"},
		{"bad host", `[{service: a, host: "a.*.com"}]`, "control.gateway.routes[0].host", "not a host name or a wildcard"},
		{"claims without jwt", `[{service: a, auth: {api_key: true, claims: {scope: x}}}]`, "control.gateway.routes[0].auth.claims", "need a jwt provider"},
		{"api key without keys", `[{service: a, auth: {api_key: true}}]`, "control.gateway.routes[0].auth.api_key", "no control.gateway.api_keys"},
		{"bad require", `[{service: a, auth: {jwt: idp, require: maybe}}]`, "control.gateway.routes[0].auth.require", "not one of required"},
		{"none with jwt", `[{service: a, auth: {jwt: idp, require: none}}]`, "control.gateway.routes[0].auth.require", "none cannot name"},
		{"rewrite without prefix", `[{service: a, rewrite: /x}]`, "control.gateway.routes[0].rewrite", "needs the route's path_prefix"},
		{"timeout on redirect", `[{redirect: {host: x.com}, timeout: 1s}]`, "control.gateway.routes[0].timeout", "only applies to a route to a service"},
		{"bad status", `[{direct_response: {status: 42}}]`, "control.gateway.routes[0].direct_response.status", "200 to 599"},
		{"bad service", `[{service: Orders_1}]`, "control.gateway.routes[0].service", "not a valid service name"},
		{"bad header", `[{service: a, headers_to_add: {host: x}}]`, "control.gateway.routes[0].headers_to_add.host", "cannot set header"},
		{"shadowed", `[{host: a.com, path_prefix: /api, service: a}, {host: a.com, path_prefix: /api/orders, service: b}]`, "control.gateway.routes[1]", "can never match: routes[0] (host a.com, path_prefix /api) comes first"},
		{"shadowed by a catch-all", `[{service: a}, {path: /x, service: b, methods: [GET]}]`, "control.gateway.routes[1]", "can never match: routes[0] (host *, every path)"},
		{"cors origin", `[{service: a, cors: {allow_origins: [shop.example.com]}}]`, "control.gateway.routes[0].cors.allow_origins[0]", "not an origin"},
		{"cors credentials with *", `[{service: a, cors: {allow_origins: ["*"], allow_credentials: true}}]`, "control.gateway.routes[0].cors.allow_credentials", "browsers refuse it"},
		{"cors without origins", `[{service: a, cors: {allow_methods: [GET]}}]`, "control.gateway.routes[0].cors.allow_origins", "is required"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Load(Options{File: writeFile(t, base+"      "+c.route+"\n"), Role: RoleControl})
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("got %v, want a config error", err)
			}
			for _, f := range ce.Fields {
				if f.Path == c.path && strings.Contains(f.Msg, c.want) {
					return
				}
			}
			t.Errorf("got %v, want %s: ...%s", err, c.path, c.want)
		})
	}
	for _, c := range []struct{ name, body, path, want string }{
		{"unreadable jwks_file", `jwt_providers: [{name: idp, issuer: https://i, jwks_file: /nonexistent/jwks.json}]`, "control.gateway.jwt_providers[0].jwks_file", `cannot read "/nonexistent/jwks.json": no such file or directory`},
		{"both jwks", `jwt_providers: [{name: idp, issuer: https://i, jwks_file: /a, jwks_url: https://i/j}]`, "control.gateway.jwt_providers[0].jwks_file", "exactly one of jwks_file and jwks_url"},
		{"duplicate provider", `jwt_providers: [{name: idp, issuer: https://i, jwks_file: /a}, {name: idp, issuer: https://j, jwks_file: /a}]`, "control.gateway.jwt_providers[1].name", "already the name"},
		{"plain key", `api_keys: [{subject: s, hash: secret123}]`, "control.gateway.api_keys[0].hash", "never the key itself"},
		{"claim header", `jwt_providers: [{name: idp, issuer: https://i, jwks_file: /a, claims_to_headers: {sub: authorization}}]`, "control.gateway.jwt_providers[0].claims_to_headers.sub", "not a header a claim can be forwarded in"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Load(Options{File: writeFile(t, "control:\n  gateway:\n    "+c.body+"\n"), Role: RoleControl})
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("got %v, want a config error", err)
			}
			for _, f := range ce.Fields {
				if f.Path == c.path && strings.Contains(f.Msg, c.want) {
					return
				}
			}
			t.Errorf("got %v, want %s: ...%s", err, c.path, c.want)
		})
	}
}
