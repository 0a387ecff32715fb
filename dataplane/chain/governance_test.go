package chain_test

import (
	"io"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/dataplane/chain"
	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/dataplane/proxy"
	"github.com/meshvm/mesh/dataplane/table"
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
	// p99, not the maximum: one refusal descheduled on a loaded machine
	// measures the machine; a bucket that paces (sleeps) shows in the p99.
	if p99 := percentile(agent, 0.99); p99 > 50*time.Millisecond {
		t.Errorf("the agent took %v (p99) to refuse a request, want at most 50ms", p99)
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
			if time.Since(start) > 900*time.Millisecond {
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
	// The agent answers an open circuit at once: p99 under 5 ms inside
	// the agent. Callers also wait for this shared machine's two cores
	// (1,000 new goroutines a second here), so their figure is bounded
	// loosely: it catches a refusal that queues, not scheduler noise.
	a.mu.Lock()
	inAgent := append([]time.Duration(nil), a.openRefusal...)
	a.mu.Unlock()
	if p99 := percentile(inAgent, 0.99); p99 > 5*time.Millisecond {
		t.Errorf("circuit-open p99 in the agent %v (p50 %v), want under 5ms", p99, percentile(inAgent, 0.5))
	}
	// A refusal that queued behind B would take the 300 ms timeout; the
	// bound is well under it and well over a loaded machine's scheduling.
	if p99 := percentile(open, 0.99); p99 > 200*time.Millisecond {
		t.Errorf("circuit-open p99 at the callers %v (p50 %v), want under 200ms (the timeout is 300ms)", p99, percentile(open, 0.5))
	}
	t.Logf("circuit-open: %d refusals; in the agent p50 %v, p99 %v; at the callers p50 %v, p99 %v",
		len(open), percentile(inAgent, 0.5), percentile(inAgent, 0.99), percentile(open, 0.5), percentile(open, 0.99))
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

// Outlier: of B's 3 endpoints some always answer 500; outlier detection
// ejects them (never more than max_ejection_percent) and the rest of the
// traffic succeeds.
func TestOutlier(t *testing.T) {
	tests := []struct {
		name        string
		bad         int // how many of the 3 endpoints fail
		maxPercent  int
		wantEjected int
		minSuccess  float64 // share of 200s once ejected
	}{
		{name: "one bad endpoint is ejected", bad: 1, maxPercent: 50, wantEjected: 1, minSuccess: 0.999},
		{name: "max ejection percent keeps the second bad one", bad: 2, maxPercent: 33, wantEjected: 1, minSuccess: 0.45},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bs := []*callee{
				startCallee(t, hostB1, "b1", "", table.Inbound{}),
				startCallee(t, hostB2, "b2", "", table.Inbound{}),
				startCallee(t, hostB3, "b3", "", table.Inbound{}),
			}
			for _, b := range bs[:tc.bad] {
				b.app.mode.Store("500")
			}
			p := bare()
			p.OutlierDetection = config.OutlierDetection{
				Consecutive5xx: 5, Interval: time.Second, BaseEjectionTime: time.Minute, MaxEjectionPercent: tc.maxPercent,
			}
			a := startCaller(t, static("1", p, bs...), chain.Local{Service: "a"})
			c := client(a.outbound, 10)
			eventually(t, 5*time.Second, "bad endpoints ejected", func() bool {
				load(c, "http://b/", 30, 3)
				return len(a.st.Status()["b"].Ejected) >= tc.wantEjected
			})
			rs := load(c, "http://b/", 2000, 10)
			got := tally(rs)
			if ej := a.st.Status()["b"].Ejected; len(ej) != tc.wantEjected {
				t.Errorf("ejected %v, want %d endpoints", ej, tc.wantEjected)
			}
			if share := float64(got["200"]) / float64(len(rs)); share < tc.minSuccess {
				t.Errorf("after ejection: %v, success %.4f, want at least %.4f", got, share, tc.minSuccess)
			} else {
				t.Logf("after ejection: %v", got)
			}
		})
	}
}

// Retries: a try that fails (connection refused, 503) is retried on
// another endpoint, bodies included; under overload the retry budget
// keeps retries from multiplying the load.
func TestRetries(t *testing.T) {
	t.Run("connection refused and 503 are retried elsewhere", func(t *testing.T) {
		good := startCallee(t, hostB1, "good", "", table.Inbound{})
		flaky := startCallee(t, hostB2, "flaky", "", table.Inbound{})
		flaky.app.mode.Store("503")
		p := bare()
		p.Retries = config.Retries{Attempts: 2, RetryOn: []string{"connect-failure", "gateway-error"}, BudgetPercent: 100, MinRetryConcurrency: 10}
		tbl := static("1", p, good, flaky)
		tbl.Services["b"].Endpoints = append(tbl.Services["b"].Endpoints, endpoint.Endpoint{Addr: deadAddr})
		a := startCaller(t, tbl, chain.Local{Service: "a"})
		c := client(a.outbound, 4)
		for i := range 30 {
			var body io.Reader
			method := http.MethodGet
			if i%2 == 1 {
				method, body = http.MethodPost, strings.NewReader(strings.Repeat("x", 1000))
			}
			req, _ := http.NewRequest(method, "http://b/", body)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || string(got) != "good" {
				t.Fatalf("%s %d: %d %q from %s, want 200 from good", method, i, resp.StatusCode, got, resp.Header.Get("X-Mesh-Reason"))
			}
		}
		if flaky.app.served.Load() == 0 {
			t.Error("the flaky endpoint was never tried")
		}
	})

	t.Run("budget caps retries under overload", func(t *testing.T) {
		// Every endpoint is overloaded and answers 503 after 20ms. With 3
		// retries per request and no budget, B would see 4 tries per
		// request; a 10% budget lets few through.
		for _, tc := range []struct {
			name     string
			percent  float64
			min      int
			maxRatio float64
			minRatio float64
		}{
			{name: "budget 10%", percent: 10, min: 1, minRatio: 1, maxRatio: 1.3},
			{name: "budget 100%", percent: 100, min: 100, minRatio: 3.5, maxRatio: 4},
		} {
			t.Run(tc.name, func(t *testing.T) {
				bs := []*callee{startCallee(t, hostB1, "b1", "", table.Inbound{}), startCallee(t, hostB2, "b2", "", table.Inbound{})}
				for _, b := range bs {
					b.app.delay.Store(int64(20 * time.Millisecond))
					b.app.mode.Store("503-slow")
				}
				p := bare()
				p.Retries = config.Retries{Attempts: 3, RetryOn: []string{"5xx"}, BudgetPercent: tc.percent, MinRetryConcurrency: tc.min}
				a := startCaller(t, static("1", p, bs...), chain.Local{Service: "a"})
				rs := load(client(a.outbound, 40), "http://b/", 400, 40)
				tries := bs[0].app.served.Load() + bs[1].app.served.Load()
				ratio := float64(tries) / float64(len(rs))
				t.Logf("%d requests: %v; B saw %d tries (%.2f per request)", len(rs), tally(rs), tries, ratio)
				if ratio < tc.minRatio || ratio > tc.maxRatio {
					t.Errorf("%.2f tries per request, want %.2f to %.2f", ratio, tc.minRatio, tc.maxRatio)
				}
				if got := tally(rs)["503"]; got != len(rs) {
					t.Errorf("callers got %v, want B's 503 every time", tally(rs))
				}
			})
		}
	})
}

// A table swap under load loses no request, and keeps the token bucket
// and the breaker's state.
func TestSwapUnderLoad(t *testing.T) {
	const tokens = 300
	in := table.Inbound{RateLimit: config.RateLimit{MaxTokens: tokens, TokensPerFill: 1, FillInterval: time.Hour}}
	b1 := startCallee(t, hostB1, "b1", "", in)
	b2 := startCallee(t, hostB2, "b2", "", table.Inbound{})
	broken := startCallee(t, hostB3, "broken", "", table.Inbound{})
	broken.app.mode.Store("500")

	p := bare()
	p.CircuitBreaker = config.CircuitBreaker{ErrorPercentThreshold: 50, RequestVolumeThreshold: 5, SleepWindow: time.Hour}
	tables := func(v string, order ...*callee) *table.Table {
		tbl := static(v, p, order...)
		tbl.Services["broken"] = &table.Service{Name: "broken", Policy: p, Endpoints: []endpoint.Endpoint{{Addr: broken.inbound}}}
		return tbl
	}
	a := startCaller(t, tables("0", b1, b2), chain.Local{Service: "a"})
	c := client(a.outbound, 8)
	for range 10 {
		get(c, "http://broken/")
	}
	if st := a.st.Status()["broken"].Breaker; st != "open" {
		t.Fatalf("breaker of broken is %s, want open", st)
	}

	// Swap A's table (endpoints in either order) and B1's (the same
	// bucket) as fast as possible while 1,000 requests flow.
	stop := make(chan struct{})
	swapped := make(chan int)
	go func() {
		n := 0
		defer func() { swapped <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			n++
			v := strconv.Itoa(n)
			if n%2 == 0 {
				a.push(t, tables(v, b1, b2))
			} else {
				a.push(t, tables(v, b2, b1))
			}
			h, err := chain.Compile(&table.Table{Version: v, Static: true, Inbound: in}, nil, chain.Local{Service: "b"}, proxy.NewForwarder(proxy.Options{}), b1.st, zerolog.Nop())
			if err != nil {
				t.Error(err)
				return
			}
			b1.sw.Swap(h)
			time.Sleep(100 * time.Microsecond)
		}
	}()
	rs := load(c, "http://b/", 1000, 8)
	close(stop)
	n := <-swapped

	got := tally(rs)
	t.Logf("%d swaps during 1000 requests: %v", n, got)
	if n < 20 {
		t.Errorf("only %d swaps", n)
	}
	// B1's bucket admits exactly 300 requests across every swap; B2 has
	// no limit; nothing else happens to any request.
	if n := b1.app.served.Load(); n != tokens {
		t.Errorf("b1's app served %d requests, want its bucket's %d", n, tokens)
	}
	if got["200"] != tokens+int(b2.app.served.Load()) || got["200"]+got["429 rate-limited"] != len(rs) {
		t.Errorf("answers %v: want %d 200s from b1 and b2, 429s for the rest", got, tokens+int(b2.app.served.Load()))
	}
	if st := a.st.Status()["broken"].Breaker; st != "open" {
		t.Errorf("breaker of broken is %s after the swaps, want open", st)
	}
	if r := get(c, "http://broken/"); r.reason != proxy.ReasonCircuitOpen {
		t.Errorf("broken answered %d %q after the swaps, want circuit-open", r.status, r.reason)
	}
}

// Zone: the agent is in zone a; B has endpoints in zones a and b. Traffic
// stays in a, and moves to b when a's endpoints are gone or ejected.
func TestZone(t *testing.T) {
	a1 := startCallee(t, hostB1, "a1", "a", table.Inbound{})
	a2 := startCallee(t, hostB2, "a2", "a", table.Inbound{})
	b1 := startCallee(t, hostB3, "b1", "b", table.Inbound{})
	p := bare()
	p.LoadBalancer = config.LoadBalancer{Policy: "round_robin", LocalityAware: true}
	p.OutlierDetection = config.OutlierDetection{Consecutive5xx: 3, Interval: time.Second, BaseEjectionTime: time.Minute, MaxEjectionPercent: 100}
	a := startCaller(t, static("1", p, a1, a2, b1), chain.Local{Service: "a", Zone: "a"})
	c := client(a.outbound, 4)

	served := func(n int) map[string]int {
		t.Helper()
		m := map[string]int{}
		for _, r := range load(c, "http://b/", n, 4) {
			m[r.from]++
		}
		return m
	}
	if got := served(100); got["a1"]+got["a2"] != 100 {
		t.Errorf("zone a healthy: served by %v, want a1 and a2 only", got)
	}

	// Zone a's endpoints go away (critical in Consul, removed by the
	// control plane): traffic moves to b.
	a.push(t, static("2", p, b1))
	if got := served(50); got["b1"] != 50 {
		t.Errorf("zone a gone: served by %v, want b1 only", got)
	}

	// They come back, then fail: outlier detection ejects them and
	// traffic moves to b again.
	a.push(t, static("3", p, a1, a2, b1))
	if got := served(50); got["a1"]+got["a2"] != 50 {
		t.Errorf("zone a back: served by %v, want a1 and a2 only", got)
	}
	a1.app.mode.Store("500")
	a2.app.mode.Store("500")
	eventually(t, 5*time.Second, "zone a ejected", func() bool {
		served(10)
		return len(a.st.Status()["b"].Ejected) == 2
	})
	if got := served(50); got["b1"] != 50 {
		t.Errorf("zone a ejected: served by %v, want b1 only", got)
	}
}

// The mesh's own answers carry their reason.
func TestRefusals(t *testing.T) {
	b := startCallee(t, hostB1, "b1", "", table.Inbound{MaxRequests: 1})
	b.app.delay.Store(int64(300 * time.Millisecond))
	b.app.mode.Store("slow")
	p := bare()
	p.CircuitBreaker.MaxRequests = 1
	tbl := static("1", p, b)
	tbl.Services["nobody"] = &table.Service{Name: "nobody", Policy: p}
	a := startCaller(t, tbl, chain.Local{Service: "a"})
	held := make(chan result)
	go func() { held <- get(client(a.outbound, 1), "http://b/") }()
	time.Sleep(50 * time.Millisecond)
	for _, tc := range []struct {
		name, addr, url string
		status          int
		reason          string
	}{
		{name: "unknown service", addr: a.outbound, url: "http://unknown/", status: 503, reason: proxy.ReasonNoRoute},
		{name: "no endpoints", addr: a.outbound, url: "http://nobody/", status: 503, reason: proxy.ReasonNoHealthyEndpoint},
		{name: "max_requests reached", addr: a.outbound, url: "http://b/", status: 503, reason: proxy.ReasonOverflow},
		{name: "inbound max requests reached", addr: b.inbound, url: "http://b/", status: 503, reason: proxy.ReasonOverflow},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := get(client(tc.addr, 1), tc.url)
			if r.status != tc.status || r.reason != tc.reason {
				t.Errorf("got %d %q, want %d %q", r.status, r.reason, tc.status, tc.reason)
			}
			if r.took > 50*time.Millisecond {
				t.Errorf("refusal took %v", r.took)
			}
		})
	}
	if r := <-held; r.status != http.StatusOK {
		t.Errorf("the held request got %d %q", r.status, r.reason)
	}
}
