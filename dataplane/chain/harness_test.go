package chain_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/dataplane/chain"
	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/dataplane/proxy"
	"github.com/meshvm/mesh/dataplane/table"
)

// The simulated VMs: the caller's agent A and callee VMs B1..B3, each
// with an app and an inbound agent.
const (
	hostA  = "127.0.0.41"
	hostB1 = "127.0.0.42"
	hostB2 = "127.0.0.43"
	hostB3 = "127.0.0.44"
	// deadAddr refuses connections: nothing listens on port 1.
	deadAddr = "127.0.0.45:1"
)

// startServer starts h on host:0 with the agent's server settings, until
// stop.
func startServer(host string, h http.Handler) (addr string, stop func(), err error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", nil, fmt.Errorf("listen on %s: %w", host, err)
	}
	srv := proxy.NewServer(h, zerolog.Nop())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(l)
	}()
	return l.Addr().String(), func() {
		_ = srv.Close()
		<-done
	}, nil
}

// serve starts h on host:0 with the agent's server settings until t ends.
func serve(t testing.TB, host string, h http.Handler) string {
	t.Helper()
	addr, stop, err := startServer(host, h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return addr
}

// app is a callee's app: it answers with its name, or as its mode says,
// and counts what it served.
type app struct {
	name   string
	served atomic.Int64
	mode   atomic.Value // string: "ok", "500", "503", "slow"
	delay  atomic.Int64 // for "slow" and "503-slow", nanoseconds
}

func newApp(name string) *app {
	a := &app{name: name}
	a.mode.Store("ok")
	return a
}

func (a *app) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.served.Add(1)
	_, _ = io.Copy(io.Discard, r.Body)
	switch a.mode.Load().(string) {
	case "500":
		w.WriteHeader(http.StatusInternalServerError)
		return
	case "503":
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	case "503-slow":
		sleep(r.Context(), time.Duration(a.delay.Load()))
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	case "slow":
		if !sleep(r.Context(), time.Duration(a.delay.Load())) {
			return
		}
	}
	w.Header().Set("X-App", a.name)
	_, _ = io.WriteString(w, a.name)
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// callee is one callee VM: its app and its agent's inbound listener.
type callee struct {
	app     *app
	inbound string
	sw      *chain.Switch
	st      *chain.State
	zone    string

	mu       sync.Mutex
	refusals []time.Duration // how long the agent took to answer each 429
}

// startCallee starts an app and an agent inbound in front of it, with the
// inbound policy in.
func startCallee(t testing.TB, host, name, zone string, in table.Inbound) *callee {
	t.Helper()
	a := newApp(name)
	appAddr := serve(t, host, a)
	fwd := proxy.NewForwarder(proxy.Options{Log: zerolog.Nop()})
	t.Cleanup(fwd.CloseIdleConnections)
	st := chain.NewState(nil)
	h, err := chain.Compile(&table.Table{Version: "1", Static: true, Inbound: in}, nil, chain.Local{Service: "b", Zone: zone}, fwd, st, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	sw := chain.NewSwitch(h)
	c := &callee{app: a, sw: sw, st: st, zone: zone}
	inbound := sw.Inbound(appAddr)
	c.inbound = serve(t, host, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		inbound.ServeHTTP(sw, r)
		if sw.status == http.StatusTooManyRequests {
			c.mu.Lock()
			c.refusals = append(c.refusals, time.Since(start))
			c.mu.Unlock()
		}
	}))
	return c
}

// statusWriter records the status a handler wrote.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// caller is agent A: an outbound listener over a static table.
type caller struct {
	outbound string
	sw       *chain.Switch
	st       *chain.State
	fwd      *proxy.Forwarder
	local    chain.Local

	mu          sync.Mutex
	openRefusal []time.Duration // how long the agent took to answer each 503 circuit-open
}

func startCaller(t testing.TB, tbl *table.Table, local chain.Local) *caller {
	t.Helper()
	fwd := proxy.NewForwarder(proxy.Options{Log: zerolog.Nop(), ConnectTimeout: 500 * time.Millisecond})
	t.Cleanup(fwd.CloseIdleConnections)
	st := chain.NewState(nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = st.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	h, err := chain.Compile(tbl, nil, local, fwd, st, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	sw := chain.NewSwitch(h)
	c := &caller{sw: sw, st: st, fwd: fwd, local: local}
	outbound := sw.Outbound()
	c.outbound = serve(t, hostA, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		outbound.ServeHTTP(w, r)
		if w.Header().Get("x-mesh-reason") == proxy.ReasonCircuitOpen {
			c.mu.Lock()
			c.openRefusal = append(c.openRefusal, time.Since(start))
			c.mu.Unlock()
		}
	}))
	return c
}

// push compiles tbl and swaps it in.
func (c *caller) push(t testing.TB, tbl *table.Table) {
	t.Helper()
	h, err := chain.Compile(tbl, nil, c.local, c.fwd, c.st, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	c.sw.Swap(h)
}

// static returns a static table with one service "b" under p whose
// endpoints are the callees'.
func static(version string, p config.Policy, callees ...*callee) *table.Table {
	eps := make([]endpoint.Endpoint, 0, len(callees))
	for _, c := range callees {
		eps = append(eps, endpoint.Endpoint{Addr: c.inbound, Zone: c.zone})
	}
	return &table.Table{
		Version:  version,
		Static:   true,
		Services: map[string]*table.Service{"b": {Name: "b", Policy: p, Endpoints: eps}},
		Default:  config.DefaultPolicy(),
	}
}

// bare is a policy with every governance feature off.
func bare() config.Policy {
	return config.Policy{ConnectTimeout: time.Second, LoadBalancer: config.LoadBalancer{Policy: "round_robin"}}
}

// client returns an HTTP/1.1 client whose every connection goes to addr,
// with up to conns connections.
func client(addr string, conns int) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy: nil,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "tcp", addr)
			},
			MaxIdleConnsPerHost: conns,
			MaxConnsPerHost:     conns,
			DisableCompression:  true,
		},
		Timeout: 30 * time.Second,
	}
}

// result is one request's answer as a caller saw it.
type result struct {
	status     int
	reason     string
	retryAfter string
	from       string
	took       time.Duration
	err        error
}

func get(c *http.Client, url string) result {
	start := time.Now()
	resp, err := c.Get(url)
	if err != nil {
		return result{err: err, took: time.Since(start)}
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return result{
		status:     resp.StatusCode,
		reason:     resp.Header.Get("X-Mesh-Reason"),
		retryAfter: resp.Header.Get("Retry-After"),
		from:       string(body),
		took:       time.Since(start),
		err:        err,
	}
}

// load sends n requests from conns concurrent callers and returns every
// answer.
func load(c *http.Client, url string, n, conns int) []result {
	out := make([]result, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				out[i] = get(c, url)
			}
		}()
	}
	wg.Wait()
	return out
}

// key names an answer by status and reason: "200", "503 circuit-open".
func key(r result) string {
	switch {
	case r.err != nil:
		return "error"
	case r.reason != "":
		return fmt.Sprint(r.status, " ", r.reason)
	}
	return fmt.Sprint(r.status)
}

// tally counts answers by key.
func tally(rs []result) map[string]int {
	m := map[string]int{}
	for _, r := range rs {
		m[key(r)]++
	}
	return m
}

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// eventually polls cond every 10ms until it holds or d passed.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
