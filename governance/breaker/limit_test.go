package breaker

import (
	"sync"
	"sync/atomic"
	"testing"
)

func TestLimit(t *testing.T) {
	tests := []struct {
		name      string
		max       int64
		acquire   int
		wantOK    int
		newMax    int64
		wantAfter bool // Acquire after SetMax(newMax), with the slots still held
	}{
		{name: "admits up to max", max: 3, acquire: 5, wantOK: 3, newMax: 3, wantAfter: false},
		{name: "zero means no limit", max: 0, acquire: 100, wantOK: 100, newMax: 0, wantAfter: true},
		{name: "raising max admits more at once", max: 2, acquire: 2, wantOK: 2, newMax: 3, wantAfter: true},
		{name: "lowering max below what is held overflows", max: 5, acquire: 4, wantOK: 4, newMax: 2, wantAfter: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := NewLimit(tt.max)
			ok := 0
			for range tt.acquire {
				if l.Acquire() {
					ok++
				}
			}
			if ok != tt.wantOK || l.Active() != int64(tt.wantOK) {
				t.Fatalf("%d of %d acquired (active %d), want %d", ok, tt.acquire, l.Active(), tt.wantOK)
			}
			l.SetMax(tt.newMax)
			if got := l.Acquire(); got != tt.wantAfter {
				t.Fatalf("Acquire() after SetMax(%d) = %v, want %v", tt.newMax, got, tt.wantAfter)
			}
		})
	}
}

func TestThresholdsUpdate(t *testing.T) {
	th := NewThresholds(ThresholdsConfig{MaxRequests: 1, MaxPendingRequests: 2, MaxConnections: 3})
	if !th.Requests.Acquire() || th.Requests.Acquire() {
		t.Fatal("max_requests 1 did not admit exactly one request")
	}
	th.Update(ThresholdsConfig{MaxRequests: 2, MaxPendingRequests: 2, MaxConnections: 3})
	if !th.Requests.Acquire() || th.Requests.Active() != 2 {
		t.Fatalf("after raising max_requests to 2: active %d, want 2", th.Requests.Active())
	}
	if th.Pending.Max() != 2 || th.Connections.Max() != 3 {
		t.Fatalf("pending max %d, connections max %d; want 2, 3", th.Pending.Max(), th.Connections.Max())
	}
}

// TestLimitConcurrent checks that in-flight work never exceeds the maximum
// and that every slot comes back.
func TestLimitConcurrent(t *testing.T) {
	const max = 5
	l := NewLimit(max)
	var inFlight, peak, overflow atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for range 2000 {
				if !l.Acquire() {
					overflow.Add(1)
					continue
				}
				n := inFlight.Add(1)
				for {
					p := peak.Load()
					if n <= p || peak.CompareAndSwap(p, n) {
						break
					}
				}
				inFlight.Add(-1)
				l.Release()
			}
		})
	}
	wg.Wait()
	if peak.Load() > max {
		t.Fatalf("peak in flight %d, over max %d", peak.Load(), max)
	}
	if l.Active() != 0 {
		t.Fatalf("active %d after all released, want 0", l.Active())
	}
	t.Logf("peak %d, overflowed %d of %d", peak.Load(), overflow.Load(), 16*2000)
}
