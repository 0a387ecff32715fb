package tcpproxy_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/dataplane/tcpproxy"
	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/observability"
)

// limitedInbound is an inbound relay in front of a real Redis whose limits
// the test sets.
type limitedInbound struct {
	*relay
	mu  sync.Mutex
	lim tcpproxy.Limits
}

func startLimitedInbound(t *testing.T, ip string, lim tcpproxy.Limits) *limitedInbound {
	t.Helper()
	rd := meshtest.StartRedis(t, ip)
	eps := []endpoint.Endpoint{{Addr: rd.Addr, Protocol: endpoint.TCP}}
	li := &limitedInbound{lim: lim}
	li.relay = startRelayWith(t, tcpproxy.Options{
		Direction: observability.Inbound, LocalService: "cache", Service: "cache",
		Endpoints: func(context.Context) ([]endpoint.Endpoint, config.Policy, error) { return eps, policy(), nil },
		Limits: func() tcpproxy.Limits {
			li.mu.Lock()
			defer li.mu.Unlock()
			return li.lim
		},
	})
	return li
}

func (li *limitedInbound) set(l tcpproxy.Limits) {
	li.mu.Lock()
	li.lim = l
	li.mu.Unlock()
}

// ping opens a connection through the relay and PINGs Redis on it; the
// connection stays open.
func ping(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if got, err := meshtest.RedisDo(c, bufio.NewReader(c), "PING"); err != nil || got != "+PONG" {
		t.Fatalf("PING through the relay: %q, %v", got, err)
	}
	return c
}

// refused asserts that a new connection is closed by the relay before
// Redis answers anything on it.
func refused(t *testing.T, addr string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.WriteString(c, "*1\r\n$4\r\nPING\r\n")
	if n, err := c.Read(make([]byte, 64)); n != 0 || err == nil {
		t.Fatalf("a connection over the limit read %d bytes, %v; want it closed at once", n, err)
	}
}

// The inbound relay of a TCP app refuses connections over the service's
// max_requests (as concurrent connections) and over its rate limit (a
// token per connection): closed at once, one access log line with the
// reason, counted by reason; connections within the limits reach Redis.
func TestInboundRelayLimitsConnections(t *testing.T) {
	t.Run("max concurrent connections", func(t *testing.T) {
		li := startLimitedInbound(t, "127.0.0.44", tcpproxy.Limits{MaxConns: 2})
		a := ping(t, li.addr)
		ping(t, li.addr)
		refused(t, li.addr)
		wantRefusal(t, li.relay, tcpproxy.ReasonOverflow)

		a.Close() // one slot free again
		meshtest.Eventually(t, 5*time.Second, func() error {
			if n := len(li.lines()); n != 2 {
				return errorf("%d access log lines, want 2 (the refusal, the closed one)", n)
			}
			return nil
		})
		ping(t, li.addr)

		li.set(tcpproxy.Limits{}) // no limit: a config push lifts it
		ping(t, li.addr)
		ping(t, li.addr)
	})
	t.Run("connection rate", func(t *testing.T) {
		li := startLimitedInbound(t, "127.0.0.45", tcpproxy.Limits{RateLimit: config.RateLimit{MaxTokens: 2, TokensPerFill: 1, FillInterval: time.Hour}})
		ping(t, li.addr).Close()
		ping(t, li.addr).Close()
		refused(t, li.addr)
		wantRefusal(t, li.relay, tcpproxy.ReasonRateLimited)
	})
}

// wantRefusal waits for the access log line and the counter of one
// connection refused for reason.
func wantRefusal(t *testing.T, r *relay, reason string) {
	t.Helper()
	meshtest.Eventually(t, 5*time.Second, func() error {
		var got []observability.TCPConn
		for _, l := range r.lines() {
			if l.Reason == reason {
				got = append(got, l)
			}
		}
		if len(got) != 1 || got[0].Direction != observability.Inbound || got[0].BytesIn != 0 || got[0].Endpoint != "" {
			return errorf("access log lines with reason %s: %+v, want one inbound line that reached no endpoint", reason, got)
		}
		if n := counterWith(t, r.reg, "mesh_tcp_connections_total", "reason", reason); n != 1 {
			return errorf("mesh_tcp_connections_total{reason=%q} = %v, want 1", reason, n)
		}
		return nil
	})
}

// counterWith is the value of name's series whose label has value.
func counterWith(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
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
			if hasLabel(m, label, value) {
				v += m.GetCounter().GetValue()
			}
		}
	}
	return v
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}
