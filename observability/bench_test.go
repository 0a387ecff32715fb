package observability_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/observability"
)

// otlpSink answers OTLP/HTTP exports with success, as a healthy collector
// does, without storing anything: the benchmarks measure the agent.
func otlpSink(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.38:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.WriteHeader(http.StatusOK)
	})}
	go func() { _ = srv.Serve(ln) }()
	b.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// nopWriter is a reusable ResponseWriter that discards the response.
type nopWriter struct{ h http.Header }

func (w *nopWriter) Header() http.Header         { return w.h }
func (w *nopWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *nopWriter) WriteHeader(int)             {}

var body100 = bytes.Repeat([]byte("x"), 100)

// benchConfigs are the observability settings the benchmarks compare.
func benchConfigs(sink string) []struct {
	name string
	cfg  *config.Observability
} {
	mk := func(log bool, ratio float64) *config.Observability {
		c := config.DefaultObservability()
		c.AccessLog.Enabled = log
		if ratio >= 0 {
			c.Tracing.Exporter = "otlp-http"
			c.Tracing.Endpoint = sink
			c.Tracing.SampleRatio = ratio
		}
		return &c
	}
	return []struct {
		name string
		cfg  *config.Observability
	}{
		{"off", nil},
		{"metrics", mk(false, -1)},
		{"metrics+log", mk(true, -1)},
		{"metrics+log+trace0%", mk(true, 0)},
		{"metrics+log+trace1%", mk(true, 0.01)},
		{"metrics+log+trace100%", mk(true, 1)},
	}
}

// BenchmarkInstrument is the per-request cost of Instrument around a
// handler that writes 100 bytes: metrics, access log (JSON, buffered, to
// io.Discard) and tracing sampled at 0%, 1% and 100% (exported over OTLP
// HTTP to a local sink), against no instrumentation.
func BenchmarkInstrument(b *testing.B) {
	sink := otlpSink(b)
	inner := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(body100) })
	for _, bc := range benchConfigs(sink) {
		b.Run(bc.name, func(b *testing.B) {
			var h http.Handler = inner
			if bc.cfg != nil {
				obs, err := observability.NewObserver(*bc.cfg, observability.Options{
					Service: "orders", Registry: prometheus.NewRegistry(), Stdout: io.Discard, Log: zerolog.Nop()})
				if err != nil {
					b.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() { defer close(done); _ = obs.Run(ctx) }()
				defer func() { cancel(); <-done }()
				h = obs.Instrument(observability.Inbound, "orders", inner)
			}
			req, _ := http.NewRequest(http.MethodGet, "http://orders/ok", nil)
			req.RemoteAddr = "127.0.0.11:40000"
			req.Header.Set("User-Agent", "bench")
			w := &nopWriter{h: http.Header{}}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				// Every request arrives without ids, as from an app.
				delete(req.Header, "X-Request-Id")
				delete(req.Header, "Traceparent")
				delete(req.Header, "X-B3-Traceid")
				delete(req.Header, "X-B3-Spanid")
				delete(req.Header, "X-B3-Sampled")
				h.ServeHTTP(w, req)
			}
		})
	}
}

// BenchmarkTwoHop is throughput through two real agents (client -> A
// outbound -> B inbound -> app, over loopback sockets) with observability
// off and on (metrics, access log to io.Discard, tracing at 1% and 100%),
// in one run so the ratio is meaningful on a shared machine. Compare
// req/s between sub-benchmarks; ns/op is wall time per request across all
// clients.
func BenchmarkTwoHop(b *testing.B) {
	sink := otlpSink(b)
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(body100) })
	for _, bc := range benchConfigs(sink) {
		if bc.name == "metrics" || bc.name == "metrics+log" {
			continue
		}
		b.Run(bc.name, func(b *testing.B) {
			fwd := newForwarder()
			defer fwd.CloseIdleConnections()
			wrap := func(dir, svc string, h http.Handler) http.Handler {
				if bc.cfg == nil {
					return h
				}
				obs, err := observability.NewObserver(*bc.cfg, observability.Options{
					Service: svc, Registry: prometheus.NewRegistry(), Stdout: io.Discard, Log: zerolog.Nop()})
				if err != nil {
					b.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() { defer close(done); _ = obs.Run(ctx) }()
				b.Cleanup(func() { cancel(); <-done })
				return obs.Instrument(dir, svc, h)
			}
			appAddr := serve(b, "127.0.0.39", app)
			in := serve(b, "127.0.0.39", wrap(observability.Inbound, "orders", inbound(fwd, appAddr)))
			res := resolver{"orders": {in}}
			out := serve(b, "127.0.0.38", wrap(observability.Outbound, "web", outbound(fwd, res)))
			c := &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 64}}
			defer c.CloseIdleConnections()
			b.ReportAllocs()
			b.SetParallelism(16) // 32 concurrent clients on 2 CPUs, as wrk -c 32
			cpu0 := processCPU()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					req, _ := http.NewRequest(http.MethodGet, "http://"+out+"/ok", nil)
					req.Host = "orders"
					resp, err := c.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
			b.StopTimer()
			// CPU time of this process (client, both agents, app) per
			// request: steadier than wall time on a machine shared with
			// other work.
			b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// processCPU is the CPU time (user+system) this process used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
