package agent_test

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshvm/mesh/meshtest"
)

func serviceTags(t *testing.T, service string) []string {
	t.Helper()
	entries, _, err := consul.Client.Catalog().Service(service, "", nil)
	if err != nil || len(entries) != 1 {
		return nil
	}
	return entries[0].ServiceTags
}

// The systemd contract of `mesh agent` as a process: READY=1 after the app
// is registered, RELOADING=1 then READY=1 on SIGHUP (a good change applied
// under load, a bad file reported and the running config kept), and
// STOPPING=1 on SIGTERM, exit 0, deregistered.
func TestSystemdLifecycle(t *testing.T) {
	bin := meshtest.BuildMesh(t)
	notify := meshtest.NewNotifySocket(t)
	app := startApp(t, "127.0.0.71", "inventory", nil)
	ports := map[string]int{}
	for _, l := range []string{"inbound", "outbound", "admin"} {
		ports[l] = meshtest.FreePort("127.0.0.71")
	}
	cfgPath := filepath.Join(t.TempDir(), "agent-inventory.yaml")
	writeCfg := func(body string) {
		if err := os.WriteFile(cfgPath, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	base := fmt.Sprintf(`consul:
  addr: %s
agent:
  service: inventory
  app_address: 127.0.0.71
  app_port: %d
  app_health: /health
  health_interval: 1s
  inbound_addr: 127.0.0.71:%d
  outbound_addr: 127.0.0.71:%d
  admin_addr: 127.0.0.71:%d
  node: vm-inventory
  cache_dir: %s
  drain_period: 200ms
`, consul.Addr, app.port, ports["inbound"], ports["outbound"], ports["admin"], t.TempDir())
	writeCfg(base + "  tags: [v1]\n")

	proc := meshtest.StartProcess(t, []string{"NOTIFY_SOCKET=" + notify.Path}, bin, "agent", "--config", cfgPath)

	notify.WaitFor(t, "READY", 1)
	if tags := serviceTags(t, "inventory"); !slices.Equal(tags, []string{"v1"}) {
		t.Fatalf("READY=1 before the registration was in Consul (tags %v)", tags)
	}

	// Steady load on the inbound listener while the config is reloaded.
	in := "http://127.0.0.71:" + strconv.Itoa(ports["inbound"]) + "/"
	l := startLoad(in, "")

	// A good change: new tags and a local rate limit for the agent's own
	// service take effect without a restart.
	writeCfg(base + "  tags: [v2, canary]\npolicies:\n  services:\n    inventory:\n      rate_limit: {max_tokens: 1, tokens_per_fill: 1, fill_interval: 1h}\n")
	proc.Signal(syscall.SIGHUP)
	notify.WaitFor(t, "RELOADING", 1)
	notify.WaitFor(t, "READY", 2)
	meshtest.Eventually(t, 10*time.Second, func() error {
		if tags := serviceTags(t, "inventory"); !slices.Equal(tags, []string{"v2", "canary"}) {
			return fmt.Errorf("tags in Consul %v, want [v2 canary]", tags)
		}
		return nil
	})
	l.stop()
	// The load ran into the new rate limit: only 429s may have failed.
	for _, e := range l.errs {
		if !strings.HasPrefix(e, "429 rate-limited") {
			t.Errorf("request failed across the reload: %s", e)
		}
	}
	if l.failed.Load() == 0 {
		t.Error("the reloaded rate limit never refused a request")
	}

	// A bad file: reported, and the running config stays.
	writeCfg(base + "  tags: [v3]\n  inbound_adr: oops\n")
	proc.Signal(syscall.SIGHUP)
	notify.WaitFor(t, "RELOADING", 2)
	notify.WaitFor(t, "READY", 3)
	if !slices.ContainsFunc(notify.States(), func(s string) bool {
		return strings.HasPrefix(s, "STATUS=config reload failed") && strings.Contains(s, "agent.inbound_adr")
	}) {
		t.Errorf("no STATUS naming the bad field: %v", notify.States())
	}
	if tags := serviceTags(t, "inventory"); !slices.Equal(tags, []string{"v2", "canary"}) {
		t.Errorf("a bad file changed the registration: tags %v", tags)
	}
	resp, err := http.Get("http://127.0.0.71:" + strconv.Itoa(ports["admin"]) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`mesh_config_reloads_total{result="ok"} 1`, `mesh_config_reloads_total{result="error"} 1`} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	proc.Signal(syscall.SIGTERM)
	if err := proc.Wait(t, 20*time.Second); err != nil {
		t.Errorf("agent exit: %v, want 0", err)
	}
	notify.WaitFor(t, "STOPPING", 1)
	if tags := serviceTags(t, "inventory"); tags != nil {
		t.Errorf("still registered after SIGTERM: %v", tags)
	}
}
