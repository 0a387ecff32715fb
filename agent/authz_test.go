package agent_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/wire"
)

// writeAuthz replaces the control plane's authorization (a YAML list,
// indented under control:) and reloads it with SIGHUP.
func (c *control) writeAuthz(t *testing.T, authorization string) {
	t.Helper()
	c.reload(t, "  authorization:\n"+authorization)
}

// expectAuthz waits until every call (method, path) through the outbound
// address to host gets its status, and a 403 says rbac-denied (a push
// takes effect within the debounce and the xDS round trip).
func expectAuthz(t *testing.T, outbound, host, phase string, calls map[[2]string]int) {
	t.Helper()
	call := func(method, path string) (int, string) {
		req, _ := http.NewRequest(method, "http://"+outbound+path, nil)
		req.Host = host
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, resp.Header.Get(wire.ReasonHeader)
	}
	meshtest.Eventually(t, 30*time.Second, func() error {
		for c, want := range calls {
			status, reason := call(c[0], c[1])
			if status != want {
				return fmt.Errorf("%s: %s %s got %d %q, want %d", phase, c[0], c[1], status, reason, want)
			}
			if want == http.StatusForbidden && reason != wire.ReasonRBACDenied {
				return fmt.Errorf("%s: %s %s refused with x-mesh-reason %q, want %s", phase, c[0], c[1], reason, wire.ReasonRBACDenied)
			}
		}
		return nil
	})
}

// TestAuthorizationRulesPushedLive: rules in mesh control's YAML reach
// the callee's agent as RBAC filters and a change applies live (SIGHUP,
// no restart): a call flips from 403 rbac-denied to 200 and back, as the
// caller's app sees it through both agents. The callers here are
// plaintext (no verified identity), so the rules are on methods and
// paths, the default, and "*" (any authenticated caller), which a
// plaintext caller never is.
func TestAuthorizationRulesPushedLive(t *testing.T) {
	cp := newControl(t, controlOptions{})
	orders := startApp(t, "127.0.0.111", "orders", nil)
	callee := startAgent(t, "127.0.0.111", "orders", orders, withControlPlane(cp.xdsAddr))
	web := startApp(t, "127.0.0.112", "web", nil)
	caller := startAgent(t, "127.0.0.112", "web", web, withControlPlane(cp.xdsAddr))
	waitEndpoints(t, caller, "orders", 1)

	expect := func(phase string, calls map[[2]string]int) {
		t.Helper()
		expectAuthz(t, caller.Addr("outbound"), "orders", phase, calls)
	}
	get, post := http.MethodGet, http.MethodPost

	expect("no rules", map[[2]string]int{{get, "/api/x"}: 200, {post, "/api/x"}: 200})

	// Zero trust: only authenticated callers, which a plaintext one is not.
	cp.writeAuthz(t, `    - service: orders
      default: deny
      rules:
        - {action: allow, from: ["*"]}
`)
	expect("default deny, allow authenticated callers", map[[2]string]int{{get, "/api/x"}: 403, {post, "/api/x"}: 403})
	servedBefore := orders.served.Load()

	// The rule change that lets the call through: GETs under /api/ from
	// anyone, still default deny, and a deny rule that wins over it.
	cp.writeAuthz(t, `    - service: orders
      default: deny
      rules:
        - {action: allow, from: ["*"]}
        - {name: reads, action: allow, methods: [GET], paths: [/api/]}
        - {name: no-admin, action: deny, paths: [/api/admin]}
`)
	expect("GET /api/ allowed", map[[2]string]int{{get, "/api/x"}: 200, {post, "/api/x"}: 403, {get, "/api/admin/users"}: 403, {get, "/other"}: 403})
	if orders.served.Load() == servedBefore {
		t.Error("the app served nothing after the rule allowed the call")
	}

	// What the callee's agent holds and counts, and what mesh control shows.
	var d struct {
		Table struct {
			Inbound struct {
				Authorization struct {
					Deny, Allow []struct{ Name string }
					DefaultDeny bool `json:"default_deny"`
				}
			}
		}
	}
	getJSON(t, "http://"+callee.Addr("admin")+"/config_dump", &d)
	az := d.Table.Inbound.Authorization
	var names []string
	for _, r := range append(az.Deny, az.Allow...) {
		names = append(names, r.Name)
	}
	if !az.DefaultDeny || strings.Join(names, ",") != "no-admin,allow-0,reads" {
		t.Errorf("callee's config_dump authorization: default deny %v, rules %v; want true, [no-admin allow-0 reads]", az.DefaultDeny, names)
	}
	var cd struct {
		Authorization []struct {
			Service, Default string
			Rules            []struct{ Name, Action string }
		}
	}
	getJSON(t, "http://"+cp.adminAddr+"/config_dump", &cd)
	if len(cd.Authorization) != 1 || cd.Authorization[0].Service != "orders" || len(cd.Authorization[0].Rules) != 3 {
		t.Errorf("mesh control's config_dump authorization %+v, want orders' 3 rules", cd.Authorization)
	}
	metrics := getText(t, "http://"+callee.Addr("admin")+"/metrics")
	for _, want := range []string{
		`mesh_rbac_decisions_total{action="allow",rule="reads",service="orders"}`,
		`mesh_rbac_decisions_total{action="deny",rule="no-admin",service="orders"}`,
		`mesh_rbac_decisions_total{action="deny",rule="default",service="orders"}`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("callee's /metrics lacks %s", want)
		}
	}

	// Back to open: the rules removed, everything is served again.
	cp.writeAuthz(t, "    []\n")
	expect("rules removed", map[[2]string]int{{post, "/api/x"}: 200, {get, "/other"}: 200})
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("%s: %v", url, err)
	}
}

func getText(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestAuthorizationTCPPushedLive: a tcp app's rules apply per connection
// (the RBAC network filter), live: a plaintext caller's connection to a
// real Redis through both agents is closed under default deny, and goes
// through again once the rules allow it.
func TestAuthorizationTCPPushedLive(t *testing.T) {
	cp := newControl(t, controlOptions{})
	redis := meshtest.StartRedis(t, "127.0.0.113")
	_, rport, _ := net.SplitHostPort(redis.Addr)
	rp, _ := strconv.Atoi(rport)
	callee := startAgent(t, "127.0.0.113", "cache", &app{port: rp}, func(c *config.Config) {
		c.Agent.ControlPlane = []string{cp.xdsAddr}
		c.Agent.AppHealth, c.Agent.AppProtocol = "", config.AppProtocolTCP
	})
	up := net.JoinHostPort("127.0.0.114", strconv.Itoa(meshtest.FreePort("127.0.0.114")))
	web := startApp(t, "127.0.0.114", "web", nil)
	caller := startAgent(t, "127.0.0.114", "web", web, func(c *config.Config) {
		c.Agent.ControlPlane = []string{cp.xdsAddr}
		c.Agent.Upstreams = []config.Upstream{{Service: "cache", Listen: up, Protocol: config.UpstreamTCP}}
	})
	waitEndpoints(t, caller, "cache", 1)
	ping := func() error {
		got, err := meshtest.RedisCommand(up, "PING")
		if err == nil && !strings.HasSuffix(got, "PONG") {
			err = fmt.Errorf("PING answered %q", got)
		}
		return err
	}
	meshtest.Eventually(t, 20*time.Second, ping)

	cp.writeAuthz(t, `    - service: cache
      default: deny
      rules:
        - {action: allow, from: [web]}
`)
	meshtest.Eventually(t, 20*time.Second, func() error {
		if err := ping(); err == nil {
			return fmt.Errorf("a plaintext caller still reaches Redis under default deny")
		}
		return nil
	})
	metrics := getText(t, "http://"+callee.Addr("admin")+"/metrics")
	if want := `mesh_rbac_decisions_total{action="deny",rule="default",service="cache"}`; !strings.Contains(metrics, want) {
		t.Errorf("callee's /metrics lacks %s", want)
	}

	cp.writeAuthz(t, `    - service: cache
      default: allow
      rules:
        - {action: deny, from: [batch]}
`)
	meshtest.Eventually(t, 20*time.Second, ping)
}
