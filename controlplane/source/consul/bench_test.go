package consul_test

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/controlplane/source/consul"
	"github.com/meshvm/mesh/meshtest"
)

// BenchmarkViewAfterChange measures, against the package's real Consul
// dev agent holding services x per instances (10 nodes, one check per
// instance, registered through the transaction API), the time from one
// write to Consul to the source's first view that shows it:
//   - check: one instance's check flips critical <-> passing (found from
//     the failing-checks watch; one service fetched);
//   - port: one instance is re-registered on another port with its check
//     untouched (every check read, then found by the per-service index
//     sweep: every service's index read, one service fetched).
//
// It also reports the time to the first full view (first-view-s) and
// the most connections open to Consul at once (peak-conns).
func BenchmarkViewAfterChange(b *testing.B) {
	// 10,000 x 10 takes ~16 min to register on a loaded 2-core machine
	// (MESH_BENCH_LARGE=1); 10,000 x 2 has as many services.
	sizes := []struct{ services, per int }{{1000, 10}, {10000, 2}}
	if os.Getenv("MESH_BENCH_LARGE") != "" {
		sizes = append(sizes, struct{ services, per int }{10000, 10})
	}
	for _, size := range sizes {
		services, per := size.services, size.per
		b.Run(fmt.Sprintf("services=%dx%d", services, per), func(b *testing.B) {
			c := catalog{prefix: fmt.Sprintf("b%d-%d", services, per), services: services, per: per, nodes: 10}
			t0 := time.Now()
			c.register(b)
			b.Logf("registered %d instances in %v", services*per, time.Since(t0).Round(time.Millisecond))
			rl := meshtest.StartRelay(b, testConsul.Addr)
			t0 = time.Now()
			r := start(b, rl.Addr(), consul.Options{})
			r.await(b, 5*time.Minute, func(m map[string][]model.Instance) error {
				if len(m) < services {
					return fmt.Errorf("%d services", len(m))
				}
				return nil
			})
			first := time.Since(t0)
			b.Logf("first view in %v", first.Round(time.Millisecond))
			for _, kind := range []string{"check", "port"} {
				state := map[int]bool{} // flipped instances of this kind
				b.Run(kind, func(b *testing.B) {
					var lat []time.Duration
					for n := 0; n < b.N; n++ {
						k := (n*7919 + 13) % (services * per)
						s, i := k/per, k%per
						state[k] = !state[k]
						var op *api.TxnOp
						var want func(*model.Instance) bool
						if kind == "check" {
							status, check := api.HealthPassing, model.CheckPassing
							if state[k] {
								status, check = api.HealthCritical, model.CheckCritical
							}
							op = &api.TxnOp{Check: &api.CheckTxnOp{Verb: api.CheckSet, Check: c.check(s, i, status)}}
							want = func(in *model.Instance) bool { return in.Check == check }
						} else {
							port := 15006
							if state[k] {
								port = 16006
							}
							op = &api.TxnOp{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: c.node(i % c.nodes), Service: api.AgentService{
								ID: c.id(s, i), Service: c.service(s), Address: fmt.Sprintf("10.%d.%d.%d", s/250, s%250, i+1), Port: port,
								Meta: map[string]string{"app_port": "8080", "mesh_zone": fmt.Sprintf("z%d", i%2)},
							}}}
							want = func(in *model.Instance) bool { return in.Port == port }
						}
						t0 := time.Now()
						txn(b, api.TxnOps{op})
						r.await(b, 30*time.Second, func(m map[string][]model.Instance) error {
							if in := find(m, c.service(s), c.id(s, i)); in == nil || !want(in) {
								return fmt.Errorf("not yet")
							}
							return nil
						})
						lat = append(lat, time.Since(t0))
					}
					slices.Sort(lat)
					pct := func(p float64) float64 {
						return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))]) / float64(time.Millisecond)
					}
					b.ReportMetric(pct(0.5), "p50-ms")
					b.ReportMetric(pct(0.99), "p99-ms")
					b.ReportMetric(first.Seconds(), "first-view-s")
					b.ReportMetric(float64(rl.PeakConns()), "peak-conns")
				})
			}
			r.stop()
			runtime.GC()
		})
	}
}
