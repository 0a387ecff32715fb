package breaker

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/afex/hystrix-go/hystrix"
)

var circuits atomic.Int64

// hystrixCircuit configures a fresh hystrix-go circuit under a name unique
// to the test (hystrix-go keeps circuits in package state, forever).
func hystrixCircuit(t testing.TB, cfg Config) *hystrix.CircuitBreaker {
	t.Helper()
	name := fmt.Sprintf("mesh-test-%s-%d", t.Name(), circuits.Add(1))
	hystrix.ConfigureCommand(name, hystrix.CommandConfig{
		Timeout:                int(time.Minute / time.Millisecond),
		MaxConcurrentRequests:  1 << 20,
		RequestVolumeThreshold: cfg.RequestVolumeThreshold,
		SleepWindow:            int(cfg.SleepWindow / time.Millisecond),
		ErrorPercentThreshold:  cfg.ErrorPercentThreshold,
	})
	c, _, err := hystrix.GetCircuit(name)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// eventually polls cond for up to five seconds: hystrix-go counts
// outcomes on a goroutine of its own, so its circuit lags behind
// ReportEvent (by milliseconds, more under the race detector).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		if cond() {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("hystrix-go: %s did not happen within 5s", what)
}

// TestMatchesHystrix drives hystrix-go's circuit and Breaker through the
// same script on the real clock and checks that they decide alike, and
// that they differ only where this package means to.
func TestMatchesHystrix(t *testing.T) {
	cfg := Config{ErrorPercentThreshold: 50, RequestVolumeThreshold: 10, SleepWindow: 5 * time.Millisecond}
	hc := hystrixCircuit(t, cfg)
	b, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	success, failure := []string{"success"}, []string{"failure"}

	// 4 successes and 5 failures: under the volume threshold, both closed.
	for i := range 9 {
		events, ok := success, true
		if i%2 == 1 || i == 8 {
			events, ok = failure, false
		}
		if !hc.AllowRequest() {
			t.Fatalf("hystrix-go refused request %d", i)
		}
		if err := hc.ReportEvent(events, time.Now(), 0); err != nil {
			t.Fatal(err)
		}
		p, _ := b.Allow()
		b.Report(p, ok)
	}
	// A late success from a request let through earlier.
	held, _ := b.Allow()
	if b.State() != Closed {
		t.Fatalf("Breaker is %s under the volume threshold, want closed", b.State())
	}

	// The 10th request, a success: 10 requests at 50% errors opens both.
	if err := hc.ReportEvent(success, time.Now(), 0); err != nil {
		t.Fatal(err)
	}
	eventually(t, "opening at 5 of 10 failed", func() bool { return !hc.AllowRequest() })
	// Breaker decides on failures; at the same counts the next failure trips it
	// (hystrix-go decides on the next AllowRequest instead).
	p, _ := b.Allow()
	b.Report(p, true)
	if b.State() != Closed {
		t.Fatal("Breaker opened on a success")
	}
	p, _ = b.Allow()
	b.Report(p, false)
	if b.State() != Open {
		t.Fatalf("Breaker is %s at 6 of 11 failed, want open", b.State())
	}

	// After the sleep window both let exactly one probe through.
	time.Sleep(cfg.SleepWindow + time.Millisecond)
	if !hc.AllowRequest() || hc.AllowRequest() {
		t.Fatal("hystrix-go did not let exactly one probe through")
	}
	probe, _ := b.Allow()
	if second, _ := b.Allow(); !probe.Probe() || second.OK() {
		t.Fatal("Breaker did not let exactly one probe through")
	}

	// Where they differ on purpose: in hystrix-go any success closes an
	// open circuit, even one from a request let through before it opened;
	// here only the probe's outcome does.
	b.Report(held, true)
	if b.State() != HalfOpen {
		t.Fatalf("a late success moved Breaker to %s, want it still half-open", b.State())
	}

	// The probe succeeds: both close.
	if err := hc.ReportEvent(success, time.Now(), 0); err != nil {
		t.Fatal(err)
	}
	b.Report(probe, true)
	if hc.IsOpen() || b.State() != Closed {
		t.Fatalf("after a successful probe: hystrix-go open = %v, Breaker %s; want both closed", hc.IsOpen(), b.State())
	}
}
