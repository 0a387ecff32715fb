package controlplane_test

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/routematch"
	"github.com/meshvm/mesh/wire"
)

func gatewayNode(id string) *corev3.Node {
	md, _ := structpb.NewStruct(map[string]any{wire.NodeRole: wire.RoleGateway, wire.NodeGatewayHTTPSAddr: "127.0.0.1:18443"})
	return &corev3.Node{Id: id, Metadata: md, UserAgentName: wire.GatewayUserAgent}
}

// gatewayRoutes compiles the pushed route configuration with the matcher
// the gateway serves it with and says where HTTPS requests for
// shop.example.com/v1/x and /v2/x go.
func gatewayRoutes(t *testing.T, r *discovery.DiscoveryResponse) string {
	t.Helper()
	rc := decode(t, r, func() *routev3.RouteConfiguration { return &routev3.RouteConfiguration{} })[wire.GatewayRoute]
	if rc == nil {
		t.Fatalf("no %s in %s", wire.GatewayRoute, r.GetTypeUrl())
	}
	tb, err := routematch.Compile(rc)
	if err != nil {
		t.Fatalf("the gateway cannot serve the pushed routes: %v", err)
	}
	var out []string
	for _, path := range []string{"/v1/x", "/v2/x"} {
		req, _ := http.NewRequest("GET", "https://shop.example.com"+path, nil)
		rt, ok := tb.Match(req)
		if ok && rt.Kind == routematch.Forward {
			out = append(out, path+"->"+rt.Pick(0))
		} else {
			out = append(out, path+"->none")
		}
	}
	return strings.Join(out, " ")
}

func jwksOf(t *testing.T, r *discovery.DiscoveryResponse) string {
	t.Helper()
	l := decode(t, r, func() *listenerv3.Listener { return &listenerv3.Listener{} })[wire.GatewayHTTPSListener]
	if l == nil {
		t.Fatalf("no %s listener", wire.GatewayHTTPSListener)
	}
	var hcm hcmv3.HttpConnectionManager
	if err := l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		t.Fatal(err)
	}
	for _, f := range hcm.GetHttpFilters() {
		if f.GetName() == wire.JWTAuthnFilter {
			var j jwtv3.JwtAuthentication
			if err := f.GetTypedConfig().UnmarshalTo(&j); err != nil {
				t.Fatal(err)
			}
			return j.GetProviders()["idp"].GetLocalJwks().GetInlineString()
		}
	}
	t.Fatal("no jwt_authn filter")
	return ""
}

// A gateway's routes and keys come from mesh control's file and follow it
// live: on SIGHUP a route change reaches a connected gateway on its open
// stream as a new route configuration, a changed jwks_file as a new
// listener; a file naming an unknown provider is refused and nothing is
// pushed.
func TestGatewayRoutesReload(t *testing.T) {
	bin := meshtest.BuildMesh(t)
	register(t, regOf("gwroutes-1", "gwroutes", "127.0.0.63", 15006, "z1"), "passing")
	register(t, regOf("gwroutes2-1", "gwroutes2", "127.0.0.64", 15006, "z1"), "passing")
	dir := t.TempDir()
	jwks := filepath.Join(dir, "jwks.json")
	writeJWKS := func(kid string) {
		body := fmt.Sprintf(`{"keys":[{"kty":"EC","kid":%q,"crv":"P-256","alg":"ES256","x":"1Zos_CWyRXbvweOHaXqUV-sHIuGYivZmAc0lJ87yy2s","y":"w1jHp5E0gcmv1fUWRXzjZaj0V5RN0Uz7JfRX_PMdGBg"}]}`, kid)
		if err := os.WriteFile(jwks, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeJWKS("k1")
	xdsAddr := fmt.Sprintf("127.0.0.1:%d", meshtest.FreePort("127.0.0.1"))
	adminAddr := fmt.Sprintf("127.0.0.1:%d", meshtest.FreePort("127.0.0.1"))
	cfgPath := filepath.Join(dir, "mesh.yaml")
	writeCfg := func(routes string) {
		body := fmt.Sprintf(`consul:
  addr: %s
control:
  xds_addr: %s
  admin_addr: %s
  debounce: 20ms
  gateway:
    jwt_providers:
      - {name: idp, issuer: https://idp.example, jwks_file: %s, claims_to_headers: {sub: x-user-id}}
    routes:
%s`, testConsul.Addr, xdsAddr, adminAddr, jwks, routes)
		if err := os.WriteFile(cfgPath, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeCfg(`      - {host: shop.example.com, path_prefix: /v1, service: gwroutes, auth: {jwt: idp}}
`)
	proc := meshtest.StartProcess(t, nil, bin, "control", "--config", cfgPath)
	meshtest.Eventually(t, 20*time.Second, func() error {
		code, err := httpGet("http://" + adminAddr + "/ready")
		if err != nil || code != http.StatusOK {
			return fmt.Errorf("/ready: %d %v", code, err)
		}
		return nil
	})

	c := dialADS(t, xdsAddr, gatewayNode("gw-reload"))
	c.subscribe(resourcev3.ClusterType, nil)
	l := c.subscribe(resourcev3.ListenerType, nil)
	if got := keys(decode(t, l, func() *listenerv3.Listener { return &listenerv3.Listener{} })); strings.Join(got, ",") != wire.GatewayHTTPListener+","+wire.GatewayHTTPSListener {
		t.Fatalf("a gateway got listeners %v", got)
	}
	if !strings.Contains(jwksOf(t, l), `"k1"`) {
		t.Fatalf("jwks not inline from the file: %s", jwksOf(t, l))
	}
	r := c.subscribe(resourcev3.RouteType, []string{wire.GatewayRoute})
	if got, want := gatewayRoutes(t, r), "/v1/x->gwroutes /v2/x->none"; got != want {
		t.Fatalf("routes %s, want %s", got, want)
	}

	// The route moves to /v2 and to another service; the key set rotates.
	writeCfg(`      - {host: shop.example.com, path_prefix: /v2, service: gwroutes2, auth: {jwt: idp}}
`)
	writeJWKS("k2")
	proc.Signal(syscall.SIGHUP)
	var sawRoutes, sawListeners bool
	for !sawRoutes || !sawListeners {
		r := c.recv(10 * time.Second)
		switch r.GetTypeUrl() {
		case resourcev3.RouteType:
			if got, want := gatewayRoutes(t, r), "/v1/x->none /v2/x->gwroutes2"; got != want {
				t.Errorf("routes after the reload %s, want %s", got, want)
			}
			sawRoutes = true
			c.ack(r, []string{wire.GatewayRoute})
		case resourcev3.ListenerType:
			if !strings.Contains(jwksOf(t, r), `"k2"`) {
				t.Errorf("the rotated jwks_file was not pushed: %s", jwksOf(t, r))
			}
			sawListeners = true
			c.ack(r, nil)
		default:
			t.Fatalf("after a route and key change got %s", r.GetTypeUrl())
		}
	}

	// A bad file is refused: nothing is pushed and the log says why.
	writeCfg(`      - {host: shop.example.com, path_prefix: /v3, service: gwroutes, auth: {jwt: nope}}
`)
	proc.Signal(syscall.SIGHUP)
	meshtest.Eventually(t, 5*time.Second, func() error {
		if !strings.Contains(proc.Output(), "control.gateway.routes[0].auth.jwt") {
			return fmt.Errorf("no log naming the bad field")
		}
		return nil
	})
	c.quiet(500 * time.Millisecond)
}
