package outlier

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/meshvm/mesh/governance/clock"
)

func TestClassify(t *testing.T) {
	tests := []struct {
		name   string
		status int
		failed bool
		want   Outcome
	}{
		{name: "200", status: 200, want: Success},
		{name: "404 is the app's answer, not ill health", status: 404, want: Success},
		{name: "429", status: 429, want: Success},
		{name: "500", status: 500, want: ServerError},
		{name: "501", status: 501, want: ServerError},
		{name: "502", status: 502, want: GatewayError},
		{name: "503", status: 503, want: GatewayError},
		{name: "504", status: 504, want: GatewayError},
		{name: "connect failure", failed: true, want: LocalFailure},
		{name: "failure wins over a status", status: 200, failed: true, want: LocalFailure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Classify(tt.status, tt.failed); got != tt.want {
				t.Fatalf("Classify(%d, %v) = %d, want %d", tt.status, tt.failed, got, tt.want)
			}
		})
	}
}

func TestEjection(t *testing.T) {
	tests := []struct {
		name        string
		cfg         Config
		outcomes    []Outcome
		wantEjected bool
	}{
		{name: "consecutive 5xx of any kind eject", cfg: Config{Consecutive5xx: 3, MaxEjectionPercent: 100},
			outcomes: []Outcome{ServerError, GatewayError, ServerError}, wantEjected: true},
		{name: "a success in between starts the count again", cfg: Config{Consecutive5xx: 3, MaxEjectionPercent: 100},
			outcomes: []Outcome{ServerError, ServerError, Success, ServerError, ServerError}, wantEjected: false},
		{name: "consecutive gateway failures eject", cfg: Config{ConsecutiveGatewayFailure: 3, MaxEjectionPercent: 100},
			outcomes: []Outcome{GatewayError, LocalFailure, GatewayError}, wantEjected: true},
		{name: "a 500 breaks a run of gateway failures", cfg: Config{ConsecutiveGatewayFailure: 3, MaxEjectionPercent: 100},
			outcomes: []Outcome{GatewayError, ServerError, LocalFailure, GatewayError}, wantEjected: false},
		{name: "connect failures count as 5xx", cfg: Config{Consecutive5xx: 2, MaxEjectionPercent: 100},
			outcomes: []Outcome{LocalFailure, LocalFailure}, wantEjected: true},
		{name: "zero thresholds disable detection", cfg: Config{MaxEjectionPercent: 100},
			outcomes: []Outcome{LocalFailure, LocalFailure, LocalFailure, LocalFailure}, wantEjected: false},
		{name: "zero max ejection percent never ejects", cfg: Config{Consecutive5xx: 1, MaxEjectionPercent: 0},
			outcomes: []Outcome{ServerError, ServerError}, wantEjected: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := New(tt.cfg, clock.NewManual(time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			hosts := []*Host{{}, {}, {}}
			d.SetHosts(hosts)
			v := d.HealthVersion()
			var ejectedBy int
			for i, o := range tt.outcomes {
				if d.Report(hosts[0], o) {
					ejectedBy = i + 1
				}
			}
			if got := hosts[0].Ejected(); got != tt.wantEjected {
				t.Fatalf("ejected = %v, want %v", got, tt.wantEjected)
			}
			if tt.wantEjected && ejectedBy != len(tt.outcomes) {
				t.Fatalf("ejected by outcome %d, want the last (%d)", ejectedBy, len(tt.outcomes))
			}
			if changed := d.HealthVersion() != v; changed != tt.wantEjected {
				t.Fatalf("health version changed = %v, want %v", changed, tt.wantEjected)
			}
			if hosts[1].Ejected() || hosts[2].Ejected() {
				t.Fatal("a host that had no failures was ejected")
			}
		})
	}
}

func TestMaxEjectionPercent(t *testing.T) {
	tests := []struct {
		name        string
		hosts       int
		maxPercent  int
		wantEjected int
	}{
		{name: "half of four", hosts: 4, maxPercent: 50, wantEjected: 2},
		{name: "one may always go", hosts: 3, maxPercent: 10, wantEjected: 1},
		{name: "all of them at 100", hosts: 3, maxPercent: 100, wantEjected: 3},
		{name: "one of one at 50", hosts: 1, maxPercent: 50, wantEjected: 1},
		{name: "two of ten at 11", hosts: 10, maxPercent: 11, wantEjected: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := New(Config{Consecutive5xx: 1, MaxEjectionPercent: tt.maxPercent}, clock.NewManual(time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			hosts := make([]*Host, tt.hosts)
			for i := range hosts {
				hosts[i] = &Host{}
			}
			d.SetHosts(hosts)
			for _, h := range hosts {
				d.Report(h, ServerError)
			}
			if got := d.Ejected(); got != tt.wantEjected {
				t.Fatalf("%d of %d ejected, want %d", got, tt.hosts, tt.wantEjected)
			}
		})
	}
}

func TestEjectionTime(t *testing.T) {
	cfg := Config{Consecutive5xx: 1, MaxEjectionPercent: 100, Interval: time.Second,
		BaseEjectionTime: 10 * time.Second, MaxEjectionTime: 25 * time.Second}
	clk := clock.NewManual(time.Hour)
	d, err := New(cfg, clk)
	if err != nil {
		t.Fatal(err)
	}
	h := &Host{}
	d.SetHosts([]*Host{h, {}})
	// ejectFor ejects h now and returns how long it stayed out, sweeping
	// every 100ms.
	ejectFor := func() time.Duration {
		t.Helper()
		if !d.Report(h, ServerError) {
			t.Fatal("host was not ejected")
		}
		start := clk.Nanotime()
		for range 1000 {
			clk.Advance(100 * time.Millisecond)
			if d.Sweep(clk.Nanotime()) > 0 {
				return time.Duration(clk.Nanotime() - start)
			}
		}
		t.Fatal("host never returned")
		return 0
	}
	steps := []struct {
		name string
		rest time.Duration // healthy time before the ejection
		want time.Duration
		mult int64
	}{
		{name: "first ejection lasts the base time", want: 10 * time.Second, mult: 1},
		{name: "ejected again at once: twice the base", want: 20 * time.Second, mult: 2},
		{name: "third time capped at max_ejection_time", want: 25 * time.Second, mult: 3},
		{name: "two healthy intervals forgive two ejections", rest: 2500 * time.Millisecond, want: 20 * time.Second, mult: 2},
		{name: "a long healthy spell forgives everything", rest: time.Hour, want: 10 * time.Second, mult: 1},
	}
	for _, s := range steps {
		clk.Advance(s.rest)
		if got := ejectFor(); got != s.want {
			t.Fatalf("%s: ejected for %s, want %s", s.name, got, s.want)
		}
		if got := d.Multiplier(h); got != s.mult {
			t.Fatalf("%s: multiplier %d, want %d", s.name, got, s.mult)
		}
	}
}

func TestReturnedHostNeedsAFreshRun(t *testing.T) {
	clk := clock.NewManual(time.Hour)
	d, _ := New(Config{Consecutive5xx: 2, MaxEjectionPercent: 100, BaseEjectionTime: time.Second}, clk)
	h := &Host{}
	d.SetHosts([]*Host{h})
	d.Report(h, ServerError)
	d.Report(h, ServerError)
	clk.Advance(time.Second)
	if d.Sweep(clk.Nanotime()) != 1 || h.Ejected() {
		t.Fatal("host not returned after its ejection time")
	}
	if d.Report(h, ServerError) {
		t.Fatal("one failure after return ejected the host again")
	}
}

func TestSetHostsReturnsRemovedHosts(t *testing.T) {
	d, _ := New(Config{Consecutive5xx: 1, MaxEjectionPercent: 100}, clock.NewManual(time.Hour))
	a, b := &Host{}, &Host{}
	d.SetHosts([]*Host{a, b})
	d.Report(a, ServerError)
	d.Report(b, ServerError)
	if d.Ejected() != 2 {
		t.Fatal("want both ejected")
	}
	d.SetHosts([]*Host{b, {}})
	if a.Ejected() || !b.Ejected() || d.Ejected() != 1 {
		t.Fatalf("after push: a ejected %v, b ejected %v, count %d; want false, true, 1", a.Ejected(), b.Ejected(), d.Ejected())
	}
}

func TestRunReturnsHostsOnTheSystemClock(t *testing.T) {
	d, err := New(Config{Consecutive5xx: 1, MaxEjectionPercent: 100, Interval: time.Millisecond, BaseEjectionTime: 2 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := &Host{}
	d.SetHosts([]*Host{h})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { d.Run(ctx) })
	defer func() { cancel(); wg.Wait() }()
	if !d.Report(h, LocalFailure) {
		t.Fatal("not ejected")
	}
	for deadline := time.Now().Add(5 * time.Second); h.Ejected() && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if h.Ejected() {
		t.Fatal("Run did not return the host within 5s")
	}
}

func TestConcurrentReports(t *testing.T) {
	d, _ := New(Config{Consecutive5xx: 5, ConsecutiveGatewayFailure: 3, MaxEjectionPercent: 30}, nil)
	hosts := make([]*Host, 10)
	for i := range hosts {
		hosts[i] = &Host{}
	}
	d.SetHosts(hosts)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 5000 {
				h := hosts[(i+g)%len(hosts)]
				o := Success
				if (i+g)%len(hosts) < 5 {
					o = GatewayError
				}
				d.Report(h, o)
			}
		})
	}
	wg.Wait()
	if n := d.Ejected(); n != 3 {
		t.Fatalf("%d ejected, want 3 (30%% of 10, only failing hosts)", n)
	}
	for i := 5; i < 10; i++ {
		if hosts[i].Ejected() {
			t.Fatalf("healthy host %d ejected", i)
		}
	}
}
