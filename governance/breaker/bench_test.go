package breaker

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/afex/hystrix-go/hystrix"
)

var benchCfg = Config{ErrorPercentThreshold: 50, RequestVolumeThreshold: 20, SleepWindow: 5 * time.Second}

// One request through a closed breaker: Allow, then Report the outcome.
func BenchmarkBreakerAllowReport(b *testing.B) {
	br, _ := New(benchCfg, nil)
	b.ReportAllocs()
	for b.Loop() {
		p, _ := br.Allow()
		br.Report(p, true)
	}
}

// The same with 10% failures (each failure sums the window).
func BenchmarkBreakerAllowReportFailing10(b *testing.B) {
	br, _ := New(Config{ErrorPercentThreshold: 50, RequestVolumeThreshold: 20, SleepWindow: 5 * time.Second}, nil)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		p, _ := br.Allow()
		br.Report(p, i%10 != 0)
		i++
	}
}

func BenchmarkBreakerAllowReportParallel(b *testing.B) {
	br, _ := New(benchCfg, nil)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			p, _ := br.Allow()
			br.Report(p, true)
		}
	})
}

// A request refused by an open breaker.
func BenchmarkBreakerAllowOpen(b *testing.B) {
	br, _ := New(Config{ErrorPercentThreshold: 1, SleepWindow: time.Hour}, nil)
	p, _ := br.Allow()
	br.Report(p, false)
	b.ReportAllocs()
	for b.Loop() {
		br.Allow()
	}
}

// Envoy's concurrency thresholds: one request in and out.
func BenchmarkLimitAcquireRelease(b *testing.B) {
	l := NewLimit(1024)
	b.ReportAllocs()
	for b.Loop() {
		if l.Acquire() {
			l.Release()
		}
	}
}

func BenchmarkLimitAcquireReleaseParallel(b *testing.B) {
	l := NewLimit(1024)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if l.Acquire() {
				l.Release()
			}
		}
	})
}

// hystrix-go for comparison, configured so that neither its timeout nor its
// concurrency limit interferes.
func hystrixName(b *testing.B) string {
	name := fmt.Sprintf("mesh-bench-%s-%d", b.Name(), circuits.Add(1))
	hystrix.ConfigureCommand(name, hystrix.CommandConfig{
		Timeout: 60_000, MaxConcurrentRequests: 1 << 20,
		RequestVolumeThreshold: 20, SleepWindow: 5000, ErrorPercentThreshold: 50,
	})
	return name
}

func BenchmarkHystrixDo(b *testing.B) {
	name := hystrixName(b)
	run := func() error { return nil }
	b.ReportAllocs()
	for b.Loop() {
		_ = hystrix.Do(name, run, nil)
	}
}

func BenchmarkHystrixGo(b *testing.B) {
	name := hystrixName(b)
	done := make(chan struct{}, 1)
	run := func() error { done <- struct{}{}; return nil }
	b.ReportAllocs()
	for b.Loop() {
		errs := hystrix.Go(name, run, nil)
		select {
		case <-done:
		case err := <-errs:
			b.Fatal(err)
		}
	}
}

// hystrix-go's circuit driven directly, as a proxy would: AllowRequest
// before, ReportEvent after. ReportEvent hands the outcome to a goroutine
// through a 2000-slot channel and drops it when the channel is full;
// "dropped/op" is the share of outcomes the circuit never counted.
func BenchmarkHystrixCircuitDirect(b *testing.B) {
	c, _, _ := hystrix.GetCircuit(hystrixName(b))
	success := []string{"success"}
	var dropped int
	b.ReportAllocs()
	for b.Loop() {
		if c.AllowRequest() {
			if err := c.ReportEvent(success, time.Now(), 0); err != nil {
				var ce hystrix.CircuitError
				if !errors.As(err, &ce) {
					b.Fatal(err)
				}
				dropped++
			}
		}
	}
	b.ReportMetric(float64(dropped)/float64(b.N), "dropped/op")
}

func BenchmarkHystrixCircuitDirectParallel(b *testing.B) {
	c, _, _ := hystrix.GetCircuit(hystrixName(b))
	success := []string{"success"}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if c.AllowRequest() {
				_ = c.ReportEvent(success, time.Now(), 0)
			}
		}
	})
}
