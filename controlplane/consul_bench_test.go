package controlplane_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane"
	"github.com/meshvm/mesh/meshtest"
)

// BenchmarkConsulEndpointChange is BenchmarkEndpointChange from a real
// Consul: the catalog (services x 10 instances on 10 nodes, one check
// each) is registered in the package's Consul dev agent through the
// transaction API, the control plane watches it with its Consul source,
// and each iteration sets one check critical (or passing again) through
// the transaction API; the time is from that write to every client's EDS
// ACK. It reports the registration time too.
func BenchmarkConsulEndpointChange(b *testing.B) {
	for _, size := range []struct{ services, clients int }{{100, 20}} { // 1000x10: see docs/benchmarks.md
		var f *consulFixture
		b.Run(fmt.Sprintf("%dx10/clients=%d", size.services, size.clients), func(b *testing.B) {
			if f == nil {
				f = newConsulFixture(b, size.services, size.clients)
			}
			f.run(b)
		})
		if f != nil {
			f.stop(b)
		}
	}
}

type consulFixture struct {
	services int
	nodes    int // 0: benchNodes
	register time.Duration
	passing  map[int]bool
	cl       *clientsProc
	cancel   context.CancelFunc
	done     chan error
}

const benchNodes = 10

// benchNode is the node instance i of service s runs on, of nodes: with
// benchNodes nodes, bench-vm-i.
func benchNode(s, i, nodes int) string { return "bench-vm-" + strconv.Itoa((s*benchNodes+i)%nodes) }

func benchCheck(s, i int) consulapi.HealthCheck { return benchCheckOn(s, i, benchNodes) }

func benchCheckOn(s, i, nodes int) consulapi.HealthCheck {
	return consulapi.HealthCheck{Node: benchNode(s, i, nodes), CheckID: fmt.Sprintf("check-svc-%05d-%d", s, i),
		Name: "bench", ServiceID: fmt.Sprintf("svc-%05d-%d", s, i), ServiceName: fmt.Sprintf("svc-%05d", s), Status: consulapi.HealthPassing}
}

func txn(ops consulapi.TxnOps) error {
	ok, resp, _, err := testConsul.Client.Txn().Txn(ops, nil)
	if err != nil {
		return err
	}
	if !ok {
		var errs []string
		for _, e := range resp.Errors {
			errs = append(errs, fmt.Sprintf("op %d: %s", e.OpIndex, e.What))
		}
		return fmt.Errorf("txn failed: %v", errs)
	}
	return nil
}

// benchInstance is the registration of instance i of service s on node
// bench-vm-i.
func benchInstance(name string, s, i, nodes int) consulapi.TxnOps {
	chk := benchCheckOn(s, i, nodes)
	chk.ServiceName, chk.ServiceID, chk.CheckID = name, fmt.Sprintf("%s-%d", name, i), fmt.Sprintf("check-%s-%d", name, i)
	return consulapi.TxnOps{
		&consulapi.TxnOp{Service: &consulapi.ServiceTxnOp{Verb: consulapi.ServiceSet, Node: chk.Node, Service: consulapi.AgentService{
			ID: fmt.Sprintf("%s-%d", name, i), Service: name, Address: fmt.Sprintf("10.%d.%d.%d", s/250, s%250, i+1), Port: 15006,
			Meta: map[string]string{"app_port": "8080", "mesh_version": "0.1.0", "mesh_zone": fmt.Sprintf("z%d", i%2), "mesh_region": "r1"},
		}}},
		&consulapi.TxnOp{Check: &consulapi.CheckTxnOp{Verb: consulapi.CheckSet, Check: chk}},
	}
}

// registerBenchCatalog registers services x benchNodes instances (one
// check each) spread over nodes nodes in the package's Consul through the
// transaction API, 64 operations per transaction, from 8 writers at once.
// (Consul's writes slow down as a node holds more services: 10,000
// services on 10 nodes register several times slower than on 1,000.)
func registerBenchCatalog(services, nodes int) error {
	var ops consulapi.TxnOps
	for n := 0; n < nodes; n++ {
		ops = append(ops, &consulapi.TxnOp{Node: &consulapi.NodeTxnOp{Verb: consulapi.NodeSet,
			Node: consulapi.Node{Node: "bench-vm-" + strconv.Itoa(n), Address: "127.0.0.1"}}})
		if len(ops) == 64 || n == nodes-1 {
			if err := txn(ops); err != nil {
				return err
			}
			ops = nil
		}
	}
	work := make(chan consulapi.TxnOps)
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ops := range work {
				if err := txn(ops); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		}()
	}
	ops = nil
	for s := 0; s < services; s++ {
		for i := 0; i < benchNodes; i++ {
			ops = append(ops, benchInstance(fmt.Sprintf("svc-%05d", s), s, i, nodes)...)
			if len(ops) >= 64 {
				work <- ops
				ops = nil
			}
		}
	}
	if len(ops) > 0 {
		work <- ops
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

func newConsulFixture(b *testing.B, services, clients int) *consulFixture {
	f := &consulFixture{services: services, passing: map[int]bool{}, done: make(chan error, 1)}
	start := time.Now()
	if err := registerBenchCatalog(services, benchNodes); err != nil {
		f.stop(b)
		b.Fatalf("register: %v", err)
	}
	f.register = time.Since(start)
	b.Logf("registered %d instances in %v", services*benchNodes, f.register.Round(time.Millisecond))

	cfg := config.Default()
	cfg.Consul.Addr = testConsul.Addr
	cfg.Control.XDSAddr = "127.0.0.1:" + strconv.Itoa(meshtest.FreePort("127.0.0.1"))
	cfg.Control.AdminAddr = "127.0.0.1:" + strconv.Itoa(meshtest.FreePort("127.0.0.1"))
	c, err := controlplane.New(cfg, zerolog.Nop(), controlplane.Options{})
	if err != nil {
		b.Fatal(err)
	}
	var ctx context.Context
	ctx, f.cancel = context.WithCancel(context.Background())
	go func() { f.done <- c.Run(ctx) }()
	start = time.Now()
	for {
		if m := c.Model(); m != nil && len(m.Services) >= services {
			break
		}
		if time.Since(start) > 3*time.Minute {
			f.stop(b)
			b.Fatalf("the control plane did not serve the %d services within 3m", services)
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.Logf("first model from Consul served in %v", time.Since(start).Round(time.Millisecond))
	f.cl, err = startClients(b, cfg.Control.XDSAddr, clients, services)
	if err != nil {
		f.stop(b)
		b.Fatal(err)
	}
	return f
}

func (f *consulFixture) stop(b *testing.B) {
	if f.cl != nil {
		f.cl.stop(b)
	}
	if f.cancel != nil {
		f.cancel()
		if err := <-f.done; err != nil {
			b.Errorf("control plane: %v", err)
		}
	}
	for n := 0; n < max(f.nodes, benchNodes); n++ {
		_, _ = testConsul.Client.Catalog().Deregister(&consulapi.CatalogDeregistration{Node: "bench-vm-" + strconv.Itoa(n)}, nil)
	}
}

func (f *consulFixture) run(b *testing.B) {
	var lat []time.Duration
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		k := (n * 7919) % (f.services * benchNodes)
		s, i := k/benchNodes, k%benchNodes
		chk := benchCheck(s, i)
		if !f.passing[k] {
			chk.Status = consulapi.HealthCritical
		}
		f.passing[k] = !f.passing[k]
		before := f.cl.counts()
		t0 := time.Now()
		if err := txn(consulapi.TxnOps{{Check: &consulapi.CheckTxnOp{Verb: consulapi.CheckSet, Check: chk}}}); err != nil {
			b.Fatal(err)
		}
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
	b.ReportMetric(f.register.Seconds(), "register-s")
}

// fleetSize reads MESH_BENCH_FLEET ("services,scoped agents,unscoped
// agents[,changes]"); the default is a smoke size.
func fleetSize(b *testing.B) (services, scoped, unscoped, changes int) {
	services, scoped, unscoped, changes = 200, 50, 20, 30
	if v := os.Getenv("MESH_BENCH_FLEET"); v != "" {
		f := strings.Split(v, ",")
		n := make([]int, len(f))
		for i, s := range f {
			var err error
			if n[i], err = strconv.Atoi(strings.TrimSpace(s)); err != nil {
				b.Fatalf("MESH_BENCH_FLEET=%q: %v", v, err)
			}
		}
		if len(n) < 3 {
			b.Fatalf("MESH_BENCH_FLEET=%q: want services,scoped,unscoped[,changes]", v)
		}
		services, scoped, unscoped = n[0], n[1], n[2]
		if len(n) > 3 {
			changes = n[3]
		}
	}
	return services, scoped, unscoped, changes
}

// BenchmarkConsulFleet is issue 14's benchmark, end to end from a real
// Consul write to every agent's ACK: the catalog (services x 10 instances,
// one check each) is registered in the package's Consul dev agent through
// the transaction API; `mesh control` (this process) watches it with its
// Consul source. Then, in the same run:
//
//   - scoped: delta ADS clients (child processes, 250 per process), each
//     subscribed by name to 10 services (fleetServices: 5 of 20 popular
//     ones, 5 spread over the rest): first sync of all of them; one check
//     flip per change on a popular service, timed from the Consul write to
//     the EDS ACK of every client subscribed to it; an on-demand
//     subscription per client (time until it holds the cluster and load
//     assignment); a service added in Consul (bytes each client received
//     meanwhile); the control plane's peak RSS during the phase (VmHWM,
//     reset before it) and steady RSS after GC;
//   - unscoped: state-of-the-world clients subscribed to everything (what
//     agents did before delta scoping), the same measurements.
//
// Sizes come from MESH_BENCH_FLEET (fleetSize); run with -benchtime=1x
// (`make bench-scale`). Figures: docs/benchmarks.md.
func BenchmarkConsulFleet(b *testing.B) {
	services, scoped, unscoped, changes := fleetSize(b)
	f := &consulFixture{services: services, nodes: fleetNodes(services), passing: map[int]bool{}, done: make(chan error, 1)}
	defer f.stop(b)
	start := time.Now()
	if err := registerBenchCatalog(services, f.nodes); err != nil {
		b.Fatalf("register: %v", err)
	}
	f.register = time.Since(start)
	b.Logf("registered %d x %d instances on %d nodes in %v", services, benchNodes, f.nodes, f.register.Round(time.Millisecond))

	cfg := config.Default()
	cfg.Consul.Addr = testConsul.Addr
	cfg.Control.XDSAddr = "127.0.0.1:" + strconv.Itoa(meshtest.FreePort("127.0.0.1"))
	cfg.Control.AdminAddr = "127.0.0.1:" + strconv.Itoa(meshtest.FreePort("127.0.0.1"))
	c, err := controlplane.New(cfg, zerolog.Nop(), controlplane.Options{})
	if err != nil {
		b.Fatal(err)
	}
	var ctx context.Context
	ctx, f.cancel = context.WithCancel(context.Background())
	go func() { f.done <- c.Run(ctx) }()
	start = time.Now()
	if err := waitModel(c, func(n int) bool { return n >= services }, 5*time.Minute); err != nil {
		b.Fatal(err)
	}
	firstModel := time.Since(start)
	b.Logf("first model from Consul served in %v", firstModel.Round(time.Millisecond))

	added := 0
	phase := func(name string, o clientsOptions) map[string]float64 {
		res := map[string]float64{"register-s": f.register.Seconds(), "first-model-s": firstModel.Seconds()}
		runtime.GC()
		debug.FreeOSMemory()
		_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) // VmHWM := VmRSS
		t0 := time.Now()
		cl, err := startClientsWith(b, cfg.Control.XDSAddr, o)
		if err != nil {
			b.Fatal(err)
		}
		defer cl.stop(b)
		res["sync-s"] = time.Since(t0).Seconds()
		b.Logf("%s: %d agents synced in %v", name, o.n, time.Since(t0).Round(time.Millisecond))

		// One check flip per change, on the popular services.
		var lat []time.Duration
		fanout := 0
		for n := 0; n < changes; n++ {
			s, i := n%min(fleetHot, services), (n/min(fleetHot, services))%benchNodes
			k := s*benchNodes + i
			chk := benchCheckOn(s, i, f.nodes)
			if !f.passing[k] {
				chk.Status = consulapi.HealthCritical
			}
			f.passing[k] = !f.passing[k]
			var which []int
			if o.delta {
				which = subscribedTo(fmt.Sprintf("svc-%05d", s), o.n, services)
			}
			fanout = max(fanout, len(which))
			before := cl.counts()
			t0 := time.Now()
			if err := txn(consulapi.TxnOps{{Check: &consulapi.CheckTxnOp{Verb: consulapi.CheckSet, Check: chk}}}); err != nil {
				b.Fatal(err)
			}
			acks, err := cl.waitEDSOf(before, which, 60*time.Second)
			if err != nil {
				// Reported, with what was measured until then.
				b.Errorf("%s: change %d: %v", name, n, err)
				res["changes-delivered"] = float64(n)
				slices.Sort(lat)
				res["p50-ms"], res["p99-ms"], res["max-ms"] = pctMS(lat, 0.50), pctMS(lat, 0.99), pctMS(lat, 1)
				res["peak-rss-MB"] = float64(procStatus("VmHWM")) / 1024
				b.Logf("%s: %v", name, res)
				return res
			}
			for _, t := range acks {
				lat = append(lat, t.Sub(t0))
			}
		}
		res["changes-delivered"] = float64(changes)
		slices.Sort(lat)
		res["p50-ms"], res["p99-ms"], res["max-ms"] = pctMS(lat, 0.50), pctMS(lat, 0.99), pctMS(lat, 1)
		if o.delta {
			res["fanout-agents"] = float64(fanout)
		} else {
			res["fanout-agents"] = float64(o.n)
		}

		if o.delta {
			if err := cl.command("ondemand"); err != nil {
				b.Fatal(err)
			}
			od, err := cl.waitOnDemand(60 * time.Second)
			if err != nil {
				b.Fatal(err)
			}
			slices.Sort(od)
			res["ondemand-p50-ms"], res["ondemand-p99-ms"] = pctMS(od, 0.50), pctMS(od, 0.99)
		}

		// A service added in Consul: what each agent receives for it.
		added++
		name2 := fmt.Sprintf("svc-added-%d", added)
		before := cl.received()
		var ops consulapi.TxnOps
		for i := 0; i < benchNodes; i++ {
			ops = append(ops, benchInstance(name2, 250*250-added, i, f.nodes)...)
		}
		if err := txn(ops); err != nil {
			b.Fatal(err)
		}
		if err := waitModel(c, func(int) bool { return hasService(c, name2) }, time.Minute); err != nil {
			b.Fatal(err)
		}
		time.Sleep(cfg.Control.Debounce + 3*time.Second)
		after := cl.received()
		var sum, most int64
		for i := range after {
			d := after[i] - before[i]
			sum += d
			most = max(most, d)
		}
		res["added-bytes-per-agent"] = float64(sum) / float64(len(after))
		res["added-bytes-max"] = float64(most)

		res["peak-rss-MB"] = float64(procStatus("VmHWM")) / 1024
		runtime.GC()
		debug.FreeOSMemory()
		res["steady-rss-MB"] = float64(procStatus("VmRSS")) / 1024
		b.Logf("%s: %v", name, res)
		return res
	}
	var results [2]map[string]float64
	if scoped > 0 {
		results[0] = phase("scoped", clientsOptions{n: scoped, services: services, delta: true, procs: (scoped + 249) / 250})
	}
	if unscoped > 0 {
		results[1] = phase("unscoped", clientsOptions{n: unscoped, services: services, procs: (unscoped + 249) / 250})
	}
	for k, res := range results {
		if res == nil {
			continue
		}
		kind, n := "scoped-delta", scoped
		if k == 1 {
			kind, n = "unscoped-sotw", unscoped
		}
		b.Run(fmt.Sprintf("%s/%dx10/agents=%d", kind, services, n), func(b *testing.B) {
			for unit, v := range res {
				b.ReportMetric(v, unit)
			}
		})
	}
}

// fleetNodes is the number of VMs the fleet's catalog runs on: 10
// instances of a service on 10 different ones, 100 services per VM.
func fleetNodes(services int) int { return max(benchNodes, services*benchNodes/100) }

func pctMS(d []time.Duration, p float64) float64 {
	if len(d) == 0 {
		return 0
	}
	return float64(d[min(len(d)-1, int(p*float64(len(d))))]) / float64(time.Millisecond)
}

// waitModel waits until the control plane's model satisfies ok (given its
// number of services).
func waitModel(c *controlplane.Control, ok func(services int) bool, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if m := c.Model(); m != nil && ok(len(m.Services)) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the control plane's model did not get there within %v", timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func hasService(c *controlplane.Control, name string) bool {
	m := c.Model()
	if m == nil {
		return false
	}
	for _, s := range m.Services {
		if s.Name == name {
			return len(s.Endpoints) == benchNodes
		}
	}
	return false
}
