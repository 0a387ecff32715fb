package balancer

import (
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/meshvm/mesh/governance/clock"
	"github.com/meshvm/mesh/governance/outlier"
)

// cluster is a set of endpoints with real outlier state behind them.
type cluster struct {
	eps      []Endpoint
	hosts    []*outlier.Host
	active   []*atomic.Int64
	detector *outlier.Detector
}

// newCluster makes endpoints in the given zones.
func newCluster(t testing.TB, zones ...string) *cluster {
	t.Helper()
	d, err := outlier.New(outlier.Config{Consecutive5xx: 1, MaxEjectionPercent: 100}, clock.NewManual(1))
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{detector: d}
	for _, z := range zones {
		h, a := &outlier.Host{}, &atomic.Int64{}
		c.hosts = append(c.hosts, h)
		c.active = append(c.active, a)
		c.eps = append(c.eps, Endpoint{Zone: z, Active: a, Health: h})
	}
	d.SetHosts(c.hosts)
	return c
}

// eject ejects the endpoints at the given indexes through the detector.
func (c *cluster) eject(t testing.TB, idx ...int) {
	t.Helper()
	for _, i := range idx {
		if !c.detector.Report(c.hosts[i], outlier.ServerError) {
			t.Fatalf("endpoint %d was not ejected", i)
		}
	}
}

func seeded() func() uint64 { return rand.New(rand.NewPCG(1, 2)).Uint64 }

// counts picks n times and counts the picks per endpoint.
func counts(t testing.TB, p *Picker, n int) []int {
	t.Helper()
	got := make([]int, len(p.Endpoints()))
	for range n {
		i := p.Pick()
		if i < 0 {
			t.Fatal("Pick() = -1 with endpoints present")
		}
		got[i]++
	}
	return got
}

func TestParsePolicy(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Policy
		wantErr bool
	}{
		{name: "round robin", in: "round_robin", want: RoundRobin},
		{name: "empty is round robin", in: "", want: RoundRobin},
		{name: "least request", in: "least_request", want: LeastRequest},
		{name: "random", in: "random", want: Random},
		{name: "ring hash", in: "ring_hash", want: RingHash},
		{name: "maglev", in: "maglev", want: Maglev},
		{name: "unknown", in: "consistent", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParsePolicy(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("ParsePolicy(%q) = %s, %v; want %s, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
			if err == nil && tt.in != "" && got.String() != tt.in {
				t.Fatalf("String() = %q, want %q", got.String(), tt.in)
			}
		})
	}
}

func TestRoundRobin(t *testing.T) {
	tests := []struct {
		name    string
		n       int
		ejected []int
		want    []int
	}{
		{name: "in turn", n: 3, want: []int{0, 1, 2, 0, 1, 2}},
		{name: "skips ejected without favouring the next", n: 4, ejected: []int{1, 2}, want: []int{0, 3, 0, 3, 0}},
		{name: "single endpoint", n: 1, want: []int{0, 0}},
		{name: "no endpoints", n: 0, want: []int{-1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCluster(t, make([]string, tt.n)...)
			c.eject(t, tt.ejected...)
			p, err := New(c.eps, Options{Policy: RoundRobin})
			if err != nil {
				t.Fatal(err)
			}
			for k, want := range tt.want {
				if got := p.Pick(); got != want {
					t.Fatalf("pick %d = %d, want %d (sequence %v)", k, got, want, tt.want)
				}
			}
		})
	}
}

func TestPanicModeWhenAllEjected(t *testing.T) {
	for _, policy := range []Policy{RoundRobin, Random, LeastRequest} {
		t.Run(policy.String(), func(t *testing.T) {
			c := newCluster(t, "a", "a", "b", "b")
			c.eject(t, 0, 1, 2, 3)
			p, _ := New(c.eps, Options{Policy: policy, LocalZone: "a", Version: c.detector, Rand: seeded()})
			for i, n := range counts(t, p, 4000) {
				if n < 800 || n > 1200 {
					t.Fatalf("endpoint %d picked %d of 4000 times, want about 1000", i, n)
				}
			}
		})
	}
}

func TestSpreadAndSkipEjected(t *testing.T) {
	for _, policy := range []Policy{RoundRobin, Random, LeastRequest} {
		t.Run(policy.String(), func(t *testing.T) {
			c := newCluster(t, make([]string, 10)...)
			c.eject(t, 3, 7)
			p, err := New(c.eps, Options{Policy: policy, Rand: seeded()})
			if err != nil {
				t.Fatal(err)
			}
			got := counts(t, p, 16000)
			for i, n := range got {
				switch {
				case i == 3 || i == 7:
					if n != 0 {
						t.Fatalf("ejected endpoint %d picked %d times", i, n)
					}
				case n < 1500 || n > 2500: // 2000 expected
					t.Fatalf("endpoint %d picked %d of 16000 times, want about 2000: %v", i, n, got)
				}
			}
		})
	}
}

func TestLeastRequestPrefersIdle(t *testing.T) {
	tests := []struct {
		name    string
		active  []int64
		busiest int
		idlest  int
		minIdle float64 // least share of picks the idlest endpoint gets
		maxBusy float64 // most share the busiest gets
	}{
		// Two endpoints: both are always the two choices.
		{name: "two endpoints: always the idle one", active: []int64{5, 0}, busiest: 0, idlest: 1, minIdle: 1, maxBusy: 0},
		// Four: the idle one wins whenever it is one of the two (1/2), the
		// busiest only when paired with... never (it always has a better rival).
		{name: "four endpoints", active: []int64{9, 0, 5, 5}, busiest: 0, idlest: 1, minIdle: 0.45, maxBusy: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCluster(t, make([]string, len(tt.active))...)
			for i, a := range tt.active {
				c.active[i].Store(a)
			}
			p, _ := New(c.eps, Options{Policy: LeastRequest, Rand: seeded()})
			const n = 10000
			got := counts(t, p, n)
			if share := float64(got[tt.idlest]) / n; share < tt.minIdle {
				t.Fatalf("idlest endpoint got %.2f of picks, want at least %.2f: %v", share, tt.minIdle, got)
			}
			if share := float64(got[tt.busiest]) / n; share > tt.maxBusy {
				t.Fatalf("busiest endpoint got %.2f of picks, want at most %.2f: %v", share, tt.maxBusy, got)
			}
		})
	}
}

func TestLocality(t *testing.T) {
	zones := []string{"a", "a", "a", "a", "b", "b", "c", "c"} // local zone a: 0-3
	tests := []struct {
		name      string
		ejected   []int
		spill     int64
		active    map[int]int64
		wantLocal float64 // share of picks in zone a
		tolerance float64
	}{
		{name: "all healthy: all local", wantLocal: 1},
		{name: "3 of 4 healthy: 1.4 x 75% > 1, still all local", ejected: []int{0}, wantLocal: 1},
		{name: "2 of 4 healthy: 70% local", ejected: []int{0, 1}, wantLocal: 0.7, tolerance: 0.03},
		{name: "1 of 4 healthy: 35% local", ejected: []int{0, 1, 2}, wantLocal: 0.35, tolerance: 0.03},
		{name: "no local healthy: all remote", ejected: []int{0, 1, 2, 3}, wantLocal: 0},
		{name: "no remote healthy: degraded local takes everything", ejected: []int{0, 1, 4, 5, 6, 7}, wantLocal: 1},
		{name: "overloaded local spills to idler remote", spill: 10,
			active: map[int]int64{0: 10, 1: 12, 2: 50, 3: 10}, wantLocal: 0},
		{name: "busy remote does not take the spill", spill: 10,
			active: map[int]int64{0: 10, 1: 10, 2: 10, 3: 10, 4: 20, 5: 20, 6: 20, 7: 20}, wantLocal: 1},
		{name: "under the spill threshold stays local", spill: 10,
			active: map[int]int64{0: 9, 1: 9, 2: 9, 3: 9}, wantLocal: 1},
	}
	for _, tt := range tests {
		for _, policy := range []Policy{RoundRobin, LeastRequest, Random} {
			t.Run(tt.name+"/"+policy.String(), func(t *testing.T) {
				c := newCluster(t, zones...)
				p, err := New(c.eps, Options{Policy: policy, LocalZone: "a", SpillActive: tt.spill, Version: c.detector, Rand: seeded()})
				if err != nil {
					t.Fatal(err)
				}
				p.Pick() // cache the all-healthy share, so the ejections below must invalidate it
				c.eject(t, tt.ejected...)
				for i, a := range tt.active {
					c.active[i].Store(a)
				}
				const n = 10000
				got := counts(t, p, n)
				local := 0
				for i, k := range got {
					if c.hosts[i].Ejected() && k > 0 && tt.wantLocal != 1 {
						t.Fatalf("ejected endpoint %d picked %d times", i, k)
					}
					if zones[i] == "a" {
						local += k
					}
				}
				if share := float64(local) / n; math.Abs(share-tt.wantLocal) > tt.tolerance {
					t.Fatalf("local share %.3f, want %.2f±%.2f: %v", share, tt.wantLocal, tt.tolerance, got)
				}
			})
		}
	}
}

func TestLocalityWithoutVersionRecountsEveryPick(t *testing.T) {
	c := newCluster(t, "a", "a", "b")
	p, _ := New(c.eps, Options{LocalZone: "a"})
	p.Pick()
	c.eject(t, 0, 1)
	for range 10 {
		if i := p.Pick(); i != 2 {
			t.Fatalf("Pick() = %d after the local zone was ejected, want 2", i)
		}
	}
}

func TestLocalityFallsBackWhenZoneAbsent(t *testing.T) {
	tests := []struct {
		name  string
		zones []string
		local string
	}{
		{name: "no endpoint in the local zone", zones: []string{"b", "c"}, local: "a"},
		{name: "every endpoint in the local zone", zones: []string{"a", "a"}, local: "a"},
		{name: "no local zone given", zones: []string{"a", "b"}, local: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCluster(t, tt.zones...)
			p, _ := New(c.eps, Options{LocalZone: tt.local})
			got := counts(t, p, 100)
			for i, n := range got {
				if n != 50 {
					t.Fatalf("endpoint %d picked %d of 100 times, want 50 (plain round robin): %v", i, n, got)
				}
			}
		})
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	tests := []struct {
		name string
		opts Options
	}{
		{name: "unknown policy", opts: Options{Policy: 9}},
		{name: "negative overprovisioning", opts: Options{Overprovisioning: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(nil, tt.opts); err == nil {
				t.Fatal("New succeeded, want an error")
			}
		})
	}
}

// TestConcurrentPicks picks from many goroutines while endpoints are
// ejected and returned, under the race detector.
func TestConcurrentPicks(t *testing.T) {
	c := newCluster(t, "a", "a", "b", "b", "c")
	for _, policy := range []Policy{RoundRobin, LeastRequest, Random} {
		p, _ := New(c.eps, Options{Policy: policy, LocalZone: "a", SpillActive: 3, Version: c.detector})
		var wg sync.WaitGroup
		stop := make(chan struct{})
		wg.Go(func() {
			clk := 0
			for {
				select {
				case <-stop:
					return
				default:
				}
				c.detector.Report(c.hosts[clk%5], outlier.ServerError)
				clk++
				c.detector.Sweep(math.MaxInt64)
			}
		})
		var picks sync.WaitGroup
		for range 4 {
			picks.Go(func() {
				for range 5000 {
					i := p.Pick()
					if i < 0 || i >= 5 {
						t.Errorf("Pick() = %d", i)
						return
					}
					c.active[i].Add(1)
					c.active[i].Add(-1)
				}
			})
		}
		picks.Wait()
		close(stop)
		wg.Wait()
	}
}
