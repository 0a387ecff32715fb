package ratelimit

import (
	"container/list"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/meshvm/mesh/governance/clock"
)

// Keyed is one token bucket per key (a client IP, a subject) in bounded
// memory: at most MaxKeys buckets are kept; a new key beyond that drops
// the least recently used one, and Sweep drops the buckets that have
// refilled (a full bucket is what a new key gets, so dropping it changes
// no answer). Memory is O(MaxKeys) whatever callers send.
type Keyed struct {
	cfg Config
	max int
	clk clock.Clock

	mu  sync.Mutex
	lru *list.List // of *keyedEntry, most recently used first
	m   map[string]*list.Element
}

type keyedEntry struct {
	key string
	b   *Bucket
}

// NewKeyed returns a keyed limiter of buckets of cfg, keeping at most max
// keys. clk may be nil for the system clock.
func NewKeyed(cfg Config, max int, clk clock.Clock) (*Keyed, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("rate limit: %w", err)
	}
	if max <= 0 {
		return nil, fmt.Errorf("rate limit: max keys must be positive, got %d", max)
	}
	return &Keyed{cfg: cfg, max: max, clk: clock.Or(clk), lru: list.New(), m: map[string]*list.Element{}}, nil
}

// Allow takes a token from key's bucket; when it is empty, it returns
// false and the time until the next fill.
func (k *Keyed) Allow(key string) (bool, time.Duration) {
	now := k.clk.Nanotime()
	k.mu.Lock()
	var b *Bucket
	if e, ok := k.m[key]; ok {
		k.lru.MoveToFront(e)
		b = e.Value.(*keyedEntry).b
	} else {
		if k.lru.Len() >= k.max {
			old := k.lru.Back()
			k.lru.Remove(old)
			delete(k.m, old.Value.(*keyedEntry).key)
		}
		b = &Bucket{clk: k.clk}
		b.cur.Store(newState(k.cfg, now, k.cfg.MaxTokens))
		k.m[key] = k.lru.PushFront(&keyedEntry{key: key, b: b})
	}
	k.mu.Unlock()
	return b.AllowAt(now)
}

// Len is the number of keys held.
func (k *Keyed) Len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.lru.Len()
}

// Sweep drops the buckets that are full again and returns how many.
func (k *Keyed) Sweep() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	n := 0
	for e := k.lru.Back(); e != nil; {
		prev := e.Prev()
		ke := e.Value.(*keyedEntry)
		if ke.b.Tokens() >= k.cfg.MaxTokens {
			k.lru.Remove(e)
			delete(k.m, ke.key)
			n++
		}
		e = prev
	}
	return n
}

// Run sweeps every interval until ctx is done.
func (k *Keyed) Run(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			k.Sweep()
		}
	}
}
