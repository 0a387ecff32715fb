package observability_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/observability"
)

// The simulated VMs: the caller's agent A (service "web") and the callee's
// agent B (service "orders") with its app.
const (
	hostA = "127.0.0.31"
	hostB = "127.0.0.32"
)

// twoHop is client -> A outbound -> B inbound -> app, each agent
// instrumented by its own Observer, with its own registry and admin mux:
//
//   - A's outbound chain refuses path /breaker with 503 circuit-open, as an
//     open circuit breaker would;
//   - B's inbound chain refuses path /limited with 429 rate-limited, as the
//     local rate limit would;
//   - the app answers /ok with 1000 bytes, /fail with a 500, /echo with "ok"
//     after reading the body, and records the headers it got.
type twoHop struct {
	outbound         string // A's outbound listener
	obsA, obsB       *observability.Observer
	adminA, adminB   string // admin listeners (serving /metrics)
	logA, logB       *meshtest.SyncBuffer
	app              *recordingApp
	cancelA, cancelB context.CancelFunc
	runDone          sync.WaitGroup
}

// recordingApp is the app behind B.
type recordingApp struct {
	mu      sync.Mutex
	headers []http.Header
}

func (a *recordingApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	a.headers = append(a.headers, r.Header.Clone())
	a.mu.Unlock()
	switch r.URL.Path {
	case "/ok":
		_, _ = w.Write(bytes.Repeat([]byte("x"), 1000))
	case "/fail":
		http.Error(w, "boom", http.StatusInternalServerError)
	case "/echo":
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = w.Write([]byte("ok"))
	default:
		http.NotFound(w, r)
	}
}

func (a *recordingApp) seen() []http.Header {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]http.Header(nil), a.headers...)
}

// resolver resolves services from a map and records the chosen upstream
// in the request's Record, as the agent's router does.
type resolver map[string][]string

func (m resolver) resolve(ctx context.Context, service string) ([]string, bool) {
	addrs, ok := m[service]
	if !ok || len(addrs) == 0 {
		return nil, false
	}
	observability.RecordFrom(ctx).SetUpstream(service, addrs[0])
	return addrs, true
}

// inbound is an agent's inbound listener reduced to its forwarding: every
// request goes to the app at appAddr, a failure becomes the mesh's own
// error response.
func inbound(fwd *forwarder, appAddr string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fwd.Forward(w, r, appAddr)
	})
}

// outbound is an agent's outbound listener reduced to its routing: the
// service named by the Host ("orders", "orders.mesh", any port), its first
// endpoint from res.
func outbound(fwd *forwarder, res resolver) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		addrs, ok := res.resolve(r.Context(), serviceOf(r.Host))
		if !ok {
			refuse(w, r, http.StatusServiceUnavailable, "no-route", 0)
			return
		}
		fwd.Forward(relayedReason(w, r), r, addrs[0])
	})
}

func defaultObs() config.Observability {
	c := config.DefaultObservability()
	c.AccessLog.FlushInterval = 0 // lines reach the buffer at once
	return c
}

// serve runs h on host:0 and returns the address; the server stops with t.
func serve(t testing.TB, host string, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", host+":0")
	if err != nil {
		t.Fatalf("listen on %s: %v", host, err)
	}
	srv := newServer(h)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

func startTwoHop(t *testing.T, cfgA, cfgB config.Observability) *twoHop {
	t.Helper()
	th := &twoHop{logA: &meshtest.SyncBuffer{}, logB: &meshtest.SyncBuffer{}, app: &recordingApp{}}
	fwd := newForwarder()
	t.Cleanup(fwd.CloseIdleConnections)

	appAddr := serve(t, hostB, th.app)

	regB := observability.NewRegistry()
	var err error
	th.obsB, err = observability.NewObserver(cfgB, observability.Options{Service: "orders", Registry: regB, Stdout: th.logB})
	if err != nil {
		t.Fatalf("observer B: %v", err)
	}
	limiter := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/limited" {
				th.obsB.Metrics().RateLimited(observability.Inbound, "orders")
				refuse(w, r, http.StatusTooManyRequests, "rate-limited", time.Second)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
	inB := serve(t, hostB, th.obsB.Instrument(observability.Inbound, "orders",
		limiter(inbound(fwd, appAddr))))
	th.adminB = serve(t, hostB, observability.NewAdminMux(regB, observability.AlwaysReady))

	regA := observability.NewRegistry()
	th.obsA, err = observability.NewObserver(cfgA, observability.Options{Service: "web", Registry: regA, Stdout: th.logA})
	if err != nil {
		t.Fatalf("observer A: %v", err)
	}
	breaker := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/breaker" {
				observability.RecordFrom(r.Context()).SetUpstream("orders", "")
				th.obsA.Metrics().Upstream("orders").BreakerRejected()
				refuse(w, r, http.StatusServiceUnavailable, "circuit-open", 0)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
	res := resolver{"orders": {inB}}
	th.outbound = serve(t, hostA, th.obsA.Instrument(observability.Outbound, "web",
		breaker(outbound(fwd, res))))
	th.adminA = serve(t, hostA, observability.NewAdminMux(regA, observability.AlwaysReady))

	var ctxA, ctxB context.Context
	ctxA, th.cancelA = context.WithCancel(context.Background())
	ctxB, th.cancelB = context.WithCancel(context.Background())
	th.runDone.Add(2)
	go func() { defer th.runDone.Done(); _ = th.obsA.Run(ctxA) }()
	go func() { defer th.runDone.Done(); _ = th.obsB.Run(ctxB) }()
	t.Cleanup(th.stop)
	return th
}

// stop ends both Observers' Run (flushing and closing them).
func (th *twoHop) stop() {
	th.cancelA()
	th.cancelB()
	th.runDone.Wait()
}

var client = &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 16}, Timeout: 10 * time.Second}

// do sends one request through A's outbound listener to service host.
func (th *twoHop) do(t testing.TB, method, host, path string, body []byte, header http.Header) *http.Response {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://"+th.outbound+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	for k, vv := range header {
		req.Header[k] = vv
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s %s: %v", method, host, path, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// scrape fetches and parses an admin listener's /metrics.
func scrape(t testing.TB, admin string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := client.Get("http://" + admin + "/metrics")
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

// sample is one metric's value: counter, gauge, or histogram count.
func sample(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return 0
}

// series returns the samples of a family keyed by their labels
// ("k=v,k=v" in label-name order, as Prometheus sorts them).
func series(mfs map[string]*dto.MetricFamily, name string) map[string]float64 {
	out := map[string]float64{}
	mf, ok := mfs[name]
	if !ok {
		return out
	}
	for _, m := range mf.GetMetric() {
		var parts []string
		for _, l := range m.GetLabel() {
			parts = append(parts, l.GetName()+"="+l.GetValue())
		}
		out[strings.Join(parts, ",")] = sample(m)
	}
	return out
}

func labels(kv ...string) string {
	var parts []string
	for i := 0; i+1 < len(kv); i += 2 {
		parts = append(parts, kv[i]+"="+kv[i+1])
	}
	return strings.Join(parts, ",")
}

// reqLabels renders the request metrics' labels in Prometheus's order.
func reqLabels(class, direction, local, reason, upstream string) string {
	return labels("code_class", class, "direction", direction, "local_service", local, "reason", reason, "upstream_service", upstream)
}

func equalSeries(t *testing.T, what string, got, want map[string]float64) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s:\n got  %v\n want %v", what, got, want)
	}
}
