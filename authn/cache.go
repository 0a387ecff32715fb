package authn

import (
	"sync"
	"time"
)

// tokenCache remembers verified tokens (by SHA-256) until they expire, so
// a client's repeated requests cost a hash and a map lookup instead of a
// signature check. It holds at most max entries; when full, expired ones
// go first, then an arbitrary one.
type tokenCache struct {
	mu  sync.Mutex
	max int
	m   map[[32]byte]cached
}

type cached struct {
	c     *Claims
	until time.Time
}

func newTokenCache(max int) *tokenCache {
	return &tokenCache{max: max, m: make(map[[32]byte]cached)}
}

func (t *tokenCache) get(k [32]byte, now time.Time) (*Claims, bool) {
	t.mu.Lock()
	e, ok := t.m[k]
	t.mu.Unlock()
	if !ok || !now.Before(e.until) {
		return nil, false
	}
	return e.c, true
}

func (t *tokenCache) put(k [32]byte, c *Claims, until time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.m) >= t.max {
		now := time.Now()
		for key, e := range t.m {
			if !now.Before(e.until) {
				delete(t.m, key)
			}
		}
		for key := range t.m {
			if len(t.m) < t.max {
				break
			}
			delete(t.m, key)
		}
	}
	t.m[k] = cached{c: c, until: until}
}
