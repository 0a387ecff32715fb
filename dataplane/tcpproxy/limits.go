package tcpproxy

import (
	"sync"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/governance/breaker"
	"github.com/meshvm/mesh/governance/ratelimit"
	"github.com/meshvm/mesh/wire"
)

// Reasons an inbound connection is refused by the service's limits: it is
// closed at once, before any byte reaches the app.
const (
	ReasonRateLimited = wire.ReasonRateLimited // the connection rate limit's bucket is empty
	ReasonOverflow    = "overflow"             // max concurrent connections reached
)

// Limits are an inbound relay's per-connection governance: the service's
// inbound rate limit counts connections (a token per connection), and its
// max_requests bounds the connections open to the app at once. Zero values
// mean no limit.
type Limits struct {
	RateLimit config.RateLimit
	MaxConns  int
}

// limiter holds the bucket and the concurrency count across limit changes
// (a config push neither refills the bucket nor forgets open connections).
type limiter struct {
	mu     sync.Mutex
	bucket *ratelimit.Bucket // nil: no rate limit
	conns  *breaker.Limit
}

func newLimiter() *limiter { return &limiter{conns: breaker.NewLimit(0)} }

// apply brings the limiter to l; a rate limit that does not validate
// leaves the one in force (the table's compiler refused it already).
func (lm *limiter) apply(l Limits) {
	lm.conns.SetMax(int64(l.MaxConns))
	rl := l.RateLimit
	lm.mu.Lock()
	defer lm.mu.Unlock()
	if rl.MaxTokens <= 0 {
		lm.bucket = nil
		return
	}
	cfg := ratelimit.Config{MaxTokens: int64(rl.MaxTokens), TokensPerFill: int64(rl.TokensPerFill), FillInterval: rl.FillInterval}
	if lm.bucket == nil {
		if b, err := ratelimit.New(cfg, nil); err == nil {
			lm.bucket = b
		}
		return
	}
	_ = lm.bucket.Update(cfg)
}

// admit decides on a new connection: "" admits it (and then release must
// be called when it ends), else the reason it is refused.
func (lm *limiter) admit() string {
	lm.mu.Lock()
	b := lm.bucket
	lm.mu.Unlock()
	if b != nil {
		if ok, _ := b.Allow(); !ok {
			return ReasonRateLimited
		}
	}
	if !lm.conns.Acquire() {
		return ReasonOverflow
	}
	return ""
}

func (lm *limiter) release() { lm.conns.Release() }
