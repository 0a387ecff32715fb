package breaker

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshvm/mesh/governance/clock"
)

// op is one thing that happens to a breaker in a scripted test.
type op struct {
	advance time.Duration
	do      string // "allow", "ok", "fail" (allow then report), "probe-ok", "probe-fail", "abandon", "report-held-ok"
	n       int    // repeat count, default 1
	// expectations after the op
	wantAllowed bool
	wantState   State
}

func TestBreaker(t *testing.T) {
	base := Config{ErrorPercentThreshold: 50, RequestVolumeThreshold: 4, SleepWindow: 5 * time.Second}
	tests := []struct {
		name string
		cfg  Config
		ops  []op
	}{
		{
			name: "stays closed below the request volume even when everything fails",
			cfg:  base,
			ops: []op{
				{do: "fail", n: 3, wantAllowed: true, wantState: Closed},
				{do: "allow", wantAllowed: true, wantState: Closed},
			},
		},
		{
			name: "opens once the volume is reached and the error share is at the threshold",
			cfg:  base,
			ops: []op{
				{do: "ok", n: 2, wantAllowed: true, wantState: Closed},
				{do: "fail", wantAllowed: true, wantState: Closed},
				{do: "fail", wantAllowed: true, wantState: Open},
				{do: "allow", wantAllowed: false, wantState: Open},
			},
		},
		{
			name: "stays closed under the threshold",
			cfg:  base,
			ops: []op{
				{do: "ok", n: 6, wantAllowed: true, wantState: Closed},
				{do: "fail", n: 5, wantAllowed: true, wantState: Closed}, // 45%
				{do: "allow", wantAllowed: true, wantState: Closed},
			},
		},
		{
			name: "failures older than the window are forgotten",
			cfg:  base,
			ops: []op{
				{do: "fail", n: 3, wantAllowed: true, wantState: Closed},
				{advance: 11 * time.Second, do: "fail", wantAllowed: true, wantState: Closed},
				{do: "ok", n: 3, wantAllowed: true, wantState: Closed},
			},
		},
		{
			name: "open refuses until the sleep window, then lets exactly one probe through",
			cfg:  base,
			ops: []op{
				{do: "fail", n: 4, wantAllowed: true, wantState: Open},
				{advance: 4999 * time.Millisecond, do: "allow", wantAllowed: false, wantState: Open},
				{advance: time.Millisecond, do: "allow", wantAllowed: true, wantState: HalfOpen},
				{do: "allow", wantAllowed: false, wantState: HalfOpen},
				{advance: time.Second, do: "allow", wantAllowed: false, wantState: HalfOpen},
			},
		},
		{
			name: "a successful probe closes the circuit with fresh counts",
			cfg:  base,
			ops: []op{
				{do: "fail", n: 4, wantAllowed: true, wantState: Open},
				{advance: 5 * time.Second, do: "probe-ok", wantAllowed: true, wantState: Closed},
				{do: "fail", n: 3, wantAllowed: true, wantState: Closed}, // the old failures do not count
				{do: "fail", wantAllowed: true, wantState: Open},
			},
		},
		{
			name: "a failed probe opens the circuit for another sleep window",
			cfg:  base,
			ops: []op{
				{do: "fail", n: 4, wantAllowed: true, wantState: Open},
				{advance: 5 * time.Second, do: "probe-fail", wantAllowed: true, wantState: Open},
				{advance: 4 * time.Second, do: "allow", wantAllowed: false, wantState: Open},
				{advance: time.Second, do: "probe-ok", wantAllowed: true, wantState: Closed},
			},
		},
		{
			name: "a probe that never reports is replaced after a sleep window",
			cfg:  base,
			ops: []op{
				{do: "fail", n: 4, wantAllowed: true, wantState: Open},
				{advance: 5 * time.Second, do: "allow", wantAllowed: true, wantState: HalfOpen},
				{advance: 5 * time.Second, do: "probe-ok", wantAllowed: true, wantState: Closed},
			},
		},
		{
			name: "an abandoned probe lets the next request probe at once",
			cfg:  base,
			ops: []op{
				{do: "fail", n: 4, wantAllowed: true, wantState: Open},
				{advance: 5 * time.Second, do: "abandon", wantAllowed: true, wantState: Open},
				{do: "probe-ok", wantAllowed: true, wantState: Closed},
			},
		},
		{
			name: "late successes of requests let through before the circuit opened do not close it",
			cfg:  base,
			ops: []op{
				{do: "fail", n: 4, wantAllowed: true, wantState: Open},
				{do: "report-held-ok", wantAllowed: true, wantState: Open},
			},
		},
		{
			name: "zero error percent threshold never opens",
			cfg:  Config{RequestVolumeThreshold: 1},
			ops: []op{
				{do: "fail", n: 100, wantAllowed: true, wantState: Closed},
			},
		},
		{
			name: "zero request volume opens on the first failure at 100 percent",
			cfg:  Config{ErrorPercentThreshold: 100, SleepWindow: time.Second},
			ops: []op{
				{do: "ok", wantAllowed: true, wantState: Closed},
				{do: "fail", wantAllowed: true, wantState: Closed},
				{advance: 11 * time.Second, do: "fail", wantAllowed: true, wantState: Open},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := clock.NewManual(time.Hour)
			b, err := New(tt.cfg, clk)
			if err != nil {
				t.Fatal(err)
			}
			held, _ := b.Allow() // a request let through at the start, reported late
			for i, o := range tt.ops {
				clk.Advance(o.advance)
				for range max(o.n, 1) {
					var p Permit
					if o.do != "report-held-ok" {
						p, _ = b.Allow()
					}
					switch o.do {
					case "ok", "probe-ok":
						b.Report(p, true)
					case "fail", "probe-fail":
						b.Report(p, false)
					case "abandon":
						b.Abandon(p)
					case "report-held-ok":
						b.Report(held, true)
						p = held
					}
					if p.OK() != o.wantAllowed {
						t.Fatalf("op %d (%s): allowed = %v, want %v", i, o.do, p.OK(), o.wantAllowed)
					}
					if want := o.do == "probe-ok" || o.do == "probe-fail" || o.do == "abandon"; want && !p.Probe() {
						t.Fatalf("op %d (%s): permit is not the probe", i, o.do)
					}
				}
				if got := b.State(); got != o.wantState {
					t.Fatalf("op %d (%s): state = %s, want %s", i, o.do, got, o.wantState)
				}
			}
		})
	}
}

func TestBreakerRetryAfter(t *testing.T) {
	clk := clock.NewManual(time.Hour)
	b, err := New(Config{ErrorPercentThreshold: 1, SleepWindow: 3 * time.Second}, clk)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := b.Allow()
	b.Report(p, false)
	clk.Advance(time.Second)
	if p, retry := b.Allow(); p.OK() || retry != 2*time.Second {
		t.Fatalf("Allow() on open circuit = %v, %v; want refused, 2s", p.OK(), retry)
	}
}

func TestBreakerUpdate(t *testing.T) {
	tests := []struct {
		name      string
		to        Config
		wantState State
		wantTotal int64
	}{
		{name: "same window keeps state and counts", to: Config{ErrorPercentThreshold: 90, RequestVolumeThreshold: 4, SleepWindow: time.Second}, wantState: Open, wantTotal: 4},
		{name: "new window shape keeps state, drops counts", to: Config{ErrorPercentThreshold: 50, RequestVolumeThreshold: 4, SleepWindow: time.Second, Window: 20 * time.Second}, wantState: Open, wantTotal: 0},
		{name: "disabling closes", to: Config{}, wantState: Closed, wantTotal: 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := clock.NewManual(time.Hour)
			b, err := New(Config{ErrorPercentThreshold: 50, RequestVolumeThreshold: 4, SleepWindow: time.Second}, clk)
			if err != nil {
				t.Fatal(err)
			}
			for range 4 {
				p, _ := b.Allow()
				b.Report(p, false)
			}
			if err := b.Update(tt.to); err != nil {
				t.Fatal(err)
			}
			if got := b.State(); got != tt.wantState {
				t.Fatalf("state = %s, want %s", got, tt.wantState)
			}
			if total, _ := b.Counts(); total != tt.wantTotal {
				t.Fatalf("window total = %d, want %d", total, tt.wantTotal)
			}
		})
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{name: "threshold over 100", cfg: Config{ErrorPercentThreshold: 101, SleepWindow: time.Second}},
		{name: "negative volume", cfg: Config{ErrorPercentThreshold: 50, RequestVolumeThreshold: -1, SleepWindow: time.Second}},
		{name: "no sleep window", cfg: Config{ErrorPercentThreshold: 50}},
		{name: "window finer than a nanosecond per bucket", cfg: Config{Window: 5, Buckets: 10}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.cfg, nil); err == nil {
				t.Fatalf("New(%+v) succeeded, want an error", tt.cfg)
			}
		})
	}
}

// TestBreakerOneProbe races many callers at a circuit whose sleep window
// has passed: exactly one of them may probe.
func TestBreakerOneProbe(t *testing.T) {
	for round := range 50 {
		clk := clock.NewManual(time.Hour)
		b, err := New(Config{ErrorPercentThreshold: 50, RequestVolumeThreshold: 1, SleepWindow: time.Second}, clk)
		if err != nil {
			t.Fatal(err)
		}
		p, _ := b.Allow()
		b.Report(p, false)
		clk.Advance(time.Second)
		var probes, allowed atomic.Int64
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range 8 {
			wg.Go(func() {
				<-start
				for range 100 {
					if p, _ := b.Allow(); p.OK() {
						allowed.Add(1)
						if p.Probe() {
							probes.Add(1)
						}
					}
				}
			})
		}
		close(start)
		wg.Wait()
		if probes.Load() != 1 || allowed.Load() != 1 {
			t.Fatalf("round %d: %d requests allowed, %d probes; want exactly one probe", round, allowed.Load(), probes.Load())
		}
	}
}

// TestBreakerConcurrentReports checks that concurrent reports across
// bucket rotations lose nothing the window should hold.
func TestBreakerConcurrentReports(t *testing.T) {
	clk := clock.NewManual(time.Hour)
	b, err := New(Config{ErrorPercentThreshold: 100, RequestVolumeThreshold: 1 << 30, SleepWindow: time.Second}, clk)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 1000 {
				p, _ := b.Allow()
				b.Report(p, (i+g)%3 != 0)
			}
		})
	}
	wg.Wait()
	total, failed := b.Counts()
	if total != 4000 {
		t.Fatalf("window holds %d requests, want 4000", total)
	}
	if failed < 1300 || failed > 1400 {
		t.Fatalf("window holds %d failures, want about a third of 4000", failed)
	}
}
