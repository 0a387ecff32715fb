// Package ratelimit is the callee-side admission limit: a non-blocking
// token bucket with the semantics of Envoy's local_ratelimit filter
// (max_tokens, tokens_per_fill, fill_interval). A request either takes a
// token at once or is refused with the time until the next fill; nothing
// ever waits in a queue, so over any span T the app sees at most
// MaxTokens + TokensPerFill × ⌊T / FillInterval⌋ requests.
package ratelimit

import (
	"fmt"
	"math"
	"sync/atomic"
	"time"

	"github.com/meshvm/mesh/governance/clock"
)

// Config is Envoy's local_ratelimit token bucket. The bucket starts full;
// every FillInterval adds TokensPerFill tokens, up to MaxTokens.
type Config struct {
	MaxTokens     int64
	TokensPerFill int64
	FillInterval  time.Duration
}

func (c Config) validate() error {
	switch {
	case c.MaxTokens <= 0:
		return fmt.Errorf("max_tokens must be positive, got %d", c.MaxTokens)
	case c.TokensPerFill <= 0:
		return fmt.Errorf("tokens_per_fill must be positive, got %d", c.TokensPerFill)
	case c.FillInterval <= 0:
		return fmt.Errorf("fill_interval must be positive, got %s", c.FillInterval)
	case float64(c.TokensPerFill)/c.FillInterval.Seconds() > maxRate:
		return fmt.Errorf("tokens_per_fill/fill_interval must be at most %g per second", maxRate)
	}
	return nil
}

// maxRate bounds the fill rate so that the fill count times TokensPerFill
// stays within an int64 for centuries of uptime.
const maxRate = 1e9

// Bucket is a token bucket safe for concurrent use. Allow is lock-free:
// one clock read, one division and one compare-and-swap.
type Bucket struct {
	clk clock.Clock
	cur atomic.Pointer[state]
}

// retired marks a state replaced by Update: its tokens moved to the new
// state, so callers still holding it must reload.
const retired = math.MaxInt64

// state is one configuration of the bucket and its level. The level is a
// single integer, debt: with k the number of fills since origin, the bucket
// holds min(MaxTokens, k×TokensPerFill − debt) tokens. Taking a token adds
// one to debt; a fill needs no write at all, which is what makes Allow a
// single compare-and-swap.
type state struct {
	cfg    Config
	origin int64 // clock reading at which fill 0 happened
	debt   atomic.Int64
}

// New returns a full bucket. clk may be nil for the system clock.
func New(cfg Config, clk clock.Clock) (*Bucket, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("rate limit: %w", err)
	}
	b := &Bucket{clk: clock.Or(clk)}
	b.cur.Store(newState(cfg, b.clk.Nanotime(), cfg.MaxTokens))
	return b, nil
}

// newState returns a state whose fill 0 is at now, holding tokens.
func newState(cfg Config, now, tokens int64) *state {
	s := &state{cfg: cfg, origin: now}
	s.debt.Store(-min(tokens, cfg.MaxTokens))
	return s
}

// fills returns the number of fills since origin and the clock reading of
// the next one.
func (s *state) fills(now int64) (k, next int64) {
	iv := int64(s.cfg.FillInterval)
	k = (now - s.origin) / iv
	return k, s.origin + (k+1)*iv
}

// tokens returns the level for fill count k and debt d, and the floor of
// debt below which taking a token would overflow the bucket.
func (s *state) level(k, d int64) (tokens, base int64) {
	base = max(d, k*s.cfg.TokensPerFill-s.cfg.MaxTokens)
	return k*s.cfg.TokensPerFill - base, base
}

// Allow takes one token. When the bucket is empty it returns false and
// how long until the next fill; it never blocks.
func (b *Bucket) Allow() (ok bool, retryAfter time.Duration) {
	return b.AllowAt(b.clk.Nanotime())
}

// AllowAt is Allow for a caller that has already read the bucket's clock
// (now is a reading of the clock passed to New), so that one reading per
// request can serve every governance check.
func (b *Bucket) AllowAt(now int64) (ok bool, retryAfter time.Duration) {
	s := b.cur.Load()
	for {
		d := s.debt.Load()
		if d == retired {
			s = b.cur.Load()
			continue
		}
		k, next := s.fills(now)
		tokens, base := s.level(k, d)
		if tokens < 1 {
			return false, time.Duration(next - now)
		}
		if s.debt.CompareAndSwap(d, base+1) {
			return true, 0
		}
	}
}

// Tokens returns the tokens in the bucket now.
func (b *Bucket) Tokens() int64 {
	now := b.clk.Nanotime()
	for {
		s := b.cur.Load()
		d := s.debt.Load()
		if d == retired {
			continue
		}
		k, _ := s.fills(now)
		t, _ := s.level(k, d)
		return t
	}
}

// Config returns the bucket's current configuration.
func (b *Bucket) Config() Config { return b.cur.Load().cfg }

// Update applies a new configuration in place, keeping the tokens left
// (capped at the new MaxTokens) so that a config push neither refills nor
// drains the bucket. The fill schedule restarts at the moment of the
// update. Concurrent Allow calls see either the old or the new state,
// never both: the old state is retired atomically as its level is read.
func (b *Bucket) Update(cfg Config) error {
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("rate limit: %w", err)
	}
	for {
		s := b.cur.Load()
		if s.cfg == cfg {
			return nil
		}
		d := s.debt.Load()
		if d == retired {
			continue // a concurrent Update is swapping; retry on its result
		}
		now := b.clk.Nanotime()
		k, _ := s.fills(now)
		tokens, _ := s.level(k, d)
		if !s.debt.CompareAndSwap(d, retired) {
			continue
		}
		b.cur.Store(newState(cfg, now, tokens))
		return nil
	}
}
