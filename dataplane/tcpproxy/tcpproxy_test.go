package tcpproxy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/dataplane/tcpproxy"
	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/observability"
)

// relay is a running Relay and what it recorded.
type relay struct {
	*tcpproxy.Relay
	addr string
	reg  *prometheus.Registry
	mu   sync.Mutex
	logs []observability.TCPConn
}

func (r *relay) lines() []observability.TCPConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]observability.TCPConn(nil), r.logs...)
}

func startRelay(t *testing.T, idle time.Duration, pol config.Policy, addrs ...string) *relay {
	t.Helper()
	eps := make([]endpoint.Endpoint, len(addrs))
	for i, a := range addrs {
		eps[i] = endpoint.Endpoint{Addr: a}
	}
	return startRelayWith(t, tcpproxy.Options{
		Direction: observability.Outbound, LocalService: "web", Service: "redis",
		Endpoints:   func(context.Context) ([]endpoint.Endpoint, config.Policy, error) { return eps, pol, nil },
		IdleTimeout: idle,
	})
}

// startRelayWith runs a relay with o, recording its access log lines and
// metrics.
func startRelayWith(t *testing.T, o tcpproxy.Options) *relay {
	t.Helper()
	rr := &relay{reg: prometheus.NewRegistry()}
	m, err := tcpproxy.NewMetrics(rr.reg)
	if err != nil {
		t.Fatal(err)
	}
	o.Log = zerolog.New(zerolog.NewTestWriter(t))
	o.Metrics = m
	o.Observe = func(c observability.TCPConn) {
		rr.mu.Lock()
		rr.logs = append(rr.logs, c)
		rr.mu.Unlock()
	}
	r, err := tcpproxy.New(o)
	if err != nil {
		t.Fatal(err)
	}
	rr.Relay = r
	ln, err := net.Listen("tcp", "127.0.0.41:0")
	if err != nil {
		t.Fatal(err)
	}
	rr.addr = ln.Addr().String()
	done := make(chan error, 1)
	go func() { done <- r.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := r.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return rr
}

// redisPort asks the Redis behind addr which port it listens on: which
// endpoint the connection reached.
func redisPort(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	if _, err := meshtest.RedisDo(c, br, "CONFIG", "GET", "port"); err != nil {
		t.Fatal(err)
	}
	// *2 was read; then $4, port, $N, the value.
	var port string
	for i := 0; i < 4; i++ {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		port = strings.TrimSpace(line)
	}
	return port
}

func policy() config.Policy {
	p := config.DefaultPolicy()
	p.LoadBalancer.LocalityAware = false
	p.ConnectTimeout = 500 * time.Millisecond
	return p
}

// Each connection goes to one endpoint, round robin; commands and replies
// cross the relay unchanged; every connection gets one access log line
// with its byte counts, and the counters add up.
func TestRelayBalancesConnectionsToRealRedis(t *testing.T) {
	r1 := meshtest.StartRedis(t, "127.0.0.42")
	r2 := meshtest.StartRedis(t, "127.0.0.43")
	r := startRelay(t, time.Minute, policy(), r1.Addr, r2.Addr)

	seen := map[string]int{}
	for i := 0; i < 6; i++ {
		seen[redisPort(t, r.addr)]++
	}
	if len(seen) != 2 || seen[port(r1.Addr)] != 3 || seen[port(r2.Addr)] != 3 {
		t.Errorf("connections per Redis: %v, want 3 each", seen)
	}

	c, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	if got, err := meshtest.RedisDo(c, br, "SET", "k", strings.Repeat("v", 100_000)); err != nil || got != "+OK" {
		t.Fatalf("SET: %q %v", got, err)
	}
	if got, err := meshtest.RedisDo(c, br, "GET", "k"); err != nil || len(got) != 100_000 {
		t.Fatalf("GET: %d bytes, %v", len(got), err)
	}
	c.Close()

	meshtest.Eventually(t, 5*time.Second, func() error {
		if n := len(r.lines()); n != 7 {
			return errorf("%d access log lines, want 7 (one per connection)", n)
		}
		return nil
	})
	var last observability.TCPConn // the SET/GET connection: lines come as connections end, in any order
	for _, l := range r.lines() {
		if l.BytesIn > last.BytesIn {
			last = l
		}
	}
	if last.BytesIn < 100_000 || last.BytesOut < 100_000 || last.Reason != "" || last.Endpoint == "" || last.UpstreamService != "redis" {
		t.Errorf("access log of the SET/GET connection: %+v", last)
	}
	var in float64
	for _, l := range r.lines() {
		in += float64(l.BytesIn)
	}
	if got := sum(t, r.reg, "mesh_tcp_received_bytes_total"); got != in {
		t.Errorf("mesh_tcp_received_bytes_total = %v, want %v (the sum of the lines)", got, in)
	}
}

// An endpoint that refuses connections costs callers nothing: the next
// endpoint is tried, and after consecutive failures it is ejected (no
// more connection attempts to it).
func TestRelayEjectsEndpointThatRefusesConnections(t *testing.T) {
	live := meshtest.StartRedis(t, "127.0.0.44")
	dead := "127.0.0.45:1" // nobody listens there: connections are refused
	p := policy()
	p.OutlierDetection = config.OutlierDetection{ConsecutiveGatewayFailure: 2, Interval: time.Minute, BaseEjectionTime: time.Minute, MaxEjectionPercent: 100}
	r := startRelay(t, time.Minute, p, dead, live.Addr)
	for i := 0; i < 10; i++ {
		if got := redisPort(t, r.addr); got != port(live.Addr) {
			t.Fatalf("connection %d reached port %s, want the live Redis", i, got)
		}
	}
	if got := sum(t, r.reg, "mesh_tcp_connect_failures_total"); got != 2 {
		t.Errorf("connect failures = %v, want 2 (then the endpoint is ejected)", got)
	}
}

// A connection idle both ways for the idle timeout is closed, and logged
// with reason idle-timeout; one that keeps talking is not.
func TestRelayIdleTimeout(t *testing.T) {
	rd := meshtest.StartRedis(t, "127.0.0.46")
	r := startRelay(t, 400*time.Millisecond, policy(), rd.Addr)

	busy, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	idle, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	bb := bufio.NewReader(busy)
	for i := 0; i < 8; i++ { // 1.6 s of traffic, every 200 ms
		if got, err := meshtest.RedisDo(busy, bb, "PING"); err != nil || got != "+PONG" {
			t.Fatalf("busy connection, PING %d: %q %v", i, got, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	_ = idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := idle.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("idle connection: read %v, want EOF (closed by the relay)", err)
	}
	meshtest.Eventually(t, 5*time.Second, func() error {
		for _, l := range r.lines() {
			if l.Reason == tcpproxy.ReasonIdleTimeout {
				return nil
			}
		}
		return errorf("no access log line with reason idle-timeout: %+v", r.lines())
	})
}

// No endpoint, or none that answers: the connection is closed at once and
// logged with the reason.
func TestRelayRefusals(t *testing.T) {
	r := startRelay(t, time.Minute, policy(), "127.0.0.47:1")
	c, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("read %v, want EOF", err)
	}
	c.Close()
	meshtest.Eventually(t, 5*time.Second, func() error {
		if l := r.lines(); len(l) != 1 || l[0].Reason != tcpproxy.ReasonConnectFailure {
			return errorf("access log %+v, want one line with reason %s", l, tcpproxy.ReasonConnectFailure)
		}
		return nil
	})
	none := startRelay(t, time.Minute, policy())
	c, err = net.Dial("tcp", none.addr)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Read(make([]byte, 1))
	c.Close()
	meshtest.Eventually(t, 5*time.Second, func() error {
		if l := none.lines(); len(l) != 1 || l[0].Reason != tcpproxy.ReasonNoHealthyEndpoint {
			return errorf("access log %+v, want one line with reason %s", l, tcpproxy.ReasonNoHealthyEndpoint)
		}
		return nil
	})
}

// Shutdown closes quiet connections at once, as an HTTP server closes
// idle keep-alive connections, and cuts busy ones at its deadline.
func TestRelayShutdownClosesQuietConnections(t *testing.T) {
	rd := meshtest.StartRedis(t, "127.0.0.49")
	eps := []endpoint.Endpoint{{Addr: rd.Addr}}
	r, err := tcpproxy.New(tcpproxy.Options{Service: "redis",
		Endpoints: func(context.Context) ([]endpoint.Endpoint, config.Policy, error) { return eps, policy(), nil }})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.49:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = r.Serve(ln) }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err := meshtest.RedisDo(c, bufio.NewReader(c), "PING"); err != nil || got != "+PONG" {
		t.Fatalf("PING: %q %v", got, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	if err := r.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("shutdown took %v for a quiet connection", d)
	}
}

// Shutdown waits for busy connections, then cuts them at its deadline.
func TestRelayShutdownCutsAtDeadline(t *testing.T) {
	rd := meshtest.StartRedis(t, "127.0.0.48")
	eps := []endpoint.Endpoint{{Addr: rd.Addr}}
	r, err := tcpproxy.New(tcpproxy.Options{Service: "redis",
		Endpoints: func(context.Context) ([]endpoint.Endpoint, config.Policy, error) { return eps, policy(), nil }})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.48:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = r.Serve(ln) }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err := meshtest.RedisDo(c, bufio.NewReader(c), "PING"); err != nil || got != "+PONG" {
		t.Fatalf("PING: %q %v", got, err)
	}
	// Keep the connection busy: a PING every 100 ms.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		br := bufio.NewReader(c)
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if _, err := meshtest.RedisDo(c, br, "PING"); err != nil {
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := r.Shutdown(ctx); err == nil {
		t.Error("shutdown with an open connection returned nil, want the deadline's error")
	}
	if d := time.Since(start); d < 1400*time.Millisecond {
		t.Errorf("shutdown returned after %v, before its deadline", d)
	}
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		t.Error("the listener still accepts after shutdown")
	}
}

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// sum adds up every series of the metric name in reg.
func sum(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var v float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			v += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return v
}

var errorf = fmt.Errorf
