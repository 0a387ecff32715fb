package agent_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/agent"
	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/dataplane/chain"
	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/dataplane/proxy"
	"github.com/meshvm/mesh/dataplane/table"
	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/observability"
)

// body100 is a 100-byte response, as in the nginx comparison of
// testing.md.
var body100 = []byte("0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456\n")

func benchServe(b *testing.B, ip string, h http.Handler) string {
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go func() { _ = srv.Serve(ln) }()
	b.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// otlpSink accepts OTLP/HTTP exports and drops them: a collector that
// costs nothing.
func otlpSink(b *testing.B) string {
	return benchServe(b, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
}

// obsConfigs are the observability settings the benchmarks compare.
func obsConfigs(sink string) []struct {
	name string
	cfg  *config.Observability // nil: not instrumented at all
} {
	with := func(log bool, exporter string, ratio float64) *config.Observability {
		c := config.DefaultObservability()
		c.AccessLog.Enabled = log
		c.Tracing.Exporter = exporter
		c.Tracing.Endpoint = "http://" + sink
		c.Tracing.SampleRatio = ratio
		return &c
	}
	return []struct {
		name string
		cfg  *config.Observability
	}{
		{"none", nil},
		{"metrics", with(false, "none", 0)},
		{"metrics+log", with(true, "none", 0)},
		{"metrics+log+trace0%", with(true, "otlp-http", 0)},
		{"metrics+log+trace1%", with(true, "otlp-http", 0.01)},
		{"metrics+log+trace100%", with(true, "otlp-http", 1)},
	}
}

// discardWriter is the cheapest http.ResponseWriter: the benchmark
// measures the instrumented chain and the app round trip alone.
type discardWriter struct {
	h    http.Header
	code int
}

func (d *discardWriter) Header() http.Header { return d.h }
func (d *discardWriter) WriteHeader(code int) {
	if d.code == 0 {
		d.code = code
	}
}
func (d *discardWriter) Write(p []byte) (int, error) { return len(p), nil }

// BenchmarkInstrumentedChain is one request through the agent's outbound
// chain (default policy: breaker, retries, outlier detection, round robin)
// to a loopback app, wrapped by Observer.Instrument as agent.New wraps its
// listeners, with governance metrics on: not instrumented, metrics only,
// + access log (JSON, buffered, to io.Discard), + tracing sampled at 0%,
// 1%, 100% (OTLP/HTTP to a local sink). The instrumentation's cost is the
// difference to "none"; the app round trip is in every figure.
func BenchmarkInstrumentedChain(b *testing.B) {
	app := benchServe(b, "127.0.0.91", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header()["Content-Length"] = []string{strconv.Itoa(len(body100))}
		_, _ = w.Write(body100)
	}))
	sink := otlpSink(b)
	for _, oc := range obsConfigs(sink) {
		b.Run(oc.name, func(b *testing.B) {
			fwd := proxy.NewForwarder(proxy.Options{Log: zerolog.Nop()})
			defer fwd.CloseIdleConnections()
			st := chain.NewState(nil)
			var wrap func(http.Handler) http.Handler = func(h http.Handler) http.Handler { return h }
			if oc.cfg != nil {
				obs, err := observability.NewObserver(*oc.cfg, observability.Options{Service: "web",
					Registry: prometheus.NewRegistry(), Stdout: io.Discard, Log: zerolog.Nop()})
				if err != nil {
					b.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() { defer close(done); _ = obs.Run(ctx) }()
				defer func() { cancel(); <-done }()
				st.WithMetrics(obs.Metrics())
				fwd = proxy.NewForwarder(proxy.Options{Log: zerolog.Nop(), WrapDial: obs.Metrics().Dialer})
				wrap = func(h http.Handler) http.Handler { return obs.Instrument(observability.Outbound, "web", h) }
			}
			tbl := &table.Table{Version: "1", Static: true, Default: config.DefaultPolicy(),
				Services: map[string]*table.Service{"orders": {Name: "orders", Policy: config.DefaultPolicy(),
					Endpoints: []endpoint.Endpoint{{Addr: app}}}}}
			h, err := chain.Compile(tbl, nil, chain.Local{Service: "web"}, fwd, st, zerolog.Nop())
			if err != nil {
				b.Fatal(err)
			}
			handler := wrap(chain.NewSwitch(h).Outbound())
			req, _ := http.NewRequest(http.MethodGet, "http://orders/items/1", nil)
			req.RemoteAddr = "127.0.0.90:40000"
			req.RequestURI = "/items/1"
			req.Header.Set("User-Agent", "bench")
			w := &discardWriter{h: http.Header{}}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				// Every request arrives without ids, as from an app.
				for _, k := range []string{"X-Request-Id", "Traceparent", "X-B3-Traceid", "X-B3-Spanid", "X-B3-Sampled"} {
					delete(req.Header, k)
				}
				clear(w.h)
				w.code = 0
				handler.ServeHTTP(w, req)
				if w.code != 200 {
					b.Fatalf("status %d", w.code)
				}
			}
		})
	}
}

// BenchmarkAgentTwoHop is throughput through two real agents (client ->
// agent A outbound -> agent B inbound -> app, over loopback, registered in
// the test's Consul), with the agents' observability at its minimum
// (metrics only: they cannot be turned off), with the access log (to a
// file), and with tracing (OTLP/HTTP to a local sink) at 0%, 1% and 100%; in
// one run, so that the ratios mean something on a shared machine. req/s is
// the figure to compare; cpu-ns/op is this process's CPU (client, both
// agents, app) per request.
func BenchmarkAgentTwoHop(b *testing.B) {
	sink := otlpSink(b)
	for i, oc := range obsConfigs(sink) {
		if oc.cfg == nil {
			continue // an agent always records metrics
		}
		b.Run(oc.name, func(b *testing.B) {
			ipB := "127.0.0." + strconv.Itoa(93+i)
			svc := "bench-orders-" + strconv.Itoa(i)
			app := benchServe(b, ipB, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.Header()["Content-Length"] = []string{strconv.Itoa(len(body100))}
				_, _ = w.Write(body100)
			}))
			_, port, _ := net.SplitHostPort(app)
			obs := *oc.cfg
			obs.AccessLog.Output = filepath.Join(b.TempDir(), "access.log")
			benchAgent(b, ipB, svc, port, obs)
			a := benchAgent(b, "127.0.0.92", "bench-web-"+strconv.Itoa(i), port, obs)
			meshtest.Eventually(b, 15*time.Second, func() error {
				entries, _, err := consul.Client.Health().Service(svc, "", true, nil)
				if err != nil || len(entries) != 1 {
					return fmt.Errorf("%s not passing: %v", svc, err)
				}
				return nil
			})
			c := &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 64}}
			defer c.CloseIdleConnections()
			url := "http://" + a.Addr("outbound") + "/items/1"
			do := func() error {
				req, _ := http.NewRequest(http.MethodGet, url, nil)
				req.Host = svc
				resp, err := c.Do(req)
				if err != nil {
					return err
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					return fmt.Errorf("status %d", resp.StatusCode)
				}
				return nil
			}
			meshtest.Eventually(b, 15*time.Second, do)
			b.ReportAllocs()
			b.SetParallelism(16) // 32 concurrent clients on 2 CPUs, as wrk -c 32
			cpu0 := processCPU()
			start := time.Now()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := do(); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
			b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// benchAgent runs an agent for service on ip in front of an app on
// ip:appPort until the benchmark ends.
func benchAgent(b *testing.B, ip, service, appPort string, obs config.Observability) *agent.Agent {
	cfg := config.Default()
	cfg.Consul.Addr = consul.Addr
	cfg.Agent.Service = service
	cfg.Agent.AppAddress = ip
	cfg.Agent.AppPort, _ = strconv.Atoi(appPort)
	cfg.Agent.HealthInterval = time.Second
	cfg.Agent.InboundAddr, cfg.Agent.OutboundAddr, cfg.Agent.AdminAddr = ip+":0", ip+":0", ip+":0"
	cfg.Agent.Node = "bench-" + service
	cfg.Agent.DrainPeriod = 0
	cfg.Agent.CacheDir = b.TempDir()
	cfg.Observability = obs
	if err := cfg.Validate(config.RoleAgent); err != nil {
		b.Fatal(err)
	}
	ag, err := agent.New(cfg, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ag.Run(ctx) }()
	b.Cleanup(func() { cancel(); <-done })
	meshtest.Eventually(b, 15*time.Second, func() error {
		if !ag.Ready() {
			return fmt.Errorf("agent %s not ready", service)
		}
		return nil
	})
	return ag
}

// processCPU is the CPU time (user+system) this process used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
