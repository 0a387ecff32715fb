package breaker

import "sync/atomic"

// Limit is one of Envoy's concurrency thresholds (max_requests,
// max_pending_requests, max_connections): a counter of things in progress
// that refuses to go over its maximum. A maximum of zero or less means no
// limit. Acquire and Release are lock-free and never allocate.
type Limit struct {
	max    atomic.Int64
	active atomic.Int64
}

// NewLimit returns a limit of max.
func NewLimit(max int64) *Limit {
	l := &Limit{}
	l.max.Store(max)
	return l
}

// Acquire takes one slot, or reports overflow (false) when all are taken.
// Every successful Acquire must be matched by one Release.
func (l *Limit) Acquire() bool {
	max := l.max.Load()
	if max <= 0 {
		l.active.Add(1)
		return true
	}
	for {
		n := l.active.Load()
		if n >= max {
			return false
		}
		if l.active.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// Release gives back a slot taken by Acquire.
func (l *Limit) Release() { l.active.Add(-1) }

// Active returns the slots taken now: in-flight requests, pending
// requests or open connections. A retry budget is a share of it.
func (l *Limit) Active() int64 { return l.active.Load() }

// Max returns the maximum (zero or less: none).
func (l *Limit) Max() int64 { return l.max.Load() }

// SetMax changes the maximum in place; slots already taken stay taken,
// and if they are over the new maximum new requests overflow until
// enough are released.
func (l *Limit) SetMax(max int64) { l.max.Store(max) }

// Thresholds are the concurrency thresholds of one upstream service, as
// Envoy's Cluster circuit_breakers carry them.
type Thresholds struct {
	Requests    Limit
	Pending     Limit
	Connections Limit
}

// ThresholdsConfig is the maxima of Thresholds; zero means no limit.
type ThresholdsConfig struct {
	MaxRequests        int64
	MaxPendingRequests int64
	MaxConnections     int64
}

// NewThresholds returns thresholds with the given maxima.
func NewThresholds(cfg ThresholdsConfig) *Thresholds {
	t := &Thresholds{}
	t.Update(cfg)
	return t
}

// Update changes the maxima in place, keeping what is in progress.
func (t *Thresholds) Update(cfg ThresholdsConfig) {
	t.Requests.SetMax(cfg.MaxRequests)
	t.Pending.SetMax(cfg.MaxPendingRequests)
	t.Connections.SetMax(cfg.MaxConnections)
}
