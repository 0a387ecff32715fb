package controlplane_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/observability"
)

func getBody(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func getReadiness(t *testing.T, admin string) observability.Readiness {
	t.Helper()
	body := getBody(t, "http://"+admin+"/ready?format=json")
	var rd observability.Readiness
	if err := json.Unmarshal([]byte(body), &rd); err != nil {
		t.Fatalf("/ready?format=json: %v: %s", err, body)
	}
	return rd
}

// TestConsulFailureKeepsLastGoodView: with Consul unreachable the control
// plane reports the error and pushes nothing (above all not "no
// endpoints"); when Consul is back, changes made meanwhile arrive.
func TestConsulFailureKeepsLastGoodView(t *testing.T) {
	register(t, regOf("inventory-1", "inventory", "127.0.0.61", 15006, "z1"), "passing")
	register(t, regOf("inventory-2", "inventory", "127.0.0.62", 15006, "z1"), "passing")
	rl := meshtest.StartRelay(t, testConsul.Addr)
	p := startPlane(t, rl.Addr(), nil)
	c := dialADS(t, p.xdsAddr, agentNode("vm-inventory-client", "", 0))
	c.subscribe(resourcev3.ClusterType, nil)
	names := []string{"inventory"}
	cla := decode(t, c.subscribe(resourcev3.EndpointType, names), func() *endpointv3.ClusterLoadAssignment { return &endpointv3.ClusterLoadAssignment{} })["inventory"]
	if n := len(cla.GetEndpoints()[0].GetLbEndpoints()); n != 2 {
		t.Fatalf("%d endpoints, want 2", n)
	}

	rl.Down()
	meshtest.Eventually(t, 5*time.Second, func() error {
		return metricAbove(p.adminAddr, `mesh_control_source_errors_total{source="consul"}`, 0)
	})
	// Consul changes while unreachable: invisible, and nothing is pushed.
	setCheck(t, "inventory-2", "critical")
	c.quiet(time.Second)
	if s := p.Model().Service("inventory"); s == nil || len(s.Endpoints) != 2 {
		t.Fatalf("model lost inventory's endpoints while Consul was down: %+v", s)
	}
	resp, err := httpGet("http://" + p.adminAddr + "/ready")
	if err != nil || resp != 200 {
		t.Errorf("/ready = %d, %v while serving the last good view; want 200", resp, err)
	}
	if !strings.Contains(p.logs.String(), "keeping the last good view") {
		t.Errorf("the outage was not logged as keeping the last good view")
	}
	// /ready says why it stays ready, and what fails meanwhile.
	rd := getReadiness(t, p.adminAddr)
	if !rd.Ready || len(rd.Conditions) != 2 || rd.Conditions[0].Name != "xds" || !rd.Conditions[0].OK ||
		rd.Conditions[1].Name != "source consul" || rd.Conditions[1].OK ||
		!strings.Contains(rd.Conditions[1].Detail, "failing, serving its last good view") {
		t.Errorf("/ready?format=json with consul down = %+v", rd)
	}
	// /config_dump speaks the config's language: policies' durations as
	// written in YAML, snake_case keys.
	body := getBody(t, "http://"+p.adminAddr+"/config_dump")
	for _, want := range []string{`"sleep_window": "5s"`, `"timeout": "15s"`, `"circuit_breaker": {`, `"last_success": "`} {
		if !strings.Contains(body, want) {
			t.Errorf("config_dump lacks %s", want)
		}
	}
	if strings.Contains(body, "SleepWindow") || strings.Contains(body, "5000000000") {
		t.Errorf("config_dump writes Go's names or nanoseconds:\n%s", body)
	}

	rl.Up(t)
	r := c.recv(10 * time.Second)
	if r.GetTypeUrl() != resourcev3.EndpointType {
		t.Fatalf("got %s, want EDS", r.GetTypeUrl())
	}
	cla = decode(t, r, func() *endpointv3.ClusterLoadAssignment { return &endpointv3.ClusterLoadAssignment{} })["inventory"]
	if h, err := endpointHealth(cla, "127.0.0.62", 15006); err != nil || h != corev3.HealthStatus_UNHEALTHY {
		t.Fatalf("after recovery inventory-2 is %v, %v; want UNHEALTHY", h, err)
	}
}

// TestConsulDownAtStart: /ready says what it waits for; the log does not
// claim a last good view it never had; once Consul answers it is ready.
func TestConsulDownAtStart(t *testing.T) {
	rl := meshtest.StartRelay(t, testConsul.Addr)
	rl.Down()
	p := launchPlane(t, rl.Addr(), nil)
	meshtest.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(p.logs.String(), "consul query failed before the first view") {
			return errors.New("no consul failure logged yet")
		}
		return nil
	})
	if strings.Contains(p.logs.String(), "keeping the last good view") {
		t.Errorf("logged a last good view it never had")
	}
	code, err := httpGet("http://" + p.adminAddr + "/ready")
	text := getBody(t, "http://"+p.adminAddr+"/ready")
	rd := getReadiness(t, p.adminAddr)
	if err != nil || code != http.StatusServiceUnavailable || rd.Ready || !strings.HasPrefix(text, "not ready: xds\n") ||
		len(rd.Conditions) != 2 || !strings.Contains(rd.Conditions[0].Detail, "waiting for the first view of consul") ||
		!strings.Contains(rd.Conditions[1].Detail, "failing before its first read") {
		t.Errorf("/ready with consul down from the start = %d %v:\n%s%+v", code, err, text, rd)
	}
	rl.Up(t)
	meshtest.Eventually(t, 15*time.Second, func() error {
		if rd := getReadiness(t, p.adminAddr); !rd.Ready || !rd.Conditions[1].OK {
			return fmt.Errorf("not ready once consul is back: %+v", rd)
		}
		return nil
	})
	if rd := getReadiness(t, p.adminAddr); !strings.HasPrefix(rd.Conditions[1].Detail, "synced") ||
		!strings.HasPrefix(rd.Conditions[0].Detail, "serving ") {
		t.Errorf("/ready once consul is back: %+v", rd)
	}
}
