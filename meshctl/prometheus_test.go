//go:build prometheus

package meshctl_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/meshvm/mesh/meshtest"
)

// prometheusBinary is bin/prometheus (make prometheus).
func prometheusBinary(t *testing.T) string {
	p := filepath.Join(meshtest.RepoRoot(), "bin", "prometheus")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("this test needs a real Prometheus: make prometheus (%v)", err)
	}
	return p
}

// conditional are dashboard expressions that are empty unless their event
// happens, and why the test traffic does not cause it (none today: every
// expression must return data).
var conditional = map[string]string{}

// TestPrometheusScrapesTheMesh: a real Prometheus with docs/prometheus.yml
// (Consul service discovery; only the Consul address, the intervals and
// the control plane's target changed) finds the agents through Consul,
// scrapes them and mesh control, and every expression of
// docs/grafana-dashboard.json returns data for traffic that exercises the
// policies it charts.
func TestPrometheusScrapesTheMesh(t *testing.T) {
	bin := prometheusBinary(t)
	m := startControl(t, `policies:
  services:
    orders:
      timeout: 300ms
      retries: {attempts: 1, retry_on: [5xx]}
      rate_limit: {max_tokens: 5, tokens_per_fill: 5, fill_interval: 1s}
      circuit_breaker: {max_requests: 3, error_percent_threshold: 30, request_volume_threshold: 5, sleep_window: 1s}
`)
	// Spans go to a real Jaeger, so the tracing series exist and move.
	j, err := meshtest.StartJaeger()
	if err != nil {
		t.Fatalf("this test needs a real Jaeger (make jaeger): %v", err)
	}
	t.Cleanup(j.Stop)
	m.agentEnv = []string{"MESH_OBSERVABILITY_TRACING_EXPORTER=otlp-grpc", "MESH_OBSERVABILITY_TRACING_ENDPOINT=" + j.OTLPGRPC,
		"MESH_OBSERVABILITY_TRACING_SAMPLE_RATIO=1"}
	web := m.addVM("web1", "127.0.16.61", "web")
	m.addVM("orders1", "127.0.16.63", "orders")
	m.waitInSync(t, 2)
	// An instance with a host name for an address: the agents NACK it,
	// so the NACK series exist on both sides.
	cc, err := consulapi.NewClient(&consulapi.Config{Address: testConsul.Addr})
	if err != nil {
		t.Fatal(err)
	}
	if err := cc.Agent().ServiceRegister(&consulapi.AgentServiceRegistration{ID: "broken-1", Name: "broken", Address: "broken.invalid", Port: 8080}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Agent().ServiceDeregister("broken-1") })
	// Agents hold what they call: web calls broken (on demand), gets its
	// endpoint and NACKs it (then drops it after the on-demand bound).
	if code := web.call(t, "broken", "/"); code == http.StatusOK {
		t.Errorf("web -> broken: %d, want a refusal", code)
	}

	cfg, err := os.ReadFile(filepath.Join(meshtest.RepoRoot(), "docs", "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(cfg)
	for old, new := range map[string]string{
		"server: 127.0.0.1:8500":   "server: " + testConsul.Addr,
		"scrape_interval: 15s":     "scrape_interval: 1s",
		"evaluation_interval: 15s": "evaluation_interval: 1s",
		"refresh_interval: 30s":    "refresh_interval: 1s",
		"- control-1.example.internal:19000\n          - control-2.example.internal:19000": "- " + m.adminAddr,
	} {
		if !strings.Contains(text, old) {
			t.Fatalf("docs/prometheus.yml no longer has %q", old)
		}
		text = strings.Replace(text, old, new, 1)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(meshtest.FreePort("127.0.0.1"))
	p := meshtest.StartProcess(t, nil, bin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr, "--log.level=warn")
	t.Cleanup(func() { stop(t, p) })
	waitOK(t, "http://"+addr+"/-/ready", 60*time.Second)

	// Traffic: successes, app errors (retried), slow calls (timeouts),
	// bursts over the rate limit, enough errors to open the breaker.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		client := &http.Client{Timeout: 5 * time.Second}
		for i := 0; ctx.Err() == nil; i++ {
			path := []string{"/hello", "/hello", "/fail", "/slow", "/hello"}[i%5]
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+web.outbound()+path, nil)
			req.Host = "orders"
			if resp, err := client.Do(req); err == nil {
				resp.Body.Close()
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	// Bursts of slow calls over the concurrency limit (max_requests).
	wg.Add(1)
	go func() {
		defer wg.Done()
		client := &http.Client{Timeout: 5 * time.Second}
		for ctx.Err() == nil {
			var burst sync.WaitGroup
			for range 8 {
				burst.Add(1)
				go func() {
					defer burst.Done()
					req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+web.outbound()+"/slow", nil)
					req.Host = "orders"
					if resp, err := client.Do(req); err == nil {
						resp.Body.Close()
					}
				}()
			}
			burst.Wait()
			time.Sleep(300 * time.Millisecond)
		}
	}()
	defer func() { cancel(); wg.Wait() }()

	type target struct {
		Labels    map[string]string `json:"labels"`
		Health    string            `json:"health"`
		LastError string            `json:"lastError"`
		ScrapeURL string            `json:"scrapeUrl"`
	}
	meshtest.Eventually(t, 60*time.Second, func() error {
		var r struct {
			Data struct {
				ActiveTargets []target `json:"activeTargets"`
			} `json:"data"`
		}
		getJSON(t, "http://"+addr+"/api/v1/targets", &r)
		up := map[string]bool{}
		for _, tg := range r.Data.ActiveTargets {
			if tg.Health != "up" {
				return fmt.Errorf("target %s %s: %s", tg.ScrapeURL, tg.Health, tg.LastError)
			}
			up[tg.Labels["job"]+" "+tg.Labels["service"]] = true
		}
		for _, want := range []string{"mesh-agent web", "mesh-agent orders", "mesh-control "} {
			if !up[want] {
				return fmt.Errorf("no target %q up: %+v", want, r.Data.ActiveTargets)
			}
		}
		return nil
	})

	raw, err := os.ReadFile(filepath.Join(meshtest.RepoRoot(), "docs", "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash any
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	var exprs []string
	var walk func(any)
	walk = func(x any) {
		switch v := x.(type) {
		case map[string]any:
			if e, ok := v["expr"].(string); ok {
				exprs = append(exprs, e)
			}
			for _, c := range v {
				walk(c)
			}
		case []any:
			for _, c := range v {
				walk(c)
			}
		}
	}
	walk(dash)
	if len(exprs) < 20 {
		t.Fatalf("only %d expressions in the dashboard", len(exprs))
	}
	query := func(e string) (int, error) {
		q := strings.NewReplacer("$__rate_interval", "1m", "$service", ".*").Replace(e)
		var r struct {
			Status string `json:"status"`
			Error  string `json:"error"`
			Data   struct {
				Result []json.RawMessage `json:"result"`
			} `json:"data"`
		}
		resp, err := http.Get("http://" + addr + "/api/v1/query?query=" + url.QueryEscape(q))
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			return 0, err
		}
		if r.Status != "success" {
			return 0, fmt.Errorf("%s: %s", q, r.Error)
		}
		return len(r.Data.Result), nil
	}
	// Every expression returns series once the traffic has run a while.
	empty := map[string]bool{}
	deadline := time.Now().Add(90 * time.Second)
	for {
		clear(empty)
		for _, e := range exprs {
			n, err := query(e)
			if err != nil {
				t.Fatalf("query: %v", err)
			}
			if n == 0 && conditional[e] == "" {
				empty[e] = true
			}
		}
		if len(empty) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(2 * time.Second)
	}
	for e := range empty {
		t.Errorf("no data for %s", e)
	}
	for e, why := range conditional {
		t.Logf("not required to return data: %s (%s)", e, why)
	}
	t.Logf("%d dashboard expressions, %d returned data", len(exprs), len(exprs)-len(empty)-len(conditional))
}
