package observability_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/observability"
)

// jaeger is the real trace backend every tracing test exports to.
var jaeger *meshtest.Jaeger

func TestMain(m *testing.M) {
	var err error
	jaeger, err = meshtest.StartJaeger()
	if err != nil {
		fmt.Fprintln(os.Stderr, "start jaeger:", err)
		os.Exit(1)
	}
	code := m.Run()
	jaeger.Stop()
	os.Exit(code)
}

func tracingObs(exporter, endpoint string, ratio float64) config.Observability {
	c := defaultObs()
	c.Tracing.Exporter = exporter
	c.Tracing.Endpoint = endpoint
	c.Tracing.SampleRatio = ratio
	c.Tracing.Propagators = []string{"w3c", "b3multi"} // the apps here read B3 too
	c.Tracing.BatchTimeout = 50 * time.Millisecond
	return c
}

// traceparent parses a W3C traceparent into trace id, parent id, flags.
func traceparent(t *testing.T, v string) (string, string, string) {
	t.Helper()
	p := strings.Split(v, "-")
	if len(p) != 4 || p[0] != "00" || len(p[1]) != 32 || len(p[2]) != 16 {
		t.Fatalf("bad traceparent %q", v)
	}
	return p[1], p[2], p[3]
}

// TestTraceAcrossTwoHops sends requests through A (exporting over OTLP
// gRPC) and B (OTLP HTTP) to the app, and reads the traces back from
// Jaeger: A's client span and B's server span in one trace, B's span a
// child of A's, A's a child of whatever the caller sent (W3C or B3), and
// the app handed B's span as its parent in both W3C and B3 headers.
func TestTraceAcrossTwoHops(t *testing.T) {
	th := startTwoHop(t,
		tracingObs("otlp-grpc", jaeger.OTLPGRPC, 1),
		tracingObs("otlp-http", "http://"+jaeger.OTLPHTTP, 1))

	tests := []struct {
		name       string
		header     http.Header
		wantTrace  string // "" when the mesh starts the trace
		wantParent string // A's span's parent
	}{
		{name: "mesh starts the trace"},
		{
			name:      "caller sent W3C traceparent",
			header:    http.Header{"Traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}},
			wantTrace: "4bf92f3577b34da6a3ce929d0e0e4736", wantParent: "00f067aa0ba902b7",
		},
		{
			name: "caller sent B3 headers",
			header: http.Header{"X-B3-Traceid": {"5bf92f3577b34da6a3ce929d0e0e4736"}, "X-B3-Spanid": {"10f067aa0ba902b7"},
				"X-B3-Sampled": {"1"}},
			wantTrace: "5bf92f3577b34da6a3ce929d0e0e4736", wantParent: "10f067aa0ba902b7",
		},
		{
			name:      "caller sent a single b3 header",
			header:    http.Header{"B3": {"6bf92f3577b34da6a3ce929d0e0e4736-20f067aa0ba902b7-1"}},
			wantTrace: "6bf92f3577b34da6a3ce929d0e0e4736", wantParent: "20f067aa0ba902b7",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := len(th.app.seen())
			if resp := th.do(t, "GET", "orders", "/ok", nil, tc.header); resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			got := th.app.seen()[before]
			traceID, bSpan, flags := traceparent(t, got.Get("Traceparent"))
			if flags != "01" {
				t.Errorf("app got flags %s, want sampled", flags)
			}
			if tc.wantTrace != "" && traceID != tc.wantTrace {
				t.Errorf("app got trace %s, want the caller's %s", traceID, tc.wantTrace)
			}
			if got.Get("X-B3-Traceid") != traceID || got.Get("X-B3-Spanid") != bSpan {
				t.Errorf("app got B3 %s/%s, want %s/%s", got.Get("X-B3-Traceid"), got.Get("X-B3-Spanid"), traceID, bSpan)
			}

			ctx := context.Background()
			_ = th.obsA.Flush(ctx)
			_ = th.obsB.Flush(ctx)
			var tr meshtest.JaegerTrace
			meshtest.Eventually(t, 15*time.Second, func() error {
				var err error
				if tr, err = jaeger.Trace(ctx, traceID); err != nil {
					return err
				}
				if len(tr.Spans) != 2 {
					return fmt.Errorf("trace has %d spans, want 2", len(tr.Spans))
				}
				return nil
			})
			var client, server meshtest.JaegerSpan
			for _, s := range tr.Spans {
				switch s.Tag("span.kind") {
				case "client":
					client = s
				case "server":
					server = s
				}
			}
			if tr.Service(client) != "web" || tr.Service(server) != "orders" {
				t.Fatalf("client span from %q, server span from %q; want web and orders", tr.Service(client), tr.Service(server))
			}
			if server.SpanID != bSpan {
				t.Errorf("app's parent %s is not B's server span %s", bSpan, server.SpanID)
			}
			if server.Parent() != client.SpanID {
				t.Errorf("B's server span parent = %q, want A's client span %s", server.Parent(), client.SpanID)
			}
			if client.Parent() != tc.wantParent {
				t.Errorf("A's client span parent = %q, want %q", client.Parent(), tc.wantParent)
			}
			for _, c := range []struct {
				span meshtest.JaegerSpan
				key  string
				want any
			}{
				{server, "http.request.method", "GET"},
				{server, "http.response.status_code", 200.0},
				{server, "url.path", "/ok"},
				{server, "network.protocol.version", "1.1"},
				{client, "http.request.method", "GET"},
				{client, "server.address", "orders"},
				{client, "mesh.upstream_service", "orders"},
				{client, "http.response.status_code", 200.0},
			} {
				if got := c.span.Tag(c.key); got != c.want {
					t.Errorf("%s span tag %s = %#v, want %#v", c.span.Tag("span.kind"), c.key, got, c.want)
				}
			}
			if client.OperationName != "GET" {
				t.Errorf("client span name %q, want GET", client.OperationName)
			}

			// The access log lines carry the same ids.
			lines := logLines(t, th.logA.String())
			last := lines[len(lines)-1]
			if last["trace_id"] != traceID || last["span_id"] != client.SpanID {
				t.Errorf("A's access log has trace %v span %v, want %s %s", last["trace_id"], last["span_id"], traceID, client.SpanID)
			}
		})
	}

	t.Run("caller decided not to sample", func(t *testing.T) {
		before := len(th.app.seen())
		const id = "7bf92f3577b34da6a3ce929d0e0e4736"
		th.do(t, "GET", "orders", "/ok", nil, http.Header{"Traceparent": {"00-" + id + "-30f067aa0ba902b7-00"}})
		traceID, _, flags := traceparent(t, th.app.seen()[before].Get("Traceparent"))
		if traceID != id || flags != "00" {
			t.Errorf("app got trace %s flags %s, want %s 00", traceID, flags, id)
		}
		ctx := context.Background()
		_ = th.obsA.Flush(ctx)
		_ = th.obsB.Flush(ctx)
		time.Sleep(300 * time.Millisecond) // Jaeger's batch timeout is 50ms
		if tr, err := jaeger.Trace(ctx, id); err == nil {
			t.Errorf("unsampled trace reached Jaeger with %d spans", len(tr.Spans))
		}
	})
}

// TestDeadCollectorDoesNotSlowRequests sends requests while the collector
// is gone — a Jaeger that was stopped, and a blackhole that accepts
// connections and never answers — and checks that no request waits for an
// export (each far quicker than the export timeout) and that the spans the
// queue could not hold are counted as dropped.
func TestDeadCollectorDoesNotSlowRequests(t *testing.T) {
	stopped, err := meshtest.StartJaeger()
	if err != nil {
		t.Fatal(err)
	}
	defer stopped.Stop()
	stoppedAddr := stopped.OTLPGRPC

	blackhole, err := net.Listen("tcp", "127.0.0.37:0")
	if err != nil {
		t.Fatal(err)
	}
	defer blackhole.Close()
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := blackhole.Accept()
			if err != nil {
				return
			}
			held = append(held, c) // never read, never answer
		}
	}()

	// Short, so that each case's final flush to the dead collector (bounded
	// by it) keeps the test quick; a request that waited for an export
	// would take about this long.
	const exportTimeout = time.Second
	tests := []struct {
		name     string
		exporter string
		endpoint string
		before   func(t *testing.T, send func())
	}{
		{
			name: "stopped jaeger", exporter: "otlp-grpc", endpoint: stoppedAddr,
			before: func(t *testing.T, send func()) {
				send() // one trace while Jaeger is up
				stopped.Stop()
			},
		},
		{name: "blackhole over grpc", exporter: "otlp-grpc", endpoint: blackhole.Addr().String()},
		{name: "blackhole over http", exporter: "otlp-http", endpoint: blackhole.Addr().String()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := tracingObs(tc.exporter, tc.endpoint, 1)
			c.Tracing.QueueSize = 16
			c.Tracing.BatchSize = 8
			c.Tracing.ExportTimeout = exportTimeout
			reg := observability.NewRegistry()
			obs, err := observability.NewObserver(c, observability.Options{Service: "orders", Registry: reg, Stdout: &meshtest.SyncBuffer{}})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); _ = obs.Run(ctx) }()
			defer func() { cancel(); <-done }()
			addr := serve(t, "127.0.0.37", obs.Instrument(observability.Inbound, "orders",
				http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok")) })))
			send := func() {
				resp, err := client.Get("http://" + addr + "/")
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
			}
			if tc.before != nil {
				tc.before(t, send)
			}

			const n = 300
			var slowest time.Duration
			start := time.Now()
			for i := 0; i < n; i++ {
				t0 := time.Now()
				send()
				slowest = max(slowest, time.Since(t0))
			}
			total := time.Since(start)
			if slowest >= exportTimeout/2 {
				t.Errorf("slowest request took %s with the collector dead (export timeout %s)", slowest, exportTimeout)
			}
			t.Logf("%d requests in %s, slowest %s", n, total, slowest)

			admin := serve(t, "127.0.0.37", observability.NewAdminMux(reg, observability.AlwaysReady))
			mfs := scrape(t, admin)
			dropped := series(mfs, "mesh_tracing_spans_dropped_total")[""]
			if dropped < n-16-3*8 {
				t.Errorf("mesh_tracing_spans_dropped_total = %v, want at least %d of %d spans", dropped, n-16-3*8, n)
			}
			if got := series(mfs, "mesh_requests_total")[reqLabels("2xx", "inbound", "orders", "none", "orders")]; got < n {
				t.Errorf("mesh_requests_total = %v, want >= %d", got, n)
			}
		})
	}
}

// TestRunOwnsItsGoroutines runs an Observer exporting to Jaeger over each
// protocol, with a file access log, and checks that when Run returns no
// goroutine of it (export loop, gRPC connection, HTTP client) is left.
func TestRunOwnsItsGoroutines(t *testing.T) {
	for _, tc := range []struct{ name, exporter, endpoint string }{
		{"otlp-grpc", "otlp-grpc", jaeger.OTLPGRPC},
		{"otlp-http", "otlp-http", jaeger.OTLPHTTP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tracingObs(tc.exporter, tc.endpoint, 1)
			c.AccessLog.Output = t.TempDir() + "/access.log"
			c.AccessLog.FlushInterval = 10 * time.Millisecond
			obs, err := observability.NewObserver(c, observability.Options{Service: "leak", Registry: observability.NewRegistry()})
			if err != nil {
				t.Fatal(err)
			}
			h := obs.Instrument(observability.Inbound, "leak", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
			before := goleak.IgnoreCurrent()
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- obs.Run(ctx) }()
			for i := 0; i < 5; i++ {
				req, _ := http.NewRequest("GET", "http://leak/", nil)
				h.ServeHTTP(&nopWriter{h: http.Header{}}, req)
			}
			_ = obs.Flush(ctx)
			cancel()
			if err := <-done; err != nil {
				t.Errorf("run: %v", err)
			}
			goleak.VerifyNone(t, before)
		})
	}
}
