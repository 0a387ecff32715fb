package retry

import "sync/atomic"

// Budget is Envoy's retry_budget: concurrent retries to an upstream may
// not exceed budget_percent of its active requests (active plus pending),
// but min_retry_concurrency retries are always allowed. It is lock-free
// and never allocates.
type Budget struct {
	permyriad atomic.Int64 // budget_percent × 100
	min       atomic.Int64
	active    atomic.Int64
}

// NewBudget returns a budget of percent (0-100) of active requests, with
// at least minConcurrency retries allowed. A zero percent leaves only the
// minimum.
func NewBudget(percent float64, minConcurrency int64) *Budget {
	b := &Budget{}
	b.Update(percent, minConcurrency)
	return b
}

// Update changes the budget in place; retries in progress stay counted.
func (b *Budget) Update(percent float64, minConcurrency int64) {
	b.permyriad.Store(int64(min(max(percent, 0), 100) * 100))
	b.min.Store(max(minConcurrency, 0))
}

// Max returns how many concurrent retries the budget allows when
// activeRequests requests (active plus pending) are in progress.
func (b *Budget) Max(activeRequests int64) int64 {
	return max(b.min.Load(), activeRequests*b.permyriad.Load()/10_000)
}

// Acquire takes a retry slot, or reports that the budget is spent.
// activeRequests is the upstream's active plus pending requests now (for
// example the Active of its breaker.Limit for requests). Each successful
// Acquire must be matched by a Release when the retry ends.
func (b *Budget) Acquire(activeRequests int64) bool {
	limit := b.Max(activeRequests)
	for {
		n := b.active.Load()
		if n >= limit {
			return false
		}
		if b.active.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// Release ends a retry taken by Acquire.
func (b *Budget) Release() { b.active.Add(-1) }

// Active returns the retries in progress.
func (b *Budget) Active() int64 { return b.active.Load() }
