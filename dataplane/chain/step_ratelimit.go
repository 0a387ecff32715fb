package chain

import (
	"net/http"

	"github.com/meshvm/mesh/dataplane/proxy"
	"github.com/meshvm/mesh/dataplane/table"
	"github.com/meshvm/mesh/governance/ratelimit"
)

// rateLimit is the inbound token bucket: a request that finds it empty is
// refused at once with 429 rate-limited and a Retry-After of the time
// until the next token. The bucket itself is state that outlives a table
// (State's bucket registry, key inboundKey).
type rateLimit struct {
	bucket *ratelimit.Bucket
	count  func()
}

// rateLimitConfig maps the table's inbound rate limit onto the token
// bucket; ok is false when there is none.
func rateLimitConfig(in table.Inbound) (c ratelimit.Config, ok bool) {
	rl := in.RateLimit
	if rl.MaxTokens <= 0 {
		return ratelimit.Config{}, false
	}
	return ratelimit.Config{
		MaxTokens:     int64(rl.MaxTokens),
		TokensPerFill: int64(rl.TokensPerFill),
		FillInterval:  rl.FillInterval,
	}, true
}

func buildRateLimit(t *InboundTarget) (Step, error) {
	if t.h.bucket == nil {
		return nil, nil
	}
	return &rateLimit{bucket: t.h.bucket, count: t.h.inLimits.RateLimited}, nil
}

func (*rateLimit) Name() string { return "rate-limit" }

func (s *rateLimit) Serve(x *Exchange, next Next) error {
	if ok, wait := s.bucket.Allow(); !ok {
		return Refuse(http.StatusTooManyRequests, proxy.ReasonRateLimited, s.count).WithRetryAfter(wait)
	}
	return next.Serve(x)
}
