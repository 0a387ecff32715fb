package balancer

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/meshvm/mesh/governance/outlier"
)

// benchPicker builds n endpoints in three zones (a third local) with real
// outlier hosts, every tenth one ejected.
func benchPicker(b *testing.B, n int, opts Options) *Picker {
	d, _ := outlier.New(outlier.Config{Consecutive5xx: 1, MaxEjectionPercent: 100}, nil)
	eps := make([]Endpoint, n)
	hosts := make([]*outlier.Host, n)
	for i := range eps {
		hosts[i] = &outlier.Host{}
		eps[i] = Endpoint{Zone: fmt.Sprintf("z%d", i%3), Active: &atomic.Int64{}, Health: hosts[i]}
		eps[i].Active.Store(int64(i % 7))
	}
	d.SetHosts(hosts)
	for i := 5; i < n; i += 10 {
		d.Report(hosts[i], outlier.ServerError)
	}
	opts.Version = d
	p, err := New(eps, opts)
	if err != nil {
		b.Fatal(err)
	}
	return p
}

var sink int

func BenchmarkPick(b *testing.B) {
	cases := []struct {
		name string
		opts Options
	}{
		{"RoundRobin", Options{Policy: RoundRobin}},
		{"LeastRequest", Options{Policy: LeastRequest}},
		{"Random", Options{Policy: Random}},
		{"LocalityRoundRobin", Options{Policy: RoundRobin, LocalZone: "z0", SpillActive: 5}},
		{"LocalityLeastRequest", Options{Policy: LeastRequest, LocalZone: "z0", SpillActive: 5}},
	}
	for _, c := range cases {
		for _, n := range []int{10, 100} {
			b.Run(fmt.Sprintf("%s/%d", c.name, n), func(b *testing.B) {
				p := benchPicker(b, n, c.opts)
				b.ReportAllocs()
				for b.Loop() {
					sink = p.Pick()
				}
			})
		}
	}
}

func BenchmarkPickParallel(b *testing.B) {
	for _, policy := range []Policy{RoundRobin, LeastRequest} {
		b.Run(policy.String()+"/100", func(b *testing.B) {
			p := benchPicker(b, 100, Options{Policy: policy, LocalZone: "z0"})
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					p.Pick()
				}
			})
		})
	}
}

// BenchmarkPickHash is the cost of a hashing pick (the request's hash
// already computed), every tenth endpoint ejected.
func BenchmarkPickHash(b *testing.B) {
	for _, pol := range []Policy{RingHash, Maglev} {
		for _, n := range []int{10, 100} {
			b.Run(fmt.Sprintf("%s/%d", pol, n), func(b *testing.B) {
				p := benchPicker(b, n, Options{Policy: pol})
				for i := range p.eps {
					p.eps[i].Key = fmt.Sprintf("10.0.0.%d:15006", i)
				}
				p, _ = New(p.eps, Options{Policy: pol, Version: p.version})
				b.ReportAllocs()
				h := uint64(0x9e3779b97f4a7c15)
				for b.Loop() {
					h = h*6364136223846793005 + 1442695040888963407
					sink = p.PickHash(h, 0)
				}
			})
		}
	}
}
