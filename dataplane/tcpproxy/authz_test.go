package tcpproxy_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/dataplane/tcpproxy"
	"github.com/meshvm/mesh/observability"
	"github.com/meshvm/mesh/wire"
)

// TestRelayAuthorizesEachConnection: the L4 authorization decides on each
// connection before anything is dialed; a refused one is closed without
// reaching the app and logged with rbac-denied, the caller and the rule.
func TestRelayAuthorizesEachConnection(t *testing.T) {
	app, err := net.Listen("tcp", "127.0.0.42:0")
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	var accepted atomic.Int64
	go func() {
		for {
			c, err := app.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	var allow atomic.Bool
	logs := make(chan observability.TCPConn, 4)
	r, err := tcpproxy.New(tcpproxy.Options{
		Direction: observability.Inbound, LocalService: "cache", Service: "cache",
		Endpoints: func(context.Context) ([]endpoint.Endpoint, config.Policy, error) {
			return []endpoint.Endpoint{{Addr: app.Addr().String()}}, policy(), nil
		},
		Log:     zerolog.New(zerolog.NewTestWriter(t)),
		Observe: func(c observability.TCPConn) { logs <- c },
		Authorize: func(net.Conn) tcpproxy.Authorization {
			if allow.Load() {
				return tcpproxy.Authorization{Allowed: true, PeerIdentity: "spiffe://mesh.local/ns/default/svc/web", Rule: "allow-0"}
			}
			return tcpproxy.Authorization{Rule: "default"}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.41:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Serve(ln) }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = r.Shutdown(ctx)
		<-done
	}()

	dial := func() (string, error) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "ping\n"); err != nil {
			return "", err
		}
		return bufio.NewReader(c).ReadString('\n')
	}
	if got, err := dial(); err == nil {
		t.Fatalf("a refused connection read %q", got)
	}
	l := <-logs
	if l.Reason != wire.ReasonRBACDenied || l.AuthzRule != "default" || l.Endpoint != "" {
		t.Errorf("access log %+v, want reason %s, rule default, no endpoint", l, wire.ReasonRBACDenied)
	}
	if n := accepted.Load(); n != 0 {
		t.Errorf("the app accepted %d connections, want none", n)
	}

	allow.Store(true)
	if got, err := dial(); err != nil || got != "ping\n" {
		t.Fatalf("an allowed connection read %q, %v", got, err)
	}
	l = <-logs
	if l.Reason != "" || l.AuthzRule != "allow-0" || l.PeerIdentity == "" {
		t.Errorf("access log %+v, want no reason, rule allow-0 and the caller", l)
	}
}
