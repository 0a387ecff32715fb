package gateway_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/meshtest"
)

// TestGatewayReachesStrictServiceWithItsIdentity: service secure-orders
// (a name no other test of the package registers in the shared Consul) takes
// mTLS only (strict), behind an agent holding a join-token identity. The
// gateway with its own join token (minted for its name) gets a
// certificate from mesh control, routes a request to orders over mTLS
// and the app sees the gateway's SPIFFE ID; a gateway without a token
// gets a prompt 502/503 naming why, not a hang.
func TestGatewayReachesStrictServiceWithItsIdentity(t *testing.T) {
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	xdsAddr := fmt.Sprintf("127.0.0.95:%d", meshtest.FreePort("127.0.0.95"))
	adminAddr := fmt.Sprintf("127.0.0.95:%d", meshtest.FreePort("127.0.0.95"))
	cfgPath := filepath.Join(dir, "mesh.yaml")
	body := fmt.Sprintf(`consul:
  addr: %s
control:
  xds_addr: %s
  admin_addr: %s
  debounce: 20ms
  ca:
    dir: %s
  xds:
    auth: optional
  mtls:
    default_mode: permissive
  services:
    secure-orders:
      mtls_mode: strict
  gateway:
    routes:
      - {host: shop.test, path_prefix: /orders, service: secure-orders}
`, consul.Addr, xdsAddr, adminAddr, caDir)
	if err := os.WriteFile(cfgPath, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	meshtest.StartProcess(t, nil, mesh(t), "control", "--config", cfgPath)
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
	ordersToken := mintGatewayTestToken(t, caDir, "secure-orders")
	gwToken := mintGatewayTestToken(t, caDir, "mesh-gateway")

	host := "127.0.0.96"
	app := startApp(t, host, "orders-1")
	ports := meshtest.FreePorts(host, 3)
	meshtest.StartProcess(t, nil, mesh(t), "agent", "--service", "secure-orders", "--app-port", strconv.Itoa(app),
		"--app-address", host, "--inbound-addr", net.JoinHostPort(host, strconv.Itoa(ports[0])),
		"--outbound-addr", net.JoinHostPort(host, strconv.Itoa(ports[1])),
		"--admin-addr", net.JoinHostPort(host, strconv.Itoa(ports[2])),
		"--consul-addr", consul.Addr, "--node", "vm-"+host, "--cache-dir", t.TempDir(), "--drain-period", "0s",
		"--app-protocol", "http1", "--log-format", "text",
		"--control-plane", xdsAddr, "--join-token-file", ordersToken)
	meshtest.Eventually(t, 30*time.Second, func() error {
		b, err := fetchBody("http://" + net.JoinHostPort(host, strconv.Itoa(ports[2])) + "/config_dump")
		if err != nil {
			return err
		}
		if !strings.Contains(b, `"inbound_mode": "strict"`) {
			return fmt.Errorf("orders agent not strict yet")
		}
		return nil
	})

	ca := newCA(t)
	cp := &controlPlane{addr: xdsAddr}

	t.Run("with its token: 200 over mTLS, the app sees the gateway's identity", func(t *testing.T) {
		g := startGateway(t, cp, ca, func(c *config.Config) {
			c.Gateway.Limits.PerIP = config.RateLimit{}
			c.Gateway.JoinTokenFile = gwToken
		})
		var last string
		meshtest.Eventually(t, 45*time.Second, func() error {
			resp, body := g.get(t, "shop.test", "/orders/1", nil)
			if resp.StatusCode != 200 {
				last = fmt.Sprint(resp.StatusCode, " ", resp.Header.Get("x-mesh-reason"))
				return fmt.Errorf("got %s", last)
			}
			h, _ := body["headers"].(map[string]any)
			got, _ := h["X-Mesh-Peer-Identity"].([]any)
			want := "spiffe://mesh.local/ns/default/svc/mesh-gateway"
			if len(got) != 1 || got[0] != want {
				return fmt.Errorf("app saw x-mesh-peer-identity %v, want [%s]", got, want)
			}
			return nil
		})
		dump := getBody(t, "http://"+g.g.Addr("admin")+"/config_dump")
		if !strings.Contains(dump, `"spiffe_id": "spiffe://mesh.local/ns/default/svc/mesh-gateway"`) || strings.Contains(dump, "PRIVATE KEY") {
			t.Errorf("config_dump identity: %s", dump)
		}
		if m := getBody(t, "http://"+g.g.Addr("admin")+"/metrics"); !strings.Contains(m, `mesh_cert_expiry_seconds{cert="workload"}`) {
			t.Error("no mesh_cert_expiry_seconds{cert=\"workload\"} on /metrics")
		}
	})

	t.Run("without a token: a prompt 502/503 with a reason", func(t *testing.T) {
		g := startGateway(t, cp, ca, func(c *config.Config) { c.Gateway.Limits.PerIP = config.RateLimit{} })
		meshtest.Eventually(t, 45*time.Second, func() error {
			resp, _ := g.get(t, "shop.test", "/orders/1", nil)
			if resp.StatusCode == 404 {
				return fmt.Errorf("not routed yet")
			}
			return nil
		})
		start := time.Now()
		resp, _ := g.get(t, "shop.test", "/orders/1", nil)
		if (resp.StatusCode != 502 && resp.StatusCode != 503) || resp.Header.Get("x-mesh-reason") != "upstream-connect-failure" {
			t.Fatalf("got %d reason %q, want 502/503 upstream-connect-failure (the gateway refuses to dial a strict service in plain text)", resp.StatusCode, resp.Header.Get("x-mesh-reason"))
		}
		if d := time.Since(start); d > 8*time.Second {
			t.Fatalf("took %s", d)
		}
		t.Logf("without a token: %d %s", resp.StatusCode, resp.Header.Get("x-mesh-reason"))
	})
}

func mintGatewayTestToken(t *testing.T, caDir, service string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), service+".token")
	out, err := exec.Command(mesh(t), "control", "token", "create", "--service", service, "--ttl", "1h", "--ca-dir", caDir, "--output", file).CombinedOutput()
	if err != nil {
		t.Fatalf("token create: %v\n%s", err, out)
	}
	return file
}

func getBody(t *testing.T, url string) string {
	t.Helper()
	b, err := fetchBody(url)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func fetchBody(url string) (string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}
