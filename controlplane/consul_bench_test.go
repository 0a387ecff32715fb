package controlplane_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
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
	register time.Duration
	passing  map[int]bool
	cl       *clientsProc
	cancel   context.CancelFunc
	done     chan error
}

const benchNodes = 10

func benchCheck(s, i int) consulapi.HealthCheck {
	return consulapi.HealthCheck{Node: "bench-vm-" + strconv.Itoa(i), CheckID: fmt.Sprintf("check-svc-%05d-%d", s, i),
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

func newConsulFixture(b *testing.B, services, clients int) *consulFixture {
	f := &consulFixture{services: services, passing: map[int]bool{}, done: make(chan error, 1)}
	start := time.Now()
	var ops consulapi.TxnOps
	flush := func() {
		if len(ops) == 0 {
			return
		}
		if err := txn(ops); err != nil {
			f.stop(b)
			b.Fatalf("register: %v", err)
		}
		ops = ops[:0]
	}
	for i := 0; i < benchNodes; i++ {
		ops = append(ops, &consulapi.TxnOp{Node: &consulapi.NodeTxnOp{Verb: consulapi.NodeSet,
			Node: consulapi.Node{Node: "bench-vm-" + strconv.Itoa(i), Address: "127.0.0.1"}}})
	}
	flush()
	for s := 0; s < services; s++ {
		for i := 0; i < benchNodes; i++ {
			ops = append(ops,
				&consulapi.TxnOp{Service: &consulapi.ServiceTxnOp{Verb: consulapi.ServiceSet, Node: "bench-vm-" + strconv.Itoa(i), Service: consulapi.AgentService{
					ID: fmt.Sprintf("svc-%05d-%d", s, i), Service: fmt.Sprintf("svc-%05d", s), Address: fmt.Sprintf("10.%d.%d.%d", s/250, s%250, i+1), Port: 15006,
					Meta: map[string]string{"app_port": "8080", "mesh_version": "0.1.0", "mesh_zone": fmt.Sprintf("z%d", i%2), "mesh_region": "r1"},
				}}},
				&consulapi.TxnOp{Check: &consulapi.CheckTxnOp{Verb: consulapi.CheckSet, Check: benchCheck(s, i)}})
			if len(ops) >= 64 {
				flush()
			}
		}
	}
	flush()
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
	for i := 0; i < benchNodes; i++ {
		_, _ = testConsul.Client.Catalog().Deregister(&consulapi.CatalogDeregistration{Node: "bench-vm-" + strconv.Itoa(i)}, nil)
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
