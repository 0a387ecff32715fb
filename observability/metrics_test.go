package observability_test

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/url"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/observability"
)

// mix is the known set of requests the metrics and log tests send through
// the two hops.
var mix = []struct {
	name          string
	method, host  string
	path          string
	body          []byte
	n             int
	status        int
	reason        string // x-mesh-reason the client sees
	reachesB      bool
	reachesApp    bool
	bytesOut      int // response body bytes per request
	bytesInPerReq int
}{
	{name: "ok", method: "GET", host: "orders", path: "/ok", n: 7, status: 200, reachesB: true, reachesApp: true, bytesOut: 1000},
	{name: "echo", method: "POST", host: "orders.mesh", path: "/echo", body: bytes.Repeat([]byte("b"), 500), n: 2, status: 200, reachesB: true, reachesApp: true, bytesOut: 2, bytesInPerReq: 500},
	{name: "app error", method: "GET", host: "orders", path: "/fail", n: 3, status: 500, reachesB: true, reachesApp: true, bytesOut: 5},
	{name: "rate limited at B", method: "GET", host: "orders", path: "/limited", n: 4, status: 429, reason: "rate-limited", reachesB: true, bytesOut: 19},
	{name: "breaker open at A", method: "GET", host: "orders", path: "/breaker", n: 2, status: 503, reason: "circuit-open", bytesOut: 19},
	{name: "unknown service", method: "GET", host: "nosuch", path: "/ok", n: 1, status: 503, reason: "no-route", bytesOut: 15},
}

func sendMix(t *testing.T, th *twoHop) {
	t.Helper()
	for _, m := range mix {
		for i := 0; i < m.n; i++ {
			resp := th.do(t, m.method, m.host, m.path, m.body, nil)
			if resp.StatusCode != m.status || resp.Header.Get("X-Mesh-Reason") != m.reason {
				t.Fatalf("%s: got %d %q, want %d %q", m.name, resp.StatusCode, resp.Header.Get("X-Mesh-Reason"), m.status, m.reason)
			}
		}
	}
}

// TestMetricsExactCounts sends a known mix of requests through two
// instrumented agents and checks each agent's scraped /metrics series by
// series: requests, durations, bytes, in-flight and policy counters.
func TestMetricsExactCounts(t *testing.T) {
	th := startTwoHop(t, defaultObs(), defaultObs())
	sendMix(t, th)
	a, b := scrape(t, th.adminA), scrape(t, th.adminB)

	out := func(class, reason, upstream string) string {
		return reqLabels(class, "outbound", "web", reason, upstream)
	}
	in := func(class, reason string) string { return reqLabels(class, "inbound", "orders", reason, "orders") }
	wantA := map[string]float64{
		out("2xx", "none", "orders"):         9,
		out("5xx", "none", "orders"):         3,
		out("4xx", "rate-limited", "orders"): 4,
		out("5xx", "circuit-open", "orders"): 2,
		out("5xx", "no-route", "unknown"):    1,
	}
	wantB := map[string]float64{
		in("2xx", "none"):         9,
		in("5xx", "none"):         3,
		in("4xx", "rate-limited"): 4,
	}
	equalSeries(t, "A mesh_requests_total", series(a, "mesh_requests_total"), wantA)
	equalSeries(t, "A mesh_request_duration_seconds count", series(a, "mesh_request_duration_seconds"), wantA)
	equalSeries(t, "B mesh_requests_total", series(b, "mesh_requests_total"), wantB)
	equalSeries(t, "B mesh_request_duration_seconds count", series(b, "mesh_request_duration_seconds"), wantB)

	equalSeries(t, "A mesh_response_bytes_total", series(a, "mesh_response_bytes_total"), map[string]float64{
		out("2xx", "none", "orders"):         7*1000 + 2*2,
		out("5xx", "none", "orders"):         3 * 5,
		out("4xx", "rate-limited", "orders"): 4 * 19,
		out("5xx", "circuit-open", "orders"): 2 * 19,
		out("5xx", "no-route", "unknown"):    15,
	})
	equalSeries(t, "B mesh_response_bytes_total", series(b, "mesh_response_bytes_total"), map[string]float64{
		in("2xx", "none"):         7*1000 + 2*2,
		in("5xx", "none"):         3 * 5,
		in("4xx", "rate-limited"): 4 * 19,
	})
	// Request bytes exist only for the series that carried a body.
	for _, got := range []float64{
		series(a, "mesh_request_bytes_total")[out("2xx", "none", "orders")],
		series(b, "mesh_request_bytes_total")[in("2xx", "none")],
	} {
		if got != 2*500 {
			t.Errorf("request bytes of the 2xx series = %v, want 1000", got)
		}
	}
	equalSeries(t, "A in flight", series(a, "mesh_requests_in_flight"),
		map[string]float64{labels("direction", "outbound", "local_service", "web"): 0})
	equalSeries(t, "B in flight", series(b, "mesh_requests_in_flight"),
		map[string]float64{labels("direction", "inbound", "local_service", "orders"): 0})
	equalSeries(t, "B mesh_rate_limited_total", series(b, "mesh_rate_limited_total"),
		map[string]float64{labels("direction", "inbound", "service", "orders"): 4})
	equalSeries(t, "A mesh_circuit_breaker_rejected_total", series(a, "mesh_circuit_breaker_rejected_total"),
		map[string]float64{labels("upstream_service", "orders"): 2})

	// Go runtime and process metrics come with the registry.
	for _, name := range []string{"go_goroutines", "process_cpu_seconds_total"} {
		if _, ok := a[name]; !ok {
			t.Errorf("%s missing from /metrics", name)
		}
	}
}

// TestLabelCardinalityBounded checks that callers cannot create series at
// will: a garbage reason (as relayed from an upstream) becomes "other", and
// paths and caller addresses never become labels.
func TestLabelCardinalityBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	obs, err := observability.NewObserver(defaultObs(), observability.Options{Service: "orders", Registry: reg, Stdout: &meshtest.SyncBuffer{}})
	if err != nil {
		t.Fatal(err)
	}
	defer obs.Close(context.Background())
	h := obs.Instrument(observability.Inbound, "orders", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		refuse(w, r, http.StatusBadGateway, r.URL.Query().Get("reason"), 0)
	}))
	addr := serve(t, "127.0.0.33", h)
	for i, reason := range []string{"Bad Reason!", "x<script>", "upstream-reset", "upstream-reset"} {
		resp, err := client.Get("http://" + addr + "/path/" + string(rune('a'+i)) + "?reason=" + url.QueryEscape(reason))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	admin := serve(t, "127.0.0.33", observability.NewAdminMux(reg, observability.AlwaysReady))
	equalSeries(t, "mesh_requests_total", series(scrape(t, admin), "mesh_requests_total"), map[string]float64{
		reqLabels("5xx", "inbound", "orders", "other", "orders"):          2,
		reqLabels("5xx", "inbound", "orders", "upstream-reset", "orders"): 2,
	})
}

// TestGovernanceAndInfraMetrics drives the typed helpers and a counted
// dialer against real sockets and checks the scraped values.
func TestGovernanceAndInfraMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	obs, err := observability.NewObserver(defaultObs(), observability.Options{Service: "web", Registry: reg, Stdout: &meshtest.SyncBuffer{}, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer obs.Close(context.Background())
	m := obs.Metrics()

	// A live upstream and a dead one (nothing listens on port 1).
	live, err := net.Listen("tcp", "127.0.0.34:0")
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	go func() {
		for {
			c, err := live.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	dial := m.Dialer((&net.Dialer{}).DialContext)
	var kept []net.Conn
	h := obs.Instrument(observability.Outbound, "web", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		observability.RecordFrom(r.Context()).SetUpstream("orders", "")
		for i := 0; i < 3; i++ {
			c, err := dial(r.Context(), "tcp", live.Addr().String())
			if err != nil {
				t.Errorf("dial live upstream: %v", err)
				continue
			}
			kept = append(kept, c)
		}
		if _, err := dial(r.Context(), "tcp", "127.0.0.34:1"); err == nil {
			t.Error("dial to a closed port succeeded")
		}
		kept[0].Close()
		kept[0].Close() // a second close must not count twice
	}))
	addr := serve(t, "127.0.0.34", h)
	resp, err := client.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	defer func() {
		for _, c := range kept {
			c.Close()
		}
	}()

	u := m.Upstream("orders")
	u.Retry()
	u.Retry()
	u.RetryBudgetExhausted()
	u.Timeout()
	u.BreakerState("open")
	u.BreakerState("half-open")
	u.BreakerState("open")
	u.Ejected(1)
	u.Ejected(2)
	u.EjectedNow(1)
	m.Endpoints("orders", 3)
	m.ConcurrencyLimited(observability.Outbound, "orders")
	m.XDSConnected("10.0.0.1:18000", "10.0.0.1:18000", "10.0.0.2:18000")
	m.XDSUpdate("type.googleapis.com/envoy.config.cluster.v3.Cluster", true)
	m.XDSUpdate("type.googleapis.com/envoy.config.cluster.v3.Cluster", false)
	m.ConsulRegistered(true)
	m.ConsulRegistrationFailed()

	admin := serve(t, "127.0.0.34", observability.NewAdminMux(reg, observability.AlwaysReady))
	mfs := scrape(t, admin)
	up := labels("upstream_service", "orders")
	cluster := labels("type", "cluster")
	for _, c := range []struct {
		name string
		want map[string]float64
	}{
		{"mesh_upstream_connections_opened_total", map[string]float64{up: 3}},
		{"mesh_upstream_connections_failed_total", map[string]float64{up: 1}},
		{"mesh_upstream_connections_active", map[string]float64{up: 2}},
		{"mesh_upstream_retries_total", map[string]float64{up: 2}},
		{"mesh_upstream_retry_budget_exhausted_total", map[string]float64{up: 1}},
		{"mesh_upstream_timeouts_total", map[string]float64{up: 1}},
		{"mesh_circuit_breaker_state", map[string]float64{up: 1}},
		{"mesh_circuit_breaker_transitions_total", map[string]float64{
			labels("to", "half-open", "upstream_service", "orders"): 1,
			labels("to", "open", "upstream_service", "orders"):      2,
			labels("to", "closed", "upstream_service", "orders"):    0,
		}},
		{"mesh_outlier_ejections_total", map[string]float64{up: 2}},
		{"mesh_outlier_ejected_endpoints", map[string]float64{up: 1}},
		{"mesh_discovery_endpoints", map[string]float64{labels("service", "orders"): 3}},
		{"mesh_concurrency_limited_total", map[string]float64{labels("direction", "outbound", "service", "orders"): 1}},
		{"mesh_xds_client_connected", map[string]float64{labels("control_plane", "10.0.0.1:18000"): 1, labels("control_plane", "10.0.0.2:18000"): 0}},
		{"mesh_xds_client_acks_total", map[string]float64{cluster: 1}},
		{"mesh_xds_client_nacks_total", map[string]float64{cluster: 1}},
		{"mesh_consul_registered", map[string]float64{"": 1}},
		{"mesh_consul_registration_errors_total", map[string]float64{"": 1}},
	} {
		t.Run(c.name, func(t *testing.T) { equalSeries(t, c.name, series(mfs, c.name), c.want) })
	}
	if v := series(mfs, "mesh_xds_client_last_update_timestamp_seconds")[cluster]; v < 1e9 {
		t.Errorf("mesh_xds_client_last_update_timestamp_seconds = %v, want a recent Unix time", v)
	}
}

// TestObserverRebuiltOnReload builds a second Observer on the same
// registry, as a config reload does: it must not fail, and the request
// counters carry on from the first one's.
func TestObserverRebuiltOnReload(t *testing.T) {
	reg := observability.NewRegistry()
	admin := serve(t, "127.0.0.43", observability.NewAdminMux(reg, observability.AlwaysReady))
	for i := 1; i <= 2; i++ {
		c := defaultObs()
		c.Tracing.Exporter = "otlp-http" // its metrics are registered too
		obs, err := observability.NewObserver(c, observability.Options{Service: "orders", Registry: reg, Stdout: &meshtest.SyncBuffer{}})
		if err != nil {
			t.Fatalf("observer %d: %v", i, err)
		}
		h := obs.Instrument(observability.Inbound, "orders", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
		req, _ := http.NewRequest("GET", "http://orders/", nil)
		h.ServeHTTP(&nopWriter{h: http.Header{}}, req)
		_ = obs.Close(context.Background())
		got := series(scrape(t, admin), "mesh_requests_total")[reqLabels("2xx", "inbound", "orders", "none", "orders")]
		if got != float64(i) {
			t.Errorf("after observer %d: mesh_requests_total = %v, want %d", i, got, i)
		}
	}
}
