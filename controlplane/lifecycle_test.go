package controlplane_test

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshvm/mesh/meshtest"
)

// routeTimeout returns the route timeout of service's virtual host in an
// RDS response for mesh_outbound.
func routeTimeout(t *testing.T, r *discovery.DiscoveryResponse, service string) time.Duration {
	t.Helper()
	rc := decode(t, r, func() *routev3.RouteConfiguration { return &routev3.RouteConfiguration{} })["mesh_outbound"]
	for _, vh := range rc.GetVirtualHosts() {
		if vh.GetName() == service && len(vh.GetRoutes()) > 0 {
			return vh.GetRoutes()[0].GetRoute().GetTimeout().AsDuration()
		}
	}
	t.Fatalf("no virtual host %s in mesh_outbound", service)
	return 0
}

// metricsText returns the control plane's /metrics.
func metricsText(t *testing.T, admin string) string {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

// The systemd contract of `mesh control` as a process: READY=1 once /ready
// is 200, watchdog pings, RELOADING=1 then READY=1 on SIGHUP (a policy
// change reaches a connected ADS client on its open stream, a listen
// address change is named as needing a restart, a bad file is reported
// and changes nothing), and STOPPING=1 on SIGTERM, exit 0.
func TestSystemdLifecycle(t *testing.T) {
	bin := meshtest.BuildMesh(t)
	notify := meshtest.NewNotifySocket(t)
	register(t, regOf("reloadsvc-1", "reloadsvc", "127.0.0.61", 15006, "z1"), "passing")

	xdsAddr := fmt.Sprintf("127.0.0.1:%d", meshtest.FreePort("127.0.0.1"))
	adminAddr := fmt.Sprintf("127.0.0.1:%d", meshtest.FreePort("127.0.0.1"))
	cfgPath := filepath.Join(t.TempDir(), "mesh.yaml")
	caDir := filepath.Join(t.TempDir(), "ca")
	writeCfg := func(xds, level, timeout string) {
		body := fmt.Sprintf(`log:
  level: %s
consul:
  addr: %s
control:
  xds_addr: %s
  admin_addr: %s
  debounce: 20ms
  ca: {dir: %s}
policies:
  services:
    reloadsvc:
      timeout: %s
`, level, testConsul.Addr, xds, adminAddr, caDir, timeout)
		if err := os.WriteFile(cfgPath, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeCfg(xdsAddr, "info", "2s")

	proc := meshtest.StartProcess(t, []string{"NOTIFY_SOCKET=" + notify.Path, "WATCHDOG_USEC=200000"}, bin, "control", "--config", cfgPath)

	notify.WaitFor(t, "READY", 1)
	if code, err := httpGet("http://" + adminAddr + "/ready"); err != nil || code != http.StatusOK {
		t.Fatalf("READY=1 sent while /ready answers %d, %v", code, err)
	}
	if !notify.HasStatus("ready: serving") {
		t.Errorf("no ready STATUS: %v", notify.Without("WATCHDOG"))
	}
	notify.WaitFor(t, "WATCHDOG", 3)

	c := dialADS(t, xdsAddr, agentNode("vm-reload", "", 0))
	c.subscribe(resourcev3.ClusterType, nil)
	c.subscribe(resourcev3.ListenerType, nil)
	r := c.subscribe(resourcev3.RouteType, []string{"mesh_outbound"})
	if got := routeTimeout(t, r, "reloadsvc"); got != 2*time.Second {
		t.Fatalf("route timeout %s, want 2s from the file", got)
	}

	// A good change: a new timeout and log level apply live; a new xDS
	// address needs a restart and is kept.
	writeCfg(fmt.Sprintf("127.0.0.1:%d", meshtest.FreePort("127.0.0.1")), "debug", "7s")
	proc.Signal(syscall.SIGHUP)
	notify.WaitFor(t, "RELOADING", 1)
	notify.WaitFor(t, "READY", 2)
	r = c.recv(5 * time.Second)
	if r.GetTypeUrl() != resourcev3.RouteType {
		t.Fatalf("after the policy change got %s first, want only the route configuration", r.GetTypeUrl())
	}
	if got := routeTimeout(t, r, "reloadsvc"); got != 7*time.Second {
		t.Errorf("route timeout after reload %s, want 7s", got)
	}
	c.ack(r, []string{"mesh_outbound"})
	c.quiet(500 * time.Millisecond) // clusters and listeners did not change: not pushed
	if !notify.HasStatus("config reloaded; restart needed for", "control.xds_addr") {
		t.Errorf("no STATUS naming the restart-only xds_addr: %v", notify.Without("WATCHDOG"))
	}
	meshtest.Eventually(t, 5*time.Second, func() error {
		if !strings.Contains(proc.Output(), `"level":"debug"`) {
			return fmt.Errorf("no debug log line after log.level: debug was reloaded")
		}
		return nil
	})

	// A bad file: reported, and the running config stays.
	writeCfg(xdsAddr, "info", "soon")
	proc.Signal(syscall.SIGHUP)
	notify.WaitFor(t, "RELOADING", 2)
	notify.WaitFor(t, "READY", 3)
	if !notify.HasStatus("config reload failed", "policies.services.reloadsvc.timeout") {
		t.Errorf("no STATUS naming the bad field: %v", notify.Without("WATCHDOG"))
	}
	c.quiet(500 * time.Millisecond)
	metrics := metricsText(t, adminAddr)
	for _, want := range []string{`mesh_config_reloads_total{result="ok"} 1`, `mesh_config_reloads_total{result="error"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(metrics, "mesh_process_") || !strings.Contains(metrics, "process_resident_memory_bytes") {
		t.Error("process metrics are not the standard process_* names")
	}

	proc.Signal(syscall.SIGTERM)
	if err := proc.Wait(t, 20*time.Second); err != nil {
		t.Errorf("mesh control exit: %v, want 0", err)
	}
	if notify.Count("STOPPING") != 1 {
		t.Errorf("STOPPING=1 sent %d times, want once: %v", notify.Count("STOPPING"), notify.Without("WATCHDOG"))
	}
	select {
	case r, ok := <-c.resps:
		if ok {
			t.Errorf("the ADS stream got %s after the stop, want it closed", r.GetTypeUrl())
		}
	case <-time.After(5 * time.Second):
		t.Error("the ADS stream is still open after the stop")
	}
}
