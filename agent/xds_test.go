package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/wire/wiretest"
	"github.com/meshvm/mesh/xdsclient"
)

// control is a real `mesh control` process (the binary, so no agent test
// imports the control plane) that can be stopped and started again on
// the same addresses.
type control struct {
	t                  *testing.T
	bin, cfgPath       string
	xdsAddr, adminAddr string
	proc               *meshtest.Process
	// base is the config it started with; reload appends to it.
	base string
}

// reload rewrites the control plane's config as its starting config plus
// extra (lines of the control section, indented by two) and applies it
// with SIGHUP.
func (c *control) reload(t *testing.T, extra string) {
	t.Helper()
	if err := os.WriteFile(c.cfgPath, []byte(c.base+extra), 0o600); err != nil {
		t.Fatal(err)
	}
	c.proc.Signal(syscall.SIGHUP)
}

// controlOptions are the parts of the control plane's config a test sets.
type controlOptions struct {
	// bin is the mesh binary; empty builds it.
	bin     string
	cmdbURL string
	// extra is appended to the control section (indented by two).
	extra string
	// caDir is control.ca.dir (default a fresh directory); certTTL and
	// auth set control.ca.cert_ttl and control.xds.auth when not empty.
	caDir, certTTL, auth string
	// caExtra is added to control.ca's flow mapping ("trust_domain: x").
	caExtra string
}

func newControl(t *testing.T, opts controlOptions) *control {
	t.Helper()
	if opts.caDir == "" {
		opts.caDir = filepath.Join(t.TempDir(), "ca")
	}
	c := &control{
		t:         t,
		bin:       opts.bin,
		cfgPath:   filepath.Join(t.TempDir(), "mesh.yaml"),
		xdsAddr:   "127.0.0.1:" + strconv.Itoa(meshtest.FreePort("127.0.0.1")),
		adminAddr: "127.0.0.1:" + strconv.Itoa(meshtest.FreePort("127.0.0.1")),
	}
	cfg := fmt.Sprintf("log:\n  level: warn\nconsul:\n  addr: %s\ncontrol:\n  xds_addr: %s\n  admin_addr: %s\n  debounce: 20ms\n  ca: {dir: %s}\n",
		consul.Addr, c.xdsAddr, c.adminAddr, opts.caDir)
	if c.bin == "" {
		c.bin = meshtest.BuildMesh(t)
	}
	if opts.cmdbURL != "" {
		cfg += fmt.Sprintf("  cmdb:\n    url: %s\n    interval: 500ms\n", opts.cmdbURL)
	}
	cfg += opts.extra
	if opts.certTTL != "" {
		cfg = strings.Replace(cfg, "  ca: {dir: "+opts.caDir+"}", "  ca: {dir: "+opts.caDir+", cert_ttl: "+opts.certTTL+"}", 1)
	}
	if opts.caExtra != "" {
		cfg = strings.Replace(cfg, "  ca: {dir: "+opts.caDir, "  ca: {dir: "+opts.caDir+", "+opts.caExtra, 1)
	}
	if opts.auth != "" {
		cfg += "  xds: {auth: " + opts.auth + "}\n"
	}
	if err := os.WriteFile(c.cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	c.base = cfg
	c.start()
	return c
}

// start runs the control plane and waits until it serves its first model.
func (c *control) start() {
	c.t.Helper()
	p := meshtest.StartProcess(c.t, nil, c.bin, "control", "--config", c.cfgPath)
	c.proc = p
	// Registered after StartProcess's own clean-up (which kills), so it
	// runs first: a control plane still running at the end stops cleanly.
	c.t.Cleanup(func() {
		if c.proc == p {
			c.stop()
		}
	})
	client := &http.Client{Timeout: time.Second}
	meshtest.Eventually(c.t, 20*time.Second, func() error {
		resp, err := client.Get("http://" + c.adminAddr + "/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("control plane on %s: /ready %d", c.xdsAddr, resp.StatusCode)
		}
		return nil
	})
}

// stop sends SIGTERM and waits for a clean exit.
func (c *control) stop() {
	if c.proc == nil {
		return
	}
	p := c.proc
	c.proc = nil
	p.Signal(syscall.SIGTERM)
	if err := p.Wait(c.t, 20*time.Second); err != nil {
		c.t.Errorf("control plane exited with %v\n%s", err, p.Output())
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

// waitEndpoints waits until the agent routes service by xDS to n
// endpoints. An agent holds only the services its app calls (or
// declares), so each poll first calls service through the outbound
// listener, as the app would.
func waitEndpoints(t *testing.T, ra *runningAgent, service string, n int) {
	t.Helper()
	meshtest.Eventually(t, 20*time.Second, func() error {
		if req, err := http.NewRequest(http.MethodGet, "http://"+ra.Addr("outbound")+"/", nil); err == nil {
			req.Host = service
			if resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
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
	cp := newControl(t, controlOptions{})
	b1 := startApp(t, "127.0.0.51", "orders-1", nil)
	startAgent(t, "127.0.0.51", "orders", b1, withControlPlane(cp.xdsAddr))
	caller := startApp(t, "127.0.0.50", "web", nil)
	cache := t.TempDir()
	mutateA := func(c *config.Config) {
		c.Agent.ControlPlane = []string{cp.xdsAddr}
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
	cp1 := newControl(t, controlOptions{})
	cp2 := newControl(t, controlOptions{bin: cp1.bin})
	b := startApp(t, "127.0.0.56", "pay-1", nil)
	startAgent(t, "127.0.0.56", "pay", b, nil)
	caller := startApp(t, "127.0.0.55", "web", nil)
	a := startAgent(t, "127.0.0.55", "web", caller, withControlPlane(cp1.xdsAddr, cp2.xdsAddr))
	waitEndpoints(t, a, "pay", 1)
	if d := configDump(t, a); d.XDS.Server != cp1.xdsAddr {
		t.Fatalf("connected to %s, want the first control plane", d.XDS.Server)
	}
	l := startLoad("http://"+a.Addr("outbound")+"/", "pay")
	cp1.stop()
	meshtest.Eventually(t, 10*time.Second, func() error {
		if d := configDump(t, a); d.XDS.Server != cp2.xdsAddr || !d.XDS.Connected {
			return fmt.Errorf("xds state %+v, want connected to %s", d.XDS, cp2.xdsAddr)
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
	cp := newControl(t, controlOptions{cmdbURL: "http://" + ln.Addr().String() + "/hosts"})

	a1 := startApp(t, "127.0.0.61", "zone-a", nil)
	b1 := startApp(t, "127.0.0.62", "zone-b", nil)
	startAgent(t, "127.0.0.61", "search", a1, nil)
	startAgent(t, "127.0.0.62", "search", b1, nil)
	caller := startApp(t, "127.0.0.60", "web", nil)
	a := startAgent(t, "127.0.0.60", "web", caller, func(c *config.Config) {
		c.Agent.ControlPlane = []string{cp.xdsAddr}
		c.Agent.Locality = config.Locality{Region: "eu", Zone: "eu-a"}
	})
	waitEndpoints(t, a, "search", 2)
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
	cb := server.CallbackFuncs{StreamDeltaRequestFunc: func(_ int64, req *discoveryv3.DeltaDiscoveryRequest) error {
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
	// The resources start as what `mesh control` sends an agent that
	// fronts no service (the golden resources of the wire contract), with
	// orders sent to B's agent: its inbound address, known once B runs.
	bAgent := agentInbound(t, "cart")
	host, portStr, _ := net.SplitHostPort(bAgent)
	port, _ := strconv.Atoi(portStr)
	setSnapshot := func(version string, mutate func(*xdsclient.Resources)) {
		t.Helper()
		res := wiretest.Load(t, wiretest.AgentClientOnly)
		res.Endpoints["orders"].Endpoints = []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{
				Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
				}},
			}}},
			HealthStatus: corev3.HealthStatus_HEALTHY,
		}}}}
		if mutate != nil {
			mutate(&res)
		}
		byType := map[resource.Type][]types.Resource{}
		for _, c := range res.Clusters {
			byType[resource.ClusterType] = append(byType[resource.ClusterType], c)
		}
		for _, e := range res.Endpoints {
			byType[resource.EndpointType] = append(byType[resource.EndpointType], e)
		}
		for _, l := range res.Listeners {
			byType[resource.ListenerType] = append(byType[resource.ListenerType], l)
		}
		for _, r := range res.Routes {
			byType[resource.RouteType] = append(byType[resource.RouteType], r)
		}
		snap, err := cache.NewSnapshot(version, byType)
		if err != nil {
			t.Fatal(err)
		}
		if err := snapCache.SetSnapshot(context.Background(), nodeID, snap); err != nil {
			t.Fatal(err)
		}
	}
	setSnapshot("v1", nil)

	a := startAgent(t, "127.0.0.65", "web", caller, withControlPlane(xl.Addr().String()))
	waitEndpoints(t, a, "orders", 1)
	l := startLoad("http://"+a.Addr("outbound")+"/", "orders")
	setSnapshot("v2", func(r *xdsclient.Resources) {
		r.Clusters["orders"].ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
	})
	meshtest.Eventually(t, 10*time.Second, func() error {
		nackMu.Lock()
		defer nackMu.Unlock()
		for _, n := range nacks {
			if strings.Contains(n, `cluster "orders": discovery type STATIC is not supported`) {
				return nil
			}
		}
		return fmt.Errorf("no NACK naming the cluster yet: %v", nacks)
	})
	time.Sleep(300 * time.Millisecond)
	l.stop()
	l.check(t, "after a rejected update")
	if d := configDump(t, a); d.XDS.Nacks == 0 || !strings.Contains(d.XDS.LastNack, "STATIC") {
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
				cp := newControl(t, controlOptions{})
				withCP = withControlPlane(cp.xdsAddr)
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
