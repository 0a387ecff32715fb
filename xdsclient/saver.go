package xdsclient

import (
	"context"
	"sync"
)

// CacheSaver writes the latest accepted resources to disk (SaveCache) in
// the background, coalescing bursts of updates into one write, so a proxy
// that restarts while no control plane answers starts from its last good
// config. The agent and the gateway each run one.
type CacheSaver struct {
	path string

	mu     sync.Mutex
	latest *Resources
	wake   chan struct{}
}

// NewCacheSaver saves to path; it starts nothing.
func NewCacheSaver(path string) *CacheSaver {
	return &CacheSaver{path: path, wake: make(chan struct{}, 1)}
}

// Offer hands over the resources just accepted; only the latest offered
// before a write is written.
func (s *CacheSaver) Offer(r Resources) {
	s.mu.Lock()
	s.latest = &r
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Run saves until ctx is done, then saves what is pending once more. A
// failed write is reported to onErr and retried at the next offer.
func (s *CacheSaver) Run(ctx context.Context, onErr func(error)) error {
	flush := func() {
		s.mu.Lock()
		r := s.latest
		s.latest = nil
		s.mu.Unlock()
		if r != nil {
			if err := SaveCache(s.path, *r); err != nil {
				onErr(err)
			}
		}
	}
	for {
		select {
		case <-ctx.Done():
			flush()
			return nil
		case <-s.wake:
			flush()
		}
	}
}
