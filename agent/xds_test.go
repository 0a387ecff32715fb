package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane"
	"github.com/meshvm/mesh/controlplane/model"
	consulsource "github.com/meshvm/mesh/controlplane/source/consul"
	"github.com/meshvm/mesh/controlplane/translate"
	"github.com/meshvm/mesh/meshtest"
)

// control is a real `mesh control`, in-process, that can be stopped and
// started again on the same address.
type control struct {
	t       *testing.T
	cfg     config.Config
	cancel  context.CancelFunc
	done    chan error
	running bool
}

func newControl(t *testing.T, edit func(*config.Config)) *control {
	t.Helper()
	cfg := config.Default()
	cfg.Consul.Addr = consul.Addr
	cfg.Control.XDSAddr = "127.0.0.1:" + strconv.Itoa(meshtest.FreePort("127.0.0.1"))
	cfg.Control.AdminAddr = "127.0.0.1:" + strconv.Itoa(meshtest.FreePort("127.0.0.1"))
	cfg.Control.Debounce = 20 * time.Millisecond
	if edit != nil {
		edit(&cfg)
	}
	if err := cfg.Validate(config.RoleControl); err != nil {
		t.Fatal(err)
	}
	c := &control{t: t, cfg: cfg}
	c.start()
	t.Cleanup(c.stop)
	return c
}

func (c *control) start() {
	c.t.Helper()
	cp, err := controlplane.New(c.cfg, zerolog.New(zerolog.NewTestWriter(c.t)).Level(zerolog.WarnLevel), controlplane.Options{
		Consul:    consulsource.Options{Wait: 5 * time.Second, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond},
		FirstWait: 2 * time.Second,
	})
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel, c.done, c.running = cancel, make(chan error, 1), true
	go func() { c.done <- cp.Run(ctx) }()
	meshtest.Eventually(c.t, 15*time.Second, func() error {
		if !cp.Ready() {
			return fmt.Errorf("control plane on %s not ready", c.cfg.Control.XDSAddr)
		}
		return nil
	})
}

func (c *control) stop() {
	if !c.running {
		return
	}
	c.running = false
	c.cancel()
	select {
	case err := <-c.done:
		if err != nil {
			c.t.Errorf("control plane: %v", err)
		}
	case <-time.After(15 * time.Second):
		c.t.Error("control plane did not stop")
	}
}

// dump is the part of an agent's /config_dump these tests read.
type dump struct {
	Source   string
	Services map[string][]struct{ Addr, Zone, Node string }
	XDS      struct {
		Server    string
		Connected bool
		Nacks     uint64
		LastNack  string `json:"last_nack"`
	}
}

func configDump(t *testing.T, ra *runningAgent) dump {
	t.Helper()
	resp, err := http.Get("http://" + ra.Addr("admin") + "/config_dump")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var d dump
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil {
		t.Fatal(err)
	}
	return d
}

// waitEndpoints waits until the agent routes service by xDS to n endpoints.
func waitEndpoints(t *testing.T, ra *runningAgent, service string, n int) {
	t.Helper()
	meshtest.Eventually(t, 20*time.Second, func() error {
		d := configDump(t, ra)
		if d.Source != "xds" || len(d.Services[service]) != n {
			return fmt.Errorf("source %q, %d endpoints of %s, want xds and %d", d.Source, len(d.Services[service]), service, n)
		}
		return nil
	})
}

// load sends requests to url with Host host every few milliseconds until
// stopped, counting what failed and which app answered.
type load struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	byApp      map[string]int
	stopc      chan struct{}
	done       chan struct{}
}

func startLoad(url, host string) *load {
	l := &load{byApp: map[string]int{}, stopc: make(chan struct{}), done: make(chan struct{})}
	client := &http.Client{Timeout: 5 * time.Second}
	go func() {
		defer close(l.done)
		for {
			select {
			case <-l.stopc:
				return
			case <-time.After(5 * time.Millisecond):
			}
			req, _ := http.NewRequest(http.MethodGet, url, nil)
			req.Host = host
			resp, err := client.Do(req)
			if err != nil {
				l.fail(err.Error())
				continue
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				l.fail(fmt.Sprintf("%d %s", resp.StatusCode, resp.Header.Get("x-mesh-reason")))
				continue
			}
			l.ok.Add(1)
			l.mu.Lock()
			l.byApp[resp.Header.Get("X-App")]++
			l.mu.Unlock()
		}
	}()
	return l
}

func (l *load) fail(s string) {
	l.failed.Add(1)
	l.mu.Lock()
	if len(l.errs) < 10 {
		l.errs = append(l.errs, s)
	}
	l.mu.Unlock()
}

func (l *load) stop() { close(l.stopc); <-l.done }

// served returns and resets the per-app counts.
func (l *load) served() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.byApp
	l.byApp = map[string]int{}
	return out
}

func (l *load) check(t *testing.T, phase string) {
	t.Helper()
	if n := l.failed.Load(); n != 0 {
		l.mu.Lock()
		defer l.mu.Unlock()
		t.Fatalf("%s: %d of %d requests failed: %v", phase, n, n+l.ok.Load(), l.errs)
	}
	if l.ok.Load() == 0 {
		t.Fatalf("%s: no request went through", phase)
	}
}

func withControlPlane(addrs ...string) func(*config.Config) {
	return func(c *config.Config) { c.Agent.ControlPlane = addrs }
}

// The promises of product.md for a control-plane outage: agents keep
// routing, start from their disk cache, and catch up when it is back.
func TestControlPlaneOutage(t *testing.T) {
	cp := newControl(t, nil)
	b1 := startApp(t, "127.0.0.51", "orders-1", nil)
	startAgent(t, "127.0.0.51", "orders", b1, withControlPlane(cp.cfg.Control.XDSAddr))
	caller := startApp(t, "127.0.0.50", "web", nil)
	cache := t.TempDir()
	mutateA := func(c *config.Config) {
		c.Agent.ControlPlane = []string{cp.cfg.Control.XDSAddr}
		c.Agent.CacheDir = cache
	}
	a := startAgent(t, "127.0.0.50", "web", caller, mutateA)
	waitEndpoints(t, a, "orders", 1)
	// The endpoint carries its VM's name, not the Consul agent's it
	// registered through.
	if d := configDump(t, a); d.Services["orders"][0].Node != "vm-127-0-0-51" {
		t.Errorf("xDS endpoint node = %q, want vm-127-0-0-51", d.Services["orders"][0].Node)
	}

	l := startLoad("http://"+a.Addr("outbound")+"/", "orders")
	time.Sleep(300 * time.Millisecond)
	cp.stop()
	time.Sleep(time.Second)
	l.stop()
	l.check(t, "control plane killed under load")
	if d := configDump(t, a); d.XDS.Connected {
		t.Errorf("agent still says it is connected: %+v", d.XDS)
	}

	// Restart the agent while the control plane is still down: it serves
	// from its disk cache.
	a.stop(t)
	a = startAgent(t, "127.0.0.50", "web", caller, mutateA)
	if d := configDump(t, a); d.Source != "xds" || len(d.Services["orders"]) != 1 {
		t.Fatalf("restarted agent did not start from its cache: source %q services %v", d.Source, d.Services)
	}
	l = startLoad("http://"+a.Addr("outbound")+"/", "orders")
	time.Sleep(500 * time.Millisecond)

	// Meanwhile a second instance appears; when the control plane is back
	// the agent reconnects and sends traffic there too.
	b2 := startApp(t, "127.0.0.52", "orders-2", nil)
	startAgent(t, "127.0.0.52", "orders", b2, nil)
	waitPassing(t, "orders", 2)
	cp.start()
	waitEndpoints(t, a, "orders", 2)
	l.served()
	time.Sleep(500 * time.Millisecond)
	l.stop()
	l.check(t, "agent restarted from cache, control plane back")
	if got := l.served(); got["orders-2"] == 0 || got["orders-1"] == 0 {
		t.Errorf("after reconnecting, traffic went to %v, want both instances", got)
	}
}

func TestFailoverBetweenControlPlanes(t *testing.T) {
	cp1, cp2 := newControl(t, nil), newControl(t, nil)
	b := startApp(t, "127.0.0.56", "pay-1", nil)
	startAgent(t, "127.0.0.56", "pay", b, nil)
	caller := startApp(t, "127.0.0.55", "web", nil)
	a := startAgent(t, "127.0.0.55", "web", caller, withControlPlane(cp1.cfg.Control.XDSAddr, cp2.cfg.Control.XDSAddr))
	waitEndpoints(t, a, "pay", 1)
	if d := configDump(t, a); d.XDS.Server != cp1.cfg.Control.XDSAddr {
		t.Fatalf("connected to %s, want the first control plane", d.XDS.Server)
	}
	l := startLoad("http://"+a.Addr("outbound")+"/", "pay")
	cp1.stop()
	meshtest.Eventually(t, 10*time.Second, func() error {
		if d := configDump(t, a); d.XDS.Server != cp2.cfg.Control.XDSAddr || !d.XDS.Connected {
			return fmt.Errorf("xds state %+v, want connected to %s", d.XDS, cp2.cfg.Control.XDSAddr)
		}
		return nil
	})
	// A change now comes from the second control plane.
	b2 := startApp(t, "127.0.0.57", "pay-2", nil)
	startAgent(t, "127.0.0.57", "pay", b2, nil)
	waitEndpoints(t, a, "pay", 2)
	l.stop()
	l.check(t, "failover")
}

// Zone-aware routing with localities from the CMDB: traffic stays in the
// caller's zone while it has healthy endpoints, then moves.
func TestZoneAwareRoutingFromCMDB(t *testing.T) {
	hosts := `[
		{"ip": "127.0.0.61", "hostname": "vm-a1", "region": "eu", "zone": "eu-a"},
		{"ip": "127.0.0.62", "hostname": "vm-b1", "region": "eu", "zone": "eu-b"},
		{"ip": "127.0.0.60", "hostname": "vm-caller", "region": "eu", "zone": "eu-a"}
	]`
	cmdb := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, hosts)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go cmdb.Serve(ln)
	t.Cleanup(func() { cmdb.Close() })
	cp := newControl(t, func(c *config.Config) {
		c.Control.CMDB.URL = "http://" + ln.Addr().String() + "/hosts"
		c.Control.CMDB.Interval = 500 * time.Millisecond
	})

	a1 := startApp(t, "127.0.0.61", "zone-a", nil)
	b1 := startApp(t, "127.0.0.62", "zone-b", nil)
	startAgent(t, "127.0.0.61", "search", a1, nil)
	startAgent(t, "127.0.0.62", "search", b1, nil)
	caller := startApp(t, "127.0.0.60", "web", nil)
	a := startAgent(t, "127.0.0.60", "web", caller, func(c *config.Config) {
		c.Agent.ControlPlane = []string{cp.cfg.Control.XDSAddr}
		c.Agent.Locality = config.Locality{Region: "eu", Zone: "eu-a"}
	})
	meshtest.Eventually(t, 20*time.Second, func() error {
		d := configDump(t, a)
		zones := map[string]bool{}
		for _, ep := range d.Services["search"] {
			zones[ep.Zone] = true
		}
		if !zones["eu-a"] || !zones["eu-b"] {
			return fmt.Errorf("endpoints %+v lack the CMDB zones", d.Services["search"])
		}
		return nil
	})

	l := startLoad("http://"+a.Addr("outbound")+"/", "search")
	time.Sleep(time.Second)
	if got := l.served(); got["zone-b"] != 0 || got["zone-a"] == 0 {
		t.Errorf("with zone eu-a healthy, traffic went to %v, want all in eu-a", got)
	}
	a1.sick.Store(true) // eu-a's only endpoint goes critical in Consul
	waitEndpoints(t, a, "search", 1)
	l.served()
	time.Sleep(time.Second)
	got := l.served()
	l.stop()
	if got["zone-a"] != 0 || got["zone-b"] == 0 {
		t.Errorf("with eu-a critical, traffic went to %v, want all in eu-b", got)
	}
	if n := l.failed.Load(); n > 0 {
		t.Logf("%d requests failed around the switch: %v", n, l.errs)
	}
}

// A control plane that sends something the agent cannot honour gets a
// NACK naming it, and traffic keeps flowing on the last good config.
func TestBadXDSIsNackedAndTrafficFlows(t *testing.T) {
	b := startApp(t, "127.0.0.66", "cart-1", nil)
	startAgent(t, "127.0.0.66", "cart", b, nil)
	waitPassing(t, "cart", 1)

	// A plain go-control-plane server stands in for a control plane gone
	// wrong; its resources start as what `mesh control` would send.
	snapCache := cache.NewSnapshotCache(false, cache.IDHash{}, nil)
	var nackMu sync.Mutex
	var nacks []string
	cb := server.CallbackFuncs{StreamRequestFunc: func(_ int64, req *discoveryv3.DiscoveryRequest) error {
		if d := req.GetErrorDetail(); d != nil {
			nackMu.Lock()
			nacks = append(nacks, d.GetMessage())
			nackMu.Unlock()
		}
		return nil
	}}
	gs := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, server.NewServer(context.Background(), snapCache, cb))
	xl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(xl)
	t.Cleanup(gs.Stop)

	caller := startApp(t, "127.0.0.65", "web", nil)
	nodeID := fmt.Sprintf("web-vm-127-0-0-65-%d", caller.port)
	mdl := &model.Model{Services: []model.Service{{Name: "cart", Policy: config.DefaultPolicy(), Endpoints: []model.Endpoint{
		{ID: "c1", Node: "vm-127-0-0-66", Address: "127.0.0.66", Port: 0, Health: model.Healthy},
	}}}}
	setSnapshot := func(version string, mutate func(map[resource.Type][]types.Resource)) {
		t.Helper()
		mesh, err := translate.Translate(mdl)
		if err != nil {
			t.Fatal(err)
		}
		res, err := mesh.ForNode(model.Node{ID: nodeID, Service: "web", AppPort: caller.port}, config.DefaultPolicy())
		if err != nil {
			t.Fatal(err)
		}
		byType := map[resource.Type][]types.Resource{}
		for typ, set := range map[resource.Type]translate.Set{resource.ClusterType: res.Clusters, resource.EndpointType: res.Endpoints, resource.ListenerType: res.Listeners, resource.RouteType: res.Routes} {
			for _, m := range set {
				byType[typ] = append(byType[typ], proto.Clone(m))
			}
		}
		if mutate != nil {
			mutate(byType)
		}
		snap, err := cache.NewSnapshot(version, byType)
		if err != nil {
			t.Fatal(err)
		}
		if err := snapCache.SetSnapshot(context.Background(), nodeID, snap); err != nil {
			t.Fatal(err)
		}
	}
	// The endpoint is B's agent inbound listener, known once B runs.
	bAgent := agentInbound(t, "cart")
	host, portStr, _ := net.SplitHostPort(bAgent)
	port, _ := strconv.Atoi(portStr)
	mdl.Services[0].Endpoints[0].Address, mdl.Services[0].Endpoints[0].Port = host, port
	setSnapshot("v1", nil)

	a := startAgent(t, "127.0.0.65", "web", caller, withControlPlane(xl.Addr().String()))
	waitEndpoints(t, a, "cart", 1)
	l := startLoad("http://"+a.Addr("outbound")+"/", "cart")
	setSnapshot("v2", func(byType map[resource.Type][]types.Resource) {
		for _, r := range byType[resource.ClusterType] {
			if c := r.(*clusterv3.Cluster); c.Name == "cart" {
				c.LbPolicy = clusterv3.Cluster_RING_HASH
			}
		}
	})
	meshtest.Eventually(t, 10*time.Second, func() error {
		nackMu.Lock()
		defer nackMu.Unlock()
		for _, n := range nacks {
			if strings.Contains(n, `cluster "cart": lb_policy RING_HASH is not supported`) {
				return nil
			}
		}
		return fmt.Errorf("no NACK naming the cluster yet: %v", nacks)
	})
	time.Sleep(300 * time.Millisecond)
	l.stop()
	l.check(t, "after a rejected update")
	if d := configDump(t, a); d.XDS.Nacks == 0 || !strings.Contains(d.XDS.LastNack, "RING_HASH") {
		t.Errorf("config_dump does not show the NACK: %+v", d.XDS)
	}
}

// agentInbound returns the inbound address Consul holds for service.
func agentInbound(t *testing.T, service string) string {
	t.Helper()
	entries, _, err := consul.Client.Health().Service(service, "", true, nil)
	if err != nil || len(entries) == 0 {
		t.Fatalf("%s not in Consul: %v", service, err)
	}
	s := entries[0].Service
	return net.JoinHostPort(s.Address, strconv.Itoa(s.Port))
}

// A rolling restart of one of two instances under steady load loses no
// request for a caller that retries (the default policy retries connect
// failures and resets): deregister, drain, stop, start again.
func TestRollingRestartLosesNoRequest(t *testing.T) {
	for _, tc := range []struct {
		name string
		cp   bool
	}{
		{"consul-direct", false},
		{"xds", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := 80
			if tc.cp {
				base = 90
			}
			ip := func(n int) string { return fmt.Sprintf("127.0.0.%d", base+n) }
			svc := "stock-" + tc.name
			var withCP func(*config.Config)
			if tc.cp {
				cp := newControl(t, nil)
				withCP = withControlPlane(cp.cfg.Control.XDSAddr)
			}
			b1 := startApp(t, ip(1), svc+"-1", nil)
			b2 := startApp(t, ip(2), svc+"-2", nil)
			fast := func(c *config.Config) {
				c.Agent.DrainPeriod = time.Second
				if withCP != nil {
					withCP(c)
				}
			}
			agentB1 := startAgent(t, ip(1), svc, b1, fast)
			startAgent(t, ip(2), svc, b2, fast)
			caller := startApp(t, ip(0), "web", nil)
			a := startAgent(t, ip(0), "web", caller, withCP)
			waitPassing(t, svc, 2)
			if tc.cp {
				waitEndpoints(t, a, svc, 2)
			}

			l := startLoad("http://"+a.Addr("outbound")+"/", svc)
			time.Sleep(300 * time.Millisecond)
			agentB1.stop(t) // SIGTERM: deregister, drain 1s, stop
			time.Sleep(300 * time.Millisecond)
			startAgent(t, ip(1), svc, b1, fast)
			waitPassing(t, svc, 2)
			l.served()
			time.Sleep(time.Second)
			got := l.served()
			l.stop()
			l.check(t, "rolling restart")
			if got[svc+"-1"] == 0 || got[svc+"-2"] == 0 {
				t.Errorf("after the restart traffic went to %v, want both instances", got)
			}
			t.Logf("%d requests, none failed", l.ok.Load())
		})
	}
}
