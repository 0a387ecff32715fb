package controlplane_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/controlplane/source"
	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/wire"
	"github.com/meshvm/mesh/xdsclient"
)

// The scale benchmark runs `mesh control` in this process, fed by a
// synthetic catalog, and its ADS clients in a child process (this test
// binary again, see adsClientsMain), so that this process's RSS is the
// control plane's alone. Clients report each response they ACK on stdout
// with a wall-clock timestamp.
const (
	envClientsAddr     = "MESH_BENCH_ADS_ADDR"
	envClientsCount    = "MESH_BENCH_ADS_CLIENTS"
	envClientsServices = "MESH_BENCH_ADS_SERVICES"
	envClientsFirst    = "MESH_BENCH_ADS_FIRST"
	envClientsMode     = "MESH_BENCH_ADS_MODE"
)

// syntheticCatalog is services x instances over 2 zones and 10 nodes, as
// the Consul source would report it.
func syntheticCatalog(services, instances int) []model.Instance {
	out := make([]model.Instance, 0, services*instances)
	for s := 0; s < services; s++ {
		for i := 0; i < instances; i++ {
			out = append(out, model.Instance{
				Service: fmt.Sprintf("svc-%05d", s), ID: fmt.Sprintf("svc-%05d-%d", s, i), Node: fmt.Sprintf("vm-%d", i),
				Address: fmt.Sprintf("10.%d.%d.%d", s/250, s%250, i+1), Port: 15006, Check: model.CheckPassing, Weight: 1,
				Meta: map[string]string{"app_port": "8080", "mesh_version": "0.1.0", "mesh_zone": fmt.Sprintf("z%d", i%2), "mesh_region": "r1"},
			})
		}
	}
	return out
}

// catalogSource is a registry whose views the benchmark sends: the
// control plane sees exactly what a registry source would send.
type catalogSource struct {
	views  chan model.View
	status source.Tracker
}

func (c *catalogSource) Name() string { return "catalog" }

func (c *catalogSource) Status() source.Status { return c.status.Status() }

func (c *catalogSource) Run(ctx context.Context, out chan<- model.View) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case v := <-c.views:
			c.status.Succeeded()
			select {
			case out <- v:
			case <-ctx.Done():
				return nil
			}
		}
	}
}

// BenchmarkEndpointChange measures, with a synthetic catalog of services x
// 10 instances served by a running control plane to real ADS clients
// (agents, state of the world, in a child process): the time from the
// registry's view change (one instance's health flips) to the moment each
// client has ACKed the EDS update (p50, p99, max over all clients and
// changes, default debounce included), the control plane's RSS with the
// clients connected, and the pushes an unchanged view causes (must be 0).
// One iteration is one change; run with -benchtime=Nx.
func BenchmarkEndpointChange(b *testing.B) {
	for _, size := range []struct{ services, clients int }{{1000, 200}, {10000, 1}, {10000, 200}} {
		// The sub-benchmark runs more than once (b.N = 1, then more);
		// the control plane and its clients are set up once.
		var f *changeFixture
		b.Run(fmt.Sprintf("%dx10/clients=%d", size.services, size.clients), func(b *testing.B) {
			if f == nil {
				f = newChangeFixture(b, size.services, size.clients)
			}
			f.run(b)
		})
		if f != nil {
			f.stop(b)
		}
	}
}

// changeFixture is a running control plane fed by a synthetic catalog,
// with its clients connected and synced.
type changeFixture struct {
	instances []model.Instance
	src       *catalogSource
	debounce  time.Duration
	cl        *clientsProc
	rss, hwm  int
	cancel    context.CancelFunc
	done      chan error
}

func newChangeFixture(b *testing.B, services, clients int) *changeFixture {
	f := &changeFixture{instances: syntheticCatalog(services, 10), src: &catalogSource{views: make(chan model.View)}, done: make(chan error, 1)}
	cfg := config.Default()
	cfg.Control.XDSAddr = "127.0.0.1:" + strconv.Itoa(meshtest.FreePort("127.0.0.1"))
	cfg.Control.AdminAddr = "127.0.0.1:" + strconv.Itoa(meshtest.FreePort("127.0.0.1"))
	f.debounce = cfg.Control.Debounce
	c, err := controlplane.New(cfg, zerolog.Nop(), controlplane.Options{Registry: f.src})
	if err != nil {
		b.Fatal(err)
	}
	var ctx context.Context
	ctx, f.cancel = context.WithCancel(context.Background())
	go func() { f.done <- c.Run(ctx) }()
	start := time.Now()
	f.src.views <- model.View{Instances: f.instances}
	for !c.Ready() {
		if time.Since(start) > 5*time.Minute {
			f.stop(b)
			b.Fatal("first model not served in 5m")
		}
		time.Sleep(10 * time.Millisecond)
	}
	b.Logf("first model served in %v", time.Since(start).Round(time.Millisecond))
	f.cl, err = startClients(b, cfg.Control.XDSAddr, clients, services)
	if err != nil {
		f.stop(b)
		b.Fatal(err)
	}
	b.Logf("%d clients synced in %v", clients, time.Since(start).Round(time.Millisecond))
	runtime.GC()
	debug.FreeOSMemory()
	f.rss, f.hwm = procStatus("VmRSS"), procStatus("VmHWM")
	return f
}

func (f *changeFixture) stop(b *testing.B) {
	if f.cl != nil {
		f.cl.stop(b)
	}
	f.cancel()
	if err := <-f.done; err != nil {
		b.Errorf("control plane: %v", err)
	}
}

func (f *changeFixture) run(b *testing.B) {
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		next := slices.Clone(f.instances)
		k := (i * 7919) % len(next)
		next[k].Check = map[model.Check]model.Check{model.CheckPassing: model.CheckCritical, model.CheckCritical: model.CheckPassing}[next[k].Check]
		f.instances = next
		before := f.cl.counts()
		t0 := time.Now()
		f.src.views <- model.View{Instances: f.instances}
		acks, err := f.cl.waitEDS(before, 30*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		for _, t := range acks {
			lat = append(lat, t.Sub(t0))
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))]) / float64(time.Millisecond)
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1])/float64(time.Millisecond), "max-ms")
	b.ReportMetric(float64(f.rss)/1024, "rss-MB")
	b.ReportMetric(float64(f.hwm)/1024, "hwm-MB")

	// The same catalog again (new slices, equal content) must push nothing.
	before := f.cl.responses()
	f.src.views <- model.View{Instances: slices.Clone(f.instances)}
	time.Sleep(f.debounce + time.Second)
	pushes := f.cl.responses() - before
	b.ReportMetric(float64(pushes), "unchanged-pushes")
	if pushes != 0 {
		b.Errorf("an unchanged catalog caused %d pushes", pushes)
	}
}

// procStatus returns a /proc/self/status field in kB.
func procStatus(field string) int {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return n
		}
	}
	return 0
}

// clientsProc is the child processes holding the ADS clients; client
// indexes are global across them.
type clientsProc struct {
	cmds   []*exec.Cmd
	stdins []io.WriteCloser
	wg     sync.WaitGroup

	mu      sync.Mutex
	changed *sync.Cond
	eds     []int       // EDS responses ACKed per client after sync
	last    []time.Time // time of each client's last EDS ACK
	bytes   []int64     // bytes received per client after sync
	od      []time.Duration
	total   int // responses of any type after sync
	err     error
}

// clientsOptions say what startClientsWith runs.
type clientsOptions struct {
	n, services int
	// delta runs scoped delta clients (benchDeltaClient), else
	// state-of-the-world clients subscribed to everything.
	delta bool
	// procs is the number of child processes (default 1).
	procs int
}

func startClients(b *testing.B, addr string, n, services int) (*clientsProc, error) {
	return startClientsWith(b, addr, clientsOptions{n: n, services: services})
}

// startClientsWith starts the clients and returns once every one of them
// has synced.
func startClientsWith(b *testing.B, addr string, o clientsOptions) (*clientsProc, error) {
	n := o.n
	procs := max(o.procs, 1)
	p := &clientsProc{eds: make([]int, n), last: make([]time.Time, n), bytes: make([]int64, n), od: make([]time.Duration, n)}
	p.changed = sync.NewCond(&p.mu)
	mode := "sotw"
	if o.delta {
		mode = "delta"
	}
	readyc := make(chan int, procs)
	for k := 0; k < procs; k++ {
		lo, hi := k*n/procs, (k+1)*n/procs
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), envClientsAddr+"="+addr, envClientsCount+"="+strconv.Itoa(hi-lo),
			envClientsServices+"="+strconv.Itoa(o.services), envClientsFirst+"="+strconv.Itoa(lo), envClientsMode+"="+mode)
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return nil, err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			p.stop(b)
			return nil, fmt.Errorf("start clients: %w", err)
		}
		p.cmds, p.stdins = append(p.cmds, cmd), append(p.stdins, stdin)
		p.wg.Add(1)
		go p.read(stdout, hi-lo, readyc)
	}
	ready := 0
	for k := 0; k < procs; k++ {
		ready += <-readyc
	}
	if ready < n {
		p.stop(b)
		return nil, fmt.Errorf("clients: %d of %d synced before a child ended", ready, n)
	}
	return p, nil
}

// read follows one child's output: "ready i" until its want clients
// synced (then the count goes to readyc), then "r i type unixnano
// resources bytes" per ACKed response and "od i nanoseconds" per
// on-demand subscription served.
func (p *clientsProc) read(stdout io.Reader, want int, readyc chan<- int) {
	defer p.wg.Done()
	ready := 0
	sc := bufio.NewScanner(stdout)
	for ready < want && sc.Scan() {
		if strings.HasPrefix(sc.Text(), "ready ") {
			ready++
		}
	}
	readyc <- ready
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 {
			continue
		}
		i, _ := strconv.Atoi(f[1])
		if i < 0 || i >= len(p.eds) {
			continue
		}
		p.mu.Lock()
		switch {
		case f[0] == "r" && len(f) >= 4:
			ns, _ := strconv.ParseInt(f[3], 10, 64)
			p.total++
			if len(f) >= 6 {
				n, _ := strconv.ParseInt(f[5], 10, 64)
				p.bytes[i] += n
			}
			if f[2] == "eds" {
				p.eds[i]++
				p.last[i] = time.Unix(0, ns)
			}
		case f[0] == "od":
			ns, _ := strconv.ParseInt(f[2], 10, 64)
			p.od[i] = time.Duration(ns)
		}
		p.mu.Unlock()
		p.changed.Broadcast()
	}
	p.mu.Lock()
	if p.err == nil {
		p.err = fmt.Errorf("clients ended: %v", sc.Err())
	}
	p.mu.Unlock()
	p.changed.Broadcast()
}

func (p *clientsProc) counts() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.eds)
}

// received is the bytes each client received after its sync.
func (p *clientsProc) received() []int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.bytes)
}

// responses is the number of responses of any type the clients ACKed
// after their sync.
func (p *clientsProc) responses() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.total
}

// waitEDS waits until every client ACKed an EDS response after before and
// returns the time of each client's ACK.
func (p *clientsProc) waitEDS(before []int, timeout time.Duration) ([]time.Time, error) {
	return p.waitEDSOf(before, nil, timeout)
}

// waitEDSOf waits until each client in which (all when nil) ACKed an EDS
// response after before, and returns the time of each one's last ACK.
func (p *clientsProc) waitEDSOf(before []int, which []int, timeout time.Duration) ([]time.Time, error) {
	if which == nil {
		for i := range before {
			which = append(which, i)
		}
	}
	return p.wait(timeout, "ACKed an EDS update", func() ([]time.Time, bool) {
		out := make([]time.Time, 0, len(which))
		for _, i := range which {
			if p.eds[i] <= before[i] {
				return nil, false
			}
			out = append(out, p.last[i])
		}
		return out, true
	})
}

// waitOnDemand waits until every client reported its on-demand service
// served and returns how long each took.
func (p *clientsProc) waitOnDemand(timeout time.Duration) ([]time.Duration, error) {
	var out []time.Duration
	_, err := p.wait(timeout, "got its on-demand service", func() ([]time.Time, bool) {
		for _, d := range p.od {
			if d == 0 {
				return nil, false
			}
		}
		out = slices.Clone(p.od)
		return nil, true
	})
	return out, err
}

// wait waits, p.mu held, until done says so, the clients fail or timeout.
func (p *clientsProc) wait(timeout time.Duration, what string, done func() ([]time.Time, bool)) ([]time.Time, error) {
	timer := time.AfterFunc(timeout, func() {
		p.mu.Lock()
		if p.err == nil {
			p.err = fmt.Errorf("not every client %s within %v", what, timeout)
		}
		p.mu.Unlock()
		p.changed.Broadcast()
	})
	defer timer.Stop()
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		if p.err != nil {
			return nil, p.err
		}
		if out, ok := done(); ok {
			return out, nil
		}
		p.changed.Wait()
	}
}

// command sends a line to every child (onDemand: "ondemand").
func (p *clientsProc) command(line string) error {
	for _, w := range p.stdins {
		if _, err := io.WriteString(w, line+"\n"); err != nil {
			return err
		}
	}
	return nil
}

func (p *clientsProc) stop(b *testing.B) {
	for _, w := range p.stdins {
		w.Close()
	}
	for _, cmd := range p.cmds {
		if err := cmd.Wait(); err != nil {
			b.Logf("clients process: %v", err)
		}
	}
	p.wg.Wait()
}

// adsClientsMain is a child process: it connects its clients in batches
// (so their initial syncs do not all overlap), prints "ready i" once
// client i has synced, then "r i type unixnano resources bytes" after each
// later ACK; on the line "ondemand" on stdin each delta client subscribes
// to one more service and prints "od i nanoseconds" once it holds it; it
// exits when its stdin closes.
func adsClientsMain() int {
	addr := os.Getenv(envClientsAddr)
	n, _ := strconv.Atoi(os.Getenv(envClientsCount))
	services, _ := strconv.Atoi(os.Getenv(envClientsServices))
	first, _ := strconv.Atoi(os.Getenv(envClientsFirst))
	delta := os.Getenv(envClientsMode) == "delta"
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan string, 4096)
	var wg sync.WaitGroup
	onDemand := make([]chan struct{}, n)
	const batch = 20
	for lo := 0; lo < n; lo += batch {
		var ready sync.WaitGroup
		for k := lo; k < min(lo+batch, n); k++ {
			ready.Add(1)
			wg.Add(1)
			onDemand[k] = make(chan struct{}, 1)
			go func() {
				defer wg.Done()
				var err error
				if delta {
					err = benchDeltaClient(ctx, addr, first+k, services, ready.Done, onDemand[k], out)
				} else {
					err = benchADSClient(ctx, addr, first+k, services, ready.Done, out)
				}
				if err != nil && ctx.Err() == nil {
					fmt.Fprintf(os.Stderr, "client %d: %v\n", first+k, err)
					cancel()
				}
			}()
		}
		ready.Wait()
	}
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			if sc.Text() == "ondemand" {
				for _, c := range onDemand {
					select {
					case c <- struct{}{}:
					default:
					}
				}
			}
		}
		cancel()
	}()
	w := bufio.NewWriter(os.Stdout)
	flush := time.NewTicker(5 * time.Millisecond)
	defer flush.Stop()
	for {
		select {
		case line := <-out:
			w.WriteString(line)
			w.WriteByte('\n')
		case <-flush.C:
			w.Flush()
		case <-ctx.Done():
			w.Flush()
			wg.Wait()
			return 0
		}
	}
}

// benchADSClient is an agent's state-of-the-world ADS stream reduced to
// what the benchmark needs: it subscribes to every cluster and listener,
// then to the load assignments and route configurations they name, and
// ACKs every response at once. It keeps no resources.
func benchADSClient(ctx context.Context, addr string, i, services int, ready func(), out chan<- string) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30)))
	if err != nil {
		return err
	}
	defer conn.Close()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	node := agentNode(fmt.Sprintf("bench-%d", i), fmt.Sprintf("svc-%05d", i%max(services, 1)), 8080)
	names := map[string][]string{}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType}); err != nil {
		return err
	}
	if err := stream.Send(&discovery.DiscoveryRequest{TypeUrl: resourcev3.ListenerType}); err != nil {
		return err
	}
	got := map[string]bool{}
	synced := false
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		t := resp.GetTypeUrl()
		if err := stream.Send(&discovery.DiscoveryRequest{TypeUrl: t, ResourceNames: names[t], VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}); err != nil {
			return err
		}
		now := time.Now()
		if synced {
			out <- fmt.Sprintf("r %d %s %d %d %d", i, shortType(t), now.UnixNano(), len(resp.GetResources()), proto.Size(resp))
			continue
		}
		switch t {
		case resourcev3.ClusterType:
			if !got[t] {
				var eds []string
				for _, a := range resp.GetResources() {
					var c clusterv3.Cluster
					if err := a.UnmarshalTo(&c); err != nil {
						return err
					}
					if c.GetType() == clusterv3.Cluster_EDS {
						eds = append(eds, c.GetName())
					}
				}
				slices.Sort(eds)
				names[resourcev3.EndpointType] = eds
				if err := stream.Send(&discovery.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: eds}); err != nil {
					return err
				}
			}
		case resourcev3.ListenerType:
			if !got[t] {
				var rds []string
				for _, a := range resp.GetResources() {
					var l listenerv3.Listener
					if err := a.UnmarshalTo(&l); err != nil {
						return err
					}
					for _, h := range xdsclient.HTTPConnectionManagers(&l) {
						if n := h.GetRds().GetRouteConfigName(); n != "" {
							rds = append(rds, n)
						}
					}
				}
				slices.Sort(rds)
				names[resourcev3.RouteType] = rds
				if err := stream.Send(&discovery.DiscoveryRequest{TypeUrl: resourcev3.RouteType, ResourceNames: rds}); err != nil {
					return err
				}
			}
		}
		got[t] = true
		if len(got) == 4 {
			synced = true
			out <- fmt.Sprintf("ready %d", i)
			ready()
		}
	}
}

func shortType(typeURL string) string {
	switch typeURL {
	case resourcev3.ClusterType:
		return "cds"
	case resourcev3.EndpointType:
		return "eds"
	case resourcev3.ListenerType:
		return "lds"
	case resourcev3.RouteType:
		return "rds"
	}
	return "other"
}

// fleetHot is how many services every scoped client's popular half is
// drawn from: each of them is called by a quarter of the fleet.
const fleetHot = 20

// fleetServices is what scoped client i calls: 5 of the fleetHot popular
// services (each one subscribed by a quarter of the clients) and 5 of
// the others, spread so every service has about the same number of
// callers.
func fleetServices(i, services int) []string {
	hot := min(fleetHot, services)
	out := make([]string, 0, 10)
	for k := 0; k < 5 && k < hot; k++ {
		out = append(out, fmt.Sprintf("svc-%05d", (i+k*4)%hot))
	}
	if tail := services - hot; tail > 0 {
		for k := 0; k < 5; k++ {
			out = append(out, fmt.Sprintf("svc-%05d", hot+(i*5+k)%tail))
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// fleetOnDemand is the service scoped client i meets on its request path
// later (not in fleetServices), or "" when there is none.
func fleetOnDemand(i, services int) string {
	tail := services - min(fleetHot, services)
	if tail <= 10 {
		return ""
	}
	return fmt.Sprintf("svc-%05d", min(fleetHot, services)+(i*5+tail/2)%tail)
}

// subscribedTo lists the clients (of n) whose fleetServices hold service.
func subscribedTo(service string, n, services int) []int {
	var out []int
	for i := 0; i < n; i++ {
		if slices.Contains(fleetServices(i, services), service) {
			out = append(out, i)
		}
	}
	return out
}

// benchDeltaClient is a scoped agent's delta ADS stream reduced to what
// the benchmark needs: it subscribes by name to the clusters and load
// assignments of fleetServices, to its two listeners, and to those
// services' own route configurations (wire.ServiceRoute), ACKs every
// response at once (no resource names in ACKs), and is synced once it
// holds every subscribed cluster and load assignment and its listeners.
// On a signal on onDemand it subscribes to fleetOnDemand's cluster and
// load assignment and reports how long they took to arrive.
func benchDeltaClient(ctx context.Context, addr string, i, services int, ready func(), onDemand <-chan struct{}, out chan<- string) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30)))
	if err != nil {
		return err
	}
	defer conn.Close()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return err
	}
	names := fleetServices(i, services)
	routes := make([]string, len(names))
	for k, n := range names {
		routes[k] = wire.ServiceRoute(n)
	}
	node := agentNode(fmt.Sprintf("fleet-%d", i), names[0], 8080)
	subs := []*discovery.DeltaDiscoveryRequest{
		{Node: node, TypeUrl: resourcev3.ClusterType, ResourceNamesSubscribe: names},
		{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: names},
		{TypeUrl: resourcev3.ListenerType, ResourceNamesSubscribe: wire.AgentListeners()},
		{TypeUrl: resourcev3.RouteType, ResourceNamesSubscribe: routes},
	}
	for _, r := range subs {
		if err := stream.Send(r); err != nil {
			return err
		}
	}
	held := map[string]map[string]bool{}
	for _, t := range []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType} {
		held[t] = map[string]bool{}
	}
	holds := func(t string, want []string) bool {
		for _, n := range want {
			if !held[t][n] {
				return false
			}
		}
		return true
	}
	resps := make(chan *discovery.DeltaDiscoveryResponse, 16)
	errc := make(chan error, 1)
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			resps <- r
		}
	}()
	synced := false
	var odName string
	var odStart time.Time
	for {
		select {
		case err := <-errc:
			return err
		case <-onDemand:
			if odName = fleetOnDemand(i, services); odName == "" || !synced {
				odName = ""
				continue
			}
			odStart = time.Now()
			for _, t := range []string{resourcev3.ClusterType, resourcev3.EndpointType} {
				if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: t, ResourceNamesSubscribe: []string{odName}}); err != nil {
					return err
				}
			}
		case resp := <-resps:
			t := resp.GetTypeUrl()
			if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: t, ResponseNonce: resp.GetNonce()}); err != nil {
				return err
			}
			now := time.Now()
			for _, r := range resp.GetResources() {
				held[t][r.GetName()] = true
			}
			for _, n := range resp.GetRemovedResources() {
				delete(held[t], n)
			}
			if synced {
				out <- fmt.Sprintf("r %d %s %d %d %d", i, shortType(t), now.UnixNano(), len(resp.GetResources()), proto.Size(resp))
				if odName != "" && holds(resourcev3.ClusterType, []string{odName}) && holds(resourcev3.EndpointType, []string{odName}) {
					out <- fmt.Sprintf("od %d %d", i, now.Sub(odStart).Nanoseconds())
					odName = ""
				}
				continue
			}
			if holds(resourcev3.ClusterType, names) && holds(resourcev3.EndpointType, names) && len(held[resourcev3.ListenerType]) > 0 {
				synced = true
				out <- fmt.Sprintf("ready %d", i)
				ready()
			}
		}
	}
}
