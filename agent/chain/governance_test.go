package chain_test

import (
	"net/http"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/meshvm/mesh/agent/chain"
	"github.com/meshvm/mesh/agent/proxy"
	"github.com/meshvm/mesh/agent/table"
	"github.com/meshvm/mesh/config"
)

// Burst: B allows 200 requests per second with a bucket of 20 (Envoy:
// max_tokens 20, tokens_per_fill 1, fill_interval 5ms). 2,000 requests
// sent as fast as possible from 50 connections to B's agent: B's app sees
// at most 200 × seconds + 20, everyone else gets a 429 with Retry-After
// and x-mesh-reason at once.
func TestBurst(t *testing.T) {
	const (
		rate   = 200
		bucket = 20
	)
	b := startCallee(t, hostB1, "b1", "", table.Inbound{RateLimit: config.RateLimit{
		MaxTokens: bucket, TokensPerFill: 1, FillInterval: time.Second / rate,
	}})
	c := client(b.inbound, 50)
	// Open the 50 connections first, then let the bucket fill up again.
	load(c, "http://b/", 50, 50)
	time.Sleep(bucket * time.Second / rate * 2)
	b.app.served.Store(0)
	b.mu.Lock()
	b.refusals = nil
	b.mu.Unlock()

	start := time.Now()
	rs := load(c, "http://b/", 2000, 50)
	elapsed := time.Since(start)

	served := b.app.served.Load()
	limit := int64(rate*elapsed.Seconds()) + bucket + 1
	t.Logf("2000 requests in %v: %v; app served %d (limit %d)", elapsed, tally(rs), served, limit)
	if served > limit {
		t.Errorf("app served %d requests in %v, more than %d", served, elapsed, limit)
	}
	var ok int64
	var refused []time.Duration
	for _, r := range rs {
		switch {
		case r.err != nil:
			t.Fatalf("request failed: %v", r.err)
		case r.status == http.StatusOK:
			ok++
		case r.status == http.StatusTooManyRequests:
			if r.reason != proxy.ReasonRateLimited || r.retryAfter == "" {
				t.Fatalf("429 with x-mesh-reason %q, Retry-After %q", r.reason, r.retryAfter)
			}
			refused = append(refused, r.took)
		default:
			t.Fatalf("status %d reason %q", r.status, r.reason)
		}
	}
	if ok != served {
		t.Errorf("%d callers got 200 but the app served %d", ok, served)
	}
	if len(refused) < 2000-int(limit) {
		t.Errorf("only %d refused", len(refused))
	}
	// The agent never holds a refused request: each 429 is written within
	// microseconds of its arrival. Callers see more: the time their 50
	// connections wait for the machine's shared cores (not asserted: it
	// measures the machine, not the mesh).
	b.mu.Lock()
	agent := append([]time.Duration(nil), b.refusals...)
	b.mu.Unlock()
	if len(agent) != len(refused) {
		t.Errorf("the agent refused %d requests, callers saw %d refusals", len(agent), len(refused))
	}
	if worst := percentile(agent, 1); worst > 50*time.Millisecond {
		t.Errorf("the agent took %v to refuse a request, want at most 50ms", worst)
	}
	t.Logf("refusals in the agent: p50 %v, max %v; at the callers: p50 %v, p99 %v, max %v",
		percentile(agent, 0.5), percentile(agent, 1), percentile(refused, 0.5), percentile(refused, 0.99), percentile(refused, 1))
}

// Avalanche: B's app starts taking 2 s. A's callers time out at 300 ms;
// once the volume threshold is reached the breaker opens and callers get
// fast 503s while A's goroutines and memory stay bounded; B recovers and
// the breaker closes after the sleep window.
func TestAvalanche(t *testing.T) {
	b := startCallee(t, hostB1, "b1", "", table.Inbound{})
	p := bare()
	p.Timeout = 300 * time.Millisecond
	p.CircuitBreaker = config.CircuitBreaker{
		MaxRequests: 1024, MaxPendingRequests: 1024,
		ErrorPercentThreshold: 50, RequestVolumeThreshold: 20, SleepWindow: time.Second,
	}
	a := startCaller(t, static("1", p, b), chain.Local{Service: "a"})
	c := client(a.outbound, 10)
	if r := get(c, "http://b/"); r.status != http.StatusOK {
		t.Fatalf("before the avalanche: %+v", r)
	}

	b.app.delay.Store(int64(2 * time.Second))
	b.app.mode.Store("slow")
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	baseG := runtime.NumGoroutine()

	// Callers keep coming at 1,000 requests per second for 1.5 s, whether
	// or not earlier ones were answered, as an app's users do.
	type sent struct {
		at time.Time
		r  result
	}
	var mu sync.Mutex
	var all []sent
	var maxOpenG int64 // goroutines once the breaker is open
	start := time.Now()
	sampling := make(chan struct{})
	go func() {
		defer close(sampling)
		for time.Since(start) < 1500*time.Millisecond {
			time.Sleep(10 * time.Millisecond)
			if time.Since(start) > 600*time.Millisecond {
				maxOpenG = max(maxOpenG, int64(runtime.NumGoroutine()))
			}
		}
	}()
	oc := client(a.outbound, 0)
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Millisecond)
	for time.Since(start) < 1500*time.Millisecond {
		<-tick.C
		wg.Add(1)
		go func() {
			defer wg.Done()
			at := time.Now()
			r := get(oc, "http://b/")
			mu.Lock()
			all = append(all, sent{at, r})
			mu.Unlock()
		}()
	}
	tick.Stop()
	wg.Wait()
	<-sampling
	oc.CloseIdleConnections()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)

	var firstOpen time.Time
	var open []time.Duration
	counts := map[string]int{}
	for _, s := range all {
		counts[key(s.r)]++
		if s.r.reason == proxy.ReasonCircuitOpen {
			open = append(open, s.r.took)
			if firstOpen.IsZero() || s.at.Before(firstOpen) {
				firstOpen = s.at
			}
		}
	}
	t.Logf("during the avalanche: %v; goroutines %d before, at most %d with the breaker open; heap in use %d KB -> %d KB",
		counts, baseG, maxOpenG, before.HeapInuse>>10, after.HeapInuse>>10)
	if firstOpen.IsZero() {
		t.Fatal("the breaker never opened")
	}
	// Once open, only the probe of each sleep window reaches B.
	late := 0
	for _, s := range all {
		if s.r.status != http.StatusServiceUnavailable && s.at.After(firstOpen) {
			late++
		}
	}
	if late > 2 {
		t.Errorf("%d requests reached B after the breaker opened; want only the probes", late)
	}
	if p99 := percentile(open, 0.99); p99 > 5*time.Millisecond {
		t.Errorf("circuit-open p99 %v (p50 %v), want under 5ms", p99, percentile(open, 0.5))
	} else {
		t.Logf("circuit-open: %d refusals, p50 %v, p99 %v", len(open), percentile(open, 0.5), p99)
	}
	// Callers that are refused at once hold nothing: a handful of
	// requests in flight, not hundreds waiting on B.
	if maxOpenG > int64(baseG)+100 {
		t.Errorf("goroutines: %d before, up to %d with the breaker open", baseG, maxOpenG)
	}
	if grew := int64(after.HeapInuse) - int64(before.HeapInuse); grew > 32<<20 {
		t.Errorf("heap in use grew by %d MB", grew>>20)
	}

	// B recovers: after the sleep window a probe closes the breaker.
	b.app.mode.Store("ok")
	recovered := time.Now()
	eventually(t, 5*time.Second, "traffic flows again after B recovered", func() bool {
		return get(c, "http://b/").status == http.StatusOK
	})
	t.Logf("breaker closed %v after B recovered", time.Since(recovered))
	rs := load(c, "http://b/", 200, 10)
	if got := tally(rs); got["200"] != 200 {
		t.Errorf("after recovery: %v", got)
	}
	if st := a.st.Status()["b"].Breaker; st != "closed" {
		t.Errorf("breaker %s after recovery", st)
	}
}
