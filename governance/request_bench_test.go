package governance_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshvm/mesh/governance/balancer"
	"github.com/meshvm/mesh/governance/breaker"
	"github.com/meshvm/mesh/governance/clock"
	"github.com/meshvm/mesh/governance/outlier"
	"github.com/meshvm/mesh/governance/ratelimit"
	"github.com/meshvm/mesh/governance/retry"
)

// upstream is what the agent will hold per upstream service after a push,
// built from the default policy (config.DefaultPolicy).
type upstream struct {
	limits   *breaker.Thresholds
	breaker  *breaker.Breaker
	budget   *retry.Budget
	retryOn  retry.Policy
	detector *outlier.Detector
	picker   *balancer.Picker
	hosts    []*outlier.Host
	active   []*atomic.Int64
}

func newUpstream(b *testing.B, n int) *upstream {
	u := &upstream{
		limits: breaker.NewThresholds(breaker.ThresholdsConfig{MaxRequests: 1024, MaxPendingRequests: 1024, MaxConnections: 1024}),
		budget: retry.NewBudget(20, 3),
	}
	var err error
	if u.breaker, err = breaker.New(breaker.Config{ErrorPercentThreshold: 50, RequestVolumeThreshold: 20, SleepWindow: 5 * time.Second}, nil); err != nil {
		b.Fatal(err)
	}
	if u.retryOn.On, err = retry.Parse([]string{"connect-failure", "refused-stream", "reset", "unavailable"}); err != nil {
		b.Fatal(err)
	}
	if u.detector, err = outlier.New(outlier.Config{Consecutive5xx: 5, ConsecutiveGatewayFailure: 5, MaxEjectionPercent: 50}, nil); err != nil {
		b.Fatal(err)
	}
	eps := make([]balancer.Endpoint, n)
	for i := range eps {
		u.hosts = append(u.hosts, &outlier.Host{})
		u.active = append(u.active, &atomic.Int64{})
		eps[i] = balancer.Endpoint{Zone: fmt.Sprintf("z%d", i%3), Active: u.active[i], Health: u.hosts[i]}
	}
	u.detector.SetHosts(u.hosts)
	if u.picker, err = balancer.New(eps, balancer.Options{Policy: balancer.LeastRequest, LocalZone: "z0", Version: u.detector}); err != nil {
		b.Fatal(err)
	}
	return u
}

// outbound is everything the caller side does for one request that
// succeeds at the first try: concurrency limit, breaker, pick, and the
// outcome reported to outlier detection and the breaker.
func (u *upstream) outbound(status int) bool {
	if !u.limits.Requests.Acquire() {
		return false
	}
	defer u.limits.Requests.Release()
	now := clock.System.Nanotime()
	permit, _ := u.breaker.AllowAt(now)
	if !permit.OK() {
		return false
	}
	i := u.picker.Pick()
	u.active[i].Add(1)
	// ... the request goes to endpoint i and comes back with status ...
	u.active[i].Add(-1)
	u.detector.Report(u.hosts[i], outlier.Classify(status, false))
	if status >= 500 && u.retryOn.Retriable(retry.Attempt{Status: status, GRPCStatus: retry.NoGRPCStatus}) &&
		u.budget.Acquire(u.limits.Requests.Active()) {
		u.budget.Release()
	}
	u.breaker.ReportAt(permit, status < 500, clock.System.Nanotime())
	return true
}

// BenchmarkOutboundRequest is the caller-side governance of one request.
func BenchmarkOutboundRequest(b *testing.B) {
	for _, n := range []int{10, 100} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			u := newUpstream(b, n)
			b.ReportAllocs()
			for b.Loop() {
				u.outbound(200)
			}
		})
	}
}

func BenchmarkOutboundRequestParallel(b *testing.B) {
	u := newUpstream(b, 100)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			u.outbound(200)
		}
	})
}

// BenchmarkInboundRequest is the callee side: concurrency limit and rate
// limit.
func BenchmarkInboundRequest(b *testing.B) {
	limit := breaker.NewLimit(1024)
	bucket, err := ratelimit.New(ratelimit.Config{MaxTokens: 1 << 40, TokensPerFill: 1 << 19, FillInterval: time.Millisecond}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if limit.Acquire() {
			bucket.Allow()
			limit.Release()
		}
	}
}
