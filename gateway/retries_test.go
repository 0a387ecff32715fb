package gateway_test

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/meshtest"
)

// TestRouteRetryPolicyApplies: a real app answers every other request
// with 503. The route with retry_on 5xx (two retries) gets 200 every
// time, the app seeing the retry; the route without a retry policy
// passes the 503 on (the service's cluster has none for 5xx).
func TestRouteRetryPolicyApplies(t *testing.T) {
	var hits atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.97:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if hits.Add(1)%2 == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte(`{"app":"flaky"}`))
	})}
	// The gateway speaks HTTP/2 to endpoints (agents' inbound), so the
	// app takes h2c too.
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	app := net.JoinHostPort("127.0.0.97", strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))

	cp := startControlPlane(t)
	g := startGateway(t, cp, newCA(t), func(c *config.Config) { c.Gateway.Limits.PerIP = config.RateLimit{} })
	retried := prefixRoute("retried", "/retried", toCluster("flaky"))
	retried.GetRoute().RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(2)}
	plain := prefixRoute("plain", "/plain", toCluster("flaky"))
	cp.set(t, g.node, gwConfig{services: map[string][]string{"flaky": {app}},
		routes: &routev3.RouteConfiguration{VirtualHosts: []*routev3.VirtualHost{{Name: "shop", Domains: []string{"shop.test"},
			Routes: []*routev3.Route{retried, plain}}}}})
	meshtest.Eventually(t, 15*time.Second, func() error {
		if resp, _ := g.get(t, "shop.test", "/retried/x", nil); resp.StatusCode == 404 {
			return fmt.Errorf("not routed yet")
		}
		return nil
	})

	for i := 0; i < 6; i++ {
		before := hits.Load()
		resp, _ := g.get(t, "shop.test", "/retried/x", nil)
		if resp.StatusCode != 200 {
			t.Fatalf("retried route request %d: %d %s", i, resp.StatusCode, resp.Header.Get("x-mesh-reason"))
		}
		if n := hits.Load() - before; n < 1 || n > 2 {
			t.Fatalf("retried route request %d reached the app %d times", i, n)
		}
	}
	got503 := false
	for i := 0; i < 4 && !got503; i++ {
		resp, _ := g.get(t, "shop.test", "/plain/x", nil)
		got503 = resp.StatusCode == 503
	}
	if !got503 {
		t.Fatal("the route without a retry policy never passed the app's 503 on: the route's policy leaked")
	}
}
