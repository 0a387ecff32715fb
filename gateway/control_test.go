package gateway_test

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meshvm/mesh/authn"
	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/meshtest"
)

// The whole path with the real mesh control: routes and authentication
// written in its YAML, pushed over ADS to the gateway, requests routed to
// a service behind a real agent (apps registered in the real Consul); a
// route change on SIGHUP applies live with no failed request.
func TestRoutesFromMeshControl(t *testing.T) {
	startAgent(t, "127.0.0.91", "shop-orders", startApp(t, "127.0.0.91", "orders-1"))
	startAgent(t, "127.0.0.92", "shop-orders-v2", startApp(t, "127.0.0.92", "orders-2"))
	dir := t.TempDir()
	is := newIssuer(t, dir)
	xdsAddr := fmt.Sprintf("127.0.0.90:%d", meshtest.FreePort("127.0.0.90"))
	adminAddr := fmt.Sprintf("127.0.0.90:%d", meshtest.FreePort("127.0.0.90"))
	cfgPath := filepath.Join(dir, "mesh.yaml")
	writeCfg := func(publicTarget string) {
		body := fmt.Sprintf(`consul:
  addr: %s
control:
  xds_addr: %s
  admin_addr: %s
  debounce: 20ms
  ca:
    dir: %s
  gateway:
    jwt_providers:
      - {name: idp, issuer: %s, audiences: [shop], jwks_file: %s, claims_to_headers: {sub: x-user-id}}
    api_keys:
      - {subject: billing-batch, hash: %q}
    routes:
      - {host: shop.test, path_prefix: /api/orders, service: shop-orders, auth: {jwt: idp, claims: {scope: "orders:read"}}}
      - {host: shop.test, path_prefix: /billing, service: shop-orders, auth: {api_key: true}}
      - {host: shop.test, path_prefix: /public, %s, response_headers_to_remove: [x-internal-build], response_headers_to_add: {x-edge: shop}}
`, consul.Addr, xdsAddr, adminAddr, filepath.Join(dir, "ca"), is.iss, is.jwks, authn.HashAPIKey("s3cret-key"), publicTarget)
		if err := os.WriteFile(cfgPath, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeCfg("service: shop-orders")
	control := meshtest.StartProcess(t, nil, mesh(t), "control", "--config", cfgPath)
	meshtest.Eventually(t, 30*time.Second, func() error {
		resp, err := http.Get("http://" + adminAddr + "/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("control /ready %d", resp.StatusCode)
		}
		return nil
	})
	ca := newCA(t)
	g := startGateway(t, &controlPlane{addr: xdsAddr}, ca, func(c *config.Config) {
		c.Gateway.Limits.PerIP = config.RateLimit{}
	})
	meshtest.Eventually(t, 30*time.Second, func() error {
		resp, body := g.get(t, "shop.test", "/public/x", nil)
		if resp.StatusCode != 200 || body["app"] != "orders-1" {
			return fmt.Errorf("public route: %d %s %v", resp.StatusCode, resp.Header.Get("x-mesh-reason"), body["app"])
		}
		return nil
	})

	t.Run("response headers: the service's removed, the route's added", func(t *testing.T) {
		resp, _ := g.get(t, "shop.test", "/public/x", nil)
		if got := resp.Header.Get("X-Internal-Build"); got != "" {
			t.Errorf("the service's X-Internal-Build %q reached the client; the route removes it", got)
		}
		if got := resp.Header.Get("X-Edge"); got != "shop" {
			t.Errorf("X-Edge %q, want shop (the route adds it)", got)
		}
	})

	cases := []struct {
		name     string
		path     string
		hdr      map[string]string
		status   int
		reason   string
		wantUser string
	}{
		{name: "no token", path: "/api/orders/1", status: 401, reason: "auth-missing"},
		{name: "token with the scope", path: "/api/orders/1", status: 200, wantUser: "user-7",
			hdr: map[string]string{"Authorization": "Bearer " + is.token(t, "user-7", time.Hour, map[string]any{"scope": "orders:read profile"}), "X-User-Id": "forged"}},
		{name: "valid token without the scope is 403", path: "/api/orders/1", status: 403, reason: "auth-forbidden",
			hdr: map[string]string{"Authorization": "Bearer " + is.token(t, "user-7", time.Hour, map[string]any{"scope": "profile"})}},
		{name: "expired token", path: "/api/orders/1", status: 401, reason: "auth-invalid",
			hdr: map[string]string{"Authorization": "Bearer " + is.token(t, "user-7", -time.Hour, map[string]any{"scope": "orders:read"})}},
		{name: "api key", path: "/billing/run", status: 200, hdr: map[string]string{"X-Api-Key": "s3cret-key"}},
		{name: "wrong api key", path: "/billing/run", status: 401, reason: "auth-invalid", hdr: map[string]string{"X-Api-Key": "guess"}},
		{name: "no api key", path: "/billing/run", status: 401, reason: "auth-missing"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body := g.get(t, "shop.test", c.path, c.hdr)
			if resp.StatusCode != c.status || resp.Header.Get("x-mesh-reason") != c.reason {
				t.Fatalf("got %d %q, want %d %q", resp.StatusCode, resp.Header.Get("x-mesh-reason"), c.status, c.reason)
			}
			if c.status == 401 && resp.Header.Get("WWW-Authenticate") == "" {
				t.Fatal("401 without WWW-Authenticate")
			}
			h, _ := body["headers"].(map[string]any)
			if c.wantUser != "" {
				got, _ := h["X-User-Id"].([]any)
				if len(got) != 1 || got[0] != c.wantUser {
					t.Fatalf("app saw X-User-Id %v, want exactly [%s]", got, c.wantUser)
				}
			}
			if c.status == 200 && h["X-Api-Key"] != nil {
				t.Fatal("the API key was forwarded to the service")
			}
		})
	}

	t.Run("plain HTTP redirects to HTTPS", func(t *testing.T) {
		req, _ := http.NewRequest("GET", "http://"+g.g.Addr("http")+"/public/x", nil)
		req.Host = "shop.test"
		resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 3 || resp.Header.Get("Location") == "" {
			t.Fatalf("plain HTTP got %d Location %q, want a redirect to https", resp.StatusCode, resp.Header.Get("Location"))
		}
	})

	t.Run("a route change on SIGHUP applies live with no failed request", func(t *testing.T) {
		var failed atomic.Int64
		var first atomic.Value
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
					req, _ := http.NewRequest("GET", "https://"+g.https+"/public/live", nil)
					req.Host = "shop.test"
					resp, err := g.client.Do(req)
					if err != nil {
						failed.Add(1)
						first.CompareAndSwap(nil, err.Error())
						continue
					}
					resp.Body.Close()
					if resp.StatusCode != 200 {
						failed.Add(1)
						first.CompareAndSwap(nil, fmt.Sprint(resp.StatusCode, " ", resp.Header.Get("x-mesh-reason")))
					}
				}
			}()
		}
		time.Sleep(300 * time.Millisecond)
		writeCfg("service: shop-orders-v2")
		control.Signal(syscall.SIGHUP)
		meshtest.Eventually(t, 15*time.Second, func() error {
			if _, body := g.get(t, "shop.test", "/public/x", nil); body["app"] != "orders-2" {
				return fmt.Errorf("still routed to %v", body["app"])
			}
			return nil
		})
		time.Sleep(300 * time.Millisecond)
		close(stop)
		wg.Wait()
		if n := failed.Load(); n > 0 {
			t.Fatalf("%d requests failed across the route change (first: %v)", n, first.Load())
		}
	})

	t.Run("a weighted split written in mesh control's YAML: within 5% over 2000 requests", func(t *testing.T) {
		writeCfg("split: [{service: shop-orders, weight: 80}, {service: shop-orders-v2, weight: 20}]")
		control.Signal(syscall.SIGHUP)
		meshtest.Eventually(t, 15*time.Second, func() error {
			for i := 0; i < 20; i++ {
				if _, body := g.get(t, "shop.test", "/public/x", nil); body["app"] == "orders-1" {
					return nil
				}
			}
			return fmt.Errorf("the split is not applied yet: no request reached orders-1")
		})
		counts := map[string]int{}
		for i := 0; i < 2000; i++ {
			resp, body := g.get(t, "shop.test", "/public/split", nil)
			if resp.StatusCode != 200 {
				t.Fatalf("request %d: %d %s", i, resp.StatusCode, resp.Header.Get("x-mesh-reason"))
			}
			counts[fmt.Sprint(body["app"])]++
		}
		share := float64(counts["orders-2"]) / 2000
		t.Logf("split 80/20 over 2000 requests: %v", counts)
		if share < 0.15 || share > 0.25 || counts["orders-1"]+counts["orders-2"] != 2000 {
			t.Fatalf("shop-orders-v2 got %.1f%% of 2000 requests (%v), want 20%% ± 5", share*100, counts)
		}
	})
}
