package controlplane_test

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshvm/mesh/meshtest"
)

// relay is a TCP relay to Consul that the test can cut and restore, to
// make Consul unreachable without stopping the package's agent.
type relay struct {
	addr, target string
	mu           sync.Mutex
	l            net.Listener
	conns        map[net.Conn]bool
	wg           sync.WaitGroup
}

func newRelay(t *testing.T, target string) *relay {
	r := &relay{addr: "127.0.0.1:" + itoa(meshtest.FreePort("127.0.0.1")), target: target, conns: map[net.Conn]bool{}}
	r.up(t)
	t.Cleanup(r.down)
	return r
}

func (r *relay) up(t *testing.T) {
	t.Helper()
	l, err := net.Listen("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	r.l = l
	r.mu.Unlock()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", r.target)
			if err != nil {
				c.Close()
				continue
			}
			r.mu.Lock()
			r.conns[c], r.conns[up] = true, true
			r.mu.Unlock()
			r.wg.Add(2)
			go func() { defer r.wg.Done(); _, _ = io.Copy(up, c); up.Close() }()
			go func() { defer r.wg.Done(); _, _ = io.Copy(c, up); c.Close() }()
		}
	}()
}

// down closes the listener and every relayed connection.
func (r *relay) down() {
	r.mu.Lock()
	if r.l != nil {
		r.l.Close()
		r.l = nil
	}
	for c := range r.conns {
		c.Close()
		delete(r.conns, c)
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// TestConsulFailureKeepsLastGoodView: with Consul unreachable the control
// plane reports the error and pushes nothing (above all not "no
// endpoints"); when Consul is back, changes made meanwhile arrive.
func TestConsulFailureKeepsLastGoodView(t *testing.T) {
	register(t, regOf("inventory-1", "inventory", "127.0.0.61", 15006, "z1"), "passing")
	register(t, regOf("inventory-2", "inventory", "127.0.0.62", 15006, "z1"), "passing")
	rl := newRelay(t, testConsul.Addr)
	p := startPlane(t, rl.addr, nil)
	c := dialADS(t, p.xdsAddr, agentNode("vm-inventory-client", "", 0))
	c.subscribe(resourcev3.ClusterType, nil)
	names := []string{"inventory"}
	cla := decode(t, c.subscribe(resourcev3.EndpointType, names), func() *endpointv3.ClusterLoadAssignment { return &endpointv3.ClusterLoadAssignment{} })["inventory"]
	if n := len(cla.GetEndpoints()[0].GetLbEndpoints()); n != 2 {
		t.Fatalf("%d endpoints, want 2", n)
	}

	rl.down()
	meshtest.Eventually(t, 5*time.Second, func() error {
		return metricAbove(p.adminAddr, `mesh_control_source_errors_total{source="consul"}`, 0)
	})
	// Consul changes while unreachable: invisible, and nothing is pushed.
	setCheck(t, "inventory-2", "critical")
	c.quiet(time.Second)
	if s := p.Model().Service("inventory"); s == nil || len(s.Endpoints) != 2 {
		t.Fatalf("model lost inventory's endpoints while Consul was down: %+v", s)
	}
	resp, err := httpGet("http://" + p.adminAddr + "/ready")
	if err != nil || resp != 200 {
		t.Errorf("/ready = %d, %v while serving the last good view; want 200", resp, err)
	}

	rl.up(t)
	r := c.recv(10 * time.Second)
	if r.GetTypeUrl() != resourcev3.EndpointType {
		t.Fatalf("got %s, want EDS", r.GetTypeUrl())
	}
	cla = decode(t, r, func() *endpointv3.ClusterLoadAssignment { return &endpointv3.ClusterLoadAssignment{} })["inventory"]
	if h, err := endpointHealth(cla, "127.0.0.62", 15006); err != nil || h != corev3.HealthStatus_UNHEALTHY {
		t.Fatalf("after recovery inventory-2 is %v, %v; want UNHEALTHY", h, err)
	}
}
