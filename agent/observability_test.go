package agent_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/meshtest"
)

// obsPolicy is the caller-side policy of the observability tests: one
// retry on 5xx, a breaker that opens at 50% of 4 requests and probes
// after sleep, no outlier ejection (one endpoint).
func obsPolicy(sleep time.Duration) config.Policy {
	p := config.DefaultPolicy()
	p.Retries.Attempts = 1
	p.Retries.RetryOn = []string{"5xx"}
	p.CircuitBreaker.ErrorPercentThreshold = 50
	p.CircuitBreaker.RequestVolumeThreshold = 4
	p.CircuitBreaker.SleepWindow = sleep
	p.OutlierDetection.Consecutive5xx = 0
	p.OutlierDetection.ConsecutiveGatewayFailure = 0
	return p
}

// accessLogTo writes the agent's access log to a file, one line at once.
func accessLogTo(c *config.Config, path string) {
	c.Observability.AccessLog.Output = path
	c.Observability.AccessLog.FlushInterval = 0
}

// TestRequestsAreObservedOnBothHops sends a known mix through web's agent
// A to orders' agent B: 200s, 500s (each retried once), 503s from A's open
// breaker, 429s from B's inbound rate limit. Each agent's /metrics must
// carry the exact counts, by direction, service, upstream, code class and
// reason, with the governance metrics; each access log one JSON line per
// request and hop, without the secrets the requests carried.
func TestRequestsAreObservedOnBothHops(t *testing.T) {
	const ipA, ipB = "127.0.0.81", "127.0.0.82"
	const sleep = time.Second
	dir := t.TempDir()
	logA, logB := filepath.Join(dir, "a.log"), filepath.Join(dir, "b.log")

	app := startApp(t, ipB, "obs-orders", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fail" {
			http.Error(w, "broken", http.StatusInternalServerError)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	b := startAgent(t, ipB, "obs-orders", app, func(c *config.Config) {
		// Nine tokens for the whole test: the tenth request B sees is refused.
		c.Policies.Services = map[string]config.Policy{"obs-orders": {
			Timeout: 15 * time.Second, ConnectTimeout: time.Second,
			LoadBalancer: config.LoadBalancer{Policy: "round_robin"},
			RateLimit:    config.RateLimit{MaxTokens: 9, TokensPerFill: 1, FillInterval: time.Hour},
		}}
		accessLogTo(c, logB)
	})
	web := startApp(t, ipA, "obs-web", nil)
	a := startAgent(t, ipA, "obs-web", web, func(c *config.Config) {
		c.Policies.Services = map[string]config.Policy{"obs-orders": obsPolicy(sleep)}
		accessLogTo(c, logA)
	})
	waitPassing(t, "obs-orders", 1)

	client := clientFrom(ipA)
	send := func(path string, want int) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+a.Addr("outbound")+path, nil)
		req.Host = "obs-orders"
		req.Header.Set("Authorization", "Bearer s3cr3t-token")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("GET %s: status %d (%s), want %d", path, resp.StatusCode, resp.Header.Get("X-Mesh-Reason"), want)
		}
	}
	for range 2 {
		send("/ok?token=s3cr3t-token", 200) // B: 2 tokens
	}
	for range 2 {
		send("/fail", 500) // B: 2 tries each; the breaker opens at the 4th request
	}
	for range 3 {
		send("/ok", 503) // circuit-open at A: B sees nothing
	}
	time.Sleep(sleep + 200*time.Millisecond)
	send("/ok", 200) // the probe closes the circuit; B: 7 tokens used
	send("/ok", 200)
	send("/ok", 200)
	send("/ok", 429) // B's bucket is empty
	send("/ok", 429)

	mA, mB := scrapeAgent(t, a.Addr("admin")), scrapeAgent(t, b.Addr("admin"))
	req := func(class, direction, local, reason, upstream string) string {
		return lbl("code_class", class, "direction", direction, "local_service", local, "reason", reason, "upstream_service", upstream)
	}
	up := lbl("upstream_service", "obs-orders")
	for _, c := range []struct {
		name   string
		mfs    map[string]*dto.MetricFamily
		metric string
		want   map[string]float64
	}{
		{"A requests", mA, "mesh_requests_total", map[string]float64{
			req("2xx", "outbound", "obs-web", "none", "obs-orders"):         5,
			req("5xx", "outbound", "obs-web", "none", "obs-orders"):         2,
			req("5xx", "outbound", "obs-web", "circuit-open", "obs-orders"): 3,
			req("4xx", "outbound", "obs-web", "rate-limited", "obs-orders"): 2,
		}},
		{"A durations", mA, "mesh_request_duration_seconds", map[string]float64{
			req("2xx", "outbound", "obs-web", "none", "obs-orders"):         5,
			req("5xx", "outbound", "obs-web", "none", "obs-orders"):         2,
			req("5xx", "outbound", "obs-web", "circuit-open", "obs-orders"): 3,
			req("4xx", "outbound", "obs-web", "rate-limited", "obs-orders"): 2,
		}},
		{"A in flight", mA, "mesh_requests_in_flight", map[string]float64{
			lbl("direction", "inbound", "local_service", "obs-web"):  0,
			lbl("direction", "outbound", "local_service", "obs-web"): 0,
		}},
		{"B requests", mB, "mesh_requests_total", map[string]float64{
			req("2xx", "inbound", "obs-orders", "none", "obs-orders"):         5,
			req("5xx", "inbound", "obs-orders", "none", "obs-orders"):         4,
			req("4xx", "inbound", "obs-orders", "rate-limited", "obs-orders"): 2,
		}},
		{"B response bytes", mB, "mesh_response_bytes_total", map[string]float64{
			req("2xx", "inbound", "obs-orders", "none", "obs-orders"):         10, // "ok" × 5
			req("5xx", "inbound", "obs-orders", "none", "obs-orders"):         28, // "broken\n" × 4
			req("4xx", "inbound", "obs-orders", "rate-limited", "obs-orders"): 38, // "mesh: rate-limited\n" × 2
		}},
		{"B rate limited", mB, "mesh_rate_limited_total", map[string]float64{
			lbl("direction", "inbound", "service", "obs-orders"): 2,
		}},
		{"A breaker state", mA, "mesh_circuit_breaker_state", map[string]float64{up: 0}},
		{"A breaker transitions", mA, "mesh_circuit_breaker_transitions_total", map[string]float64{
			lbl("to", "closed", "upstream_service", "obs-orders"):    1,
			lbl("to", "half-open", "upstream_service", "obs-orders"): 1,
			lbl("to", "open", "upstream_service", "obs-orders"):      1,
		}},
		{"A breaker rejected", mA, "mesh_circuit_breaker_rejected_total", map[string]float64{up: 3}},
		{"A retries", mA, "mesh_upstream_retries_total", map[string]float64{up: 2}},
		{"A retry budget", mA, "mesh_upstream_retry_budget_exhausted_total", map[string]float64{up: 0}},
		{"A timeouts", mA, "mesh_upstream_timeouts_total", map[string]float64{up: 0}},
		{"A ejected", mA, "mesh_outlier_ejected_endpoints", map[string]float64{up: 0}},
		{"A connection failures", mA, "mesh_upstream_connections_failed_total", map[string]float64{up: 0}},
		{"B connection failures", mB, "mesh_upstream_connections_failed_total", map[string]float64{up: 0}},
		{"A endpoints", mA, "mesh_discovery_endpoints", map[string]float64{lbl("service", "obs-orders"): 1}},
		{"A registered", mA, "mesh_consul_registered", map[string]float64{"": 1}},
		{"B registered", mB, "mesh_consul_registered", map[string]float64{"": 1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := seriesOf(c.mfs, c.metric)
			if fmt.Sprint(got) != fmt.Sprint(c.want) {
				t.Errorf("%s:\n got  %v\n want %v", c.metric, got, c.want)
			}
		})
	}
	// Keep-alive: a connection or two, never one per request.
	for _, c := range []struct {
		name string
		mfs  map[string]*dto.MetricFamily
	}{{"A", mA}, {"B", mB}} {
		opened := seriesOf(c.mfs, "mesh_upstream_connections_opened_total")[up]
		active := seriesOf(c.mfs, "mesh_upstream_connections_active")[up]
		if opened < 1 || opened > 3 || active < 1 || active > opened {
			t.Errorf("%s: connections to obs-orders opened %v, active %v; want 1..3 opened, 1..opened active", c.name, opened, active)
		}
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if _, ok := mA[name]; !ok {
			t.Errorf("/metrics lacks %s", name)
		}
	}

	// Access logs: one JSON line per request and hop.
	linesA, linesB := readAccessLog(t, logA), readAccessLog(t, logB)
	if len(linesA) != 12 || len(linesB) != 11 {
		t.Fatalf("access log lines: A %d, B %d; want 12 and 11", len(linesA), len(linesB))
	}
	statuses := func(lines []map[string]any) string {
		var s []string
		for _, l := range lines {
			s = append(s, fmt.Sprintf("%v/%v", l["status"], l["reason"]))
		}
		return strings.Join(s, " ")
	}
	if got, want := statuses(linesA), "200/<nil> 200/<nil> 500/<nil> 500/<nil> 503/circuit-open 503/circuit-open 503/circuit-open 200/<nil> 200/<nil> 200/<nil> 429/rate-limited 429/rate-limited"; got != want {
		t.Errorf("A's statuses:\n got  %s\n want %s", got, want)
	}
	if got, want := statuses(linesB), "200/<nil> 200/<nil> 500/<nil> 500/<nil> 500/<nil> 500/<nil> 200/<nil> 200/<nil> 200/<nil> 429/rate-limited 429/rate-limited"; got != want {
		t.Errorf("B's statuses:\n got  %s\n want %s", got, want)
	}
	idsA := map[string]bool{}
	for i, l := range linesA {
		for _, f := range []string{"time", "request_id", "direction", "local_service", "method", "authority", "path",
			"protocol", "status", "bytes_in", "bytes_out", "duration_ms", "upstream_service", "caller", "user_agent"} {
			if _, ok := l[f]; !ok {
				t.Errorf("A line %d lacks %s: %v", i, f, l)
			}
		}
		if l["direction"] != "outbound" || l["local_service"] != "obs-web" || l["upstream_service"] != "obs-orders" ||
			l["authority"] != "obs-orders" || l["method"] != "GET" || l["protocol"] != "HTTP/1.1" ||
			!strings.HasPrefix(l["caller"].(string), ipA+":") {
			t.Errorf("A line %d: %v", i, l)
		}
		if (l["status"] != 503.0) != (l["endpoint"] != nil) {
			t.Errorf("A line %d: endpoint %v with status %v (a refused request has no endpoint)", i, l["endpoint"], l["status"])
		}
		if l["path"] == "/fail" && l["retries"] != 1.0 {
			t.Errorf("A line %d: retries %v, want 1", i, l["retries"])
		}
		idsA[l["request_id"].(string)] = true
	}
	if len(idsA) != 12 {
		t.Errorf("A logged %d distinct request ids for 12 requests", len(idsA))
	}
	idsB := map[string]int{}
	for i, l := range linesB {
		// A dials from 127.0.0.1 (on real VMs, from its own address).
		if l["direction"] != "inbound" || l["local_service"] != "obs-orders" || l["upstream_service"] != "obs-orders" ||
			!strings.HasPrefix(l["caller"].(string), "127.0.0.") {
			t.Errorf("B line %d: %v", i, l)
		}
		if l["status"] != 429.0 && l["endpoint"] != app.addr {
			t.Errorf("B line %d: endpoint %v, want the app %s", i, l["endpoint"], app.addr)
		}
		id, _ := l["request_id"].(string)
		if !idsA[id] {
			t.Errorf("B line %d: request id %q is not one A logged", i, id)
		}
		idsB[id]++
	}
	if len(idsB) != 9 { // the two retried requests reach B twice each, under one id
		t.Errorf("B logged %d distinct request ids, want 9: %v", len(idsB), idsB)
	}
	for name, path := range map[string]string{"A": logA, "B": logB} {
		raw, _ := os.ReadFile(path)
		if strings.Contains(string(raw), "s3cr3t") {
			t.Errorf("%s's access log holds a secret from the request's Authorization header or query string", name)
		}
	}
}

// TestTraceAcrossTwoAgents sends one request web -> A -> B -> app with a
// real Jaeger collecting both agents' spans: Jaeger returns one trace in
// which A's client span is the parent of B's server span, and the app
// got the trace context to forward.
func TestTraceAcrossTwoAgents(t *testing.T) {
	const ipA, ipB = "127.0.0.85", "127.0.0.86"
	j, err := meshtest.StartJaeger()
	if err != nil {
		t.Fatalf("this test needs a real Jaeger (make jaeger): %v", err)
	}
	defer j.Stop()
	tracing := func(c *config.Config) {
		c.Observability.Tracing.Exporter = "otlp-grpc"
		c.Observability.Tracing.Endpoint = j.OTLPGRPC
		c.Observability.Tracing.SampleRatio = 1
		c.Observability.Tracing.BatchTimeout = 100 * time.Millisecond
		c.Observability.AccessLog.Output = filepath.Join(t.TempDir(), "access.log")
	}
	traceparent := make(chan string, 1)
	app := startApp(t, ipB, "trc-orders", func(w http.ResponseWriter, r *http.Request) {
		select {
		case traceparent <- r.Header.Get("Traceparent"):
		default:
		}
		_, _ = w.Write([]byte("ok"))
	})
	startAgent(t, ipB, "trc-orders", app, tracing)
	web := startApp(t, ipA, "trc-web", nil)
	a := startAgent(t, ipA, "trc-web", web, tracing)
	waitPassing(t, "trc-orders", 1)

	resp, body := getWith(t, clientFrom(ipA), "http://"+a.Addr("outbound")+"/items/42", "trc-orders")
	if resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("status %d body %q", resp.StatusCode, body)
	}
	tp := <-traceparent
	parts := strings.Split(tp, "-")
	if len(parts) != 4 || len(parts[1]) != 32 || parts[3] != "01" {
		t.Fatalf("the app got traceparent %q, want a sampled W3C trace context", tp)
	}
	traceID := parts[1]

	var tr meshtest.JaegerTrace
	meshtest.Eventually(t, 20*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		got, err := j.Trace(ctx, traceID)
		if err != nil {
			return err
		}
		if len(got.Spans) < 2 {
			return fmt.Errorf("trace %s has %d spans, want 2", traceID, len(got.Spans))
		}
		tr = got
		return nil
	})
	if len(tr.Spans) != 2 {
		t.Fatalf("trace %s has %d spans, want A's client span and B's server span", traceID, len(tr.Spans))
	}
	byService := map[string]meshtest.JaegerSpan{}
	for _, s := range tr.Spans {
		byService[tr.Service(s)] = s
	}
	client, server := byService["trc-web"], byService["trc-orders"]
	if client.SpanID == "" || server.SpanID == "" {
		t.Fatalf("spans by service: %v", byService)
	}
	if client.Tag("span.kind") != "client" || server.Tag("span.kind") != "server" {
		t.Errorf("span kinds: A %v, B %v; want client and server", client.Tag("span.kind"), server.Tag("span.kind"))
	}
	if client.Parent() != "" {
		t.Errorf("A's client span has parent %s; the caller sent no trace context, so it is the root", client.Parent())
	}
	if server.Parent() != client.SpanID {
		t.Errorf("B's server span has parent %q, want A's client span %s", server.Parent(), client.SpanID)
	}
	if parts[2] != server.SpanID {
		t.Errorf("the app's traceparent names span %s, want B's server span %s", parts[2], server.SpanID)
	}
	for _, s := range []meshtest.JaegerSpan{client, server} {
		if s.OperationName != "GET" || s.Tag("http.response.status_code") != 200.0 || s.Tag("url.path") != "/items/42" ||
			s.Tag("mesh.upstream_service") != "trc-orders" {
			t.Errorf("span of %s: operation %q, tags %v", tr.Service(s), s.OperationName, s.Tags)
		}
	}
}

func scrapeAgent(t *testing.T, admin string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", admin, err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics of %s: %v", admin, err)
	}
	return mfs
}

// seriesOf maps the label sets of one metric ("k=v,k=v", Prometheus's
// label order) to their value: counter, gauge, or histogram count.
func seriesOf(mfs map[string]*dto.MetricFamily, name string) map[string]float64 {
	out := map[string]float64{}
	for _, m := range mfs[name].GetMetric() {
		var parts []string
		for _, l := range m.GetLabel() {
			parts = append(parts, l.GetName()+"="+l.GetValue())
		}
		v := m.GetCounter().GetValue() + m.GetGauge().GetValue() + float64(m.GetHistogram().GetSampleCount())
		out[strings.Join(parts, ",")] = v
	}
	return out
}

func lbl(kv ...string) string {
	var parts []string
	for i := 0; i+1 < len(kv); i += 2 {
		parts = append(parts, kv[i]+"="+kv[i+1])
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

// readAccessLog parses every line of an access log file as JSON.
func readAccessLog(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("%s: line %d is not JSON: %v: %s", path, len(out)+1, err, sc.Text())
		}
		out = append(out, m)
	}
	return out
}
