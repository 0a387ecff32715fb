// Package source defines what feeds the control plane: each Source runs a
// loop and sends its full current view whenever it changes. A source
// retries failures itself, forever, with backoff, and keeps its last good
// view in force meanwhile: it never sends an empty view because it failed.
package source

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/meshvm/mesh/controlplane/model"
)

// Source is one origin of mesh state (Consul, the CMDB, later Kubernetes).
type Source interface {
	// Name identifies the source in logs and metrics ("consul", "cmdb").
	Name() string
	// Run sends the full current view on out each time it changes, until
	// ctx is done. It returns only when ctx is done (with nil) or on a
	// programming error.
	Run(ctx context.Context, out chan<- model.View) error
	// Status reports errors and the last success.
	Status() Status
}

// Status is how a source fares, for metrics and /config_dump.
type Status struct {
	// Errors counts failed fetches or queries since start.
	Errors uint64 `json:"errors"`
	// LastSuccess is when the source last read its origin successfully.
	LastSuccess time.Time `json:"last_success"`
	// LastError is the last failure's message, "" once it succeeds again.
	LastError string `json:"last_error,omitempty"`
}

// Tracker records a source's Status; it is safe for concurrent use.
type Tracker struct {
	mu sync.Mutex
	st Status
}

// Succeeded records a successful read.
func (t *Tracker) Succeeded() {
	t.mu.Lock()
	t.st.LastSuccess, t.st.LastError = time.Now(), ""
	t.mu.Unlock()
}

// Failed records a failed read.
func (t *Tracker) Failed(err error) {
	t.mu.Lock()
	t.st.Errors++
	t.st.LastError = err.Error()
	t.mu.Unlock()
}

// Status returns a copy of the status.
func (t *Tracker) Status() Status {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.st
}

// Backoff is capped exponential backoff with full jitter.
type Backoff struct {
	Min, Max time.Duration
	n        int
}

// Next returns the next wait.
func (b *Backoff) Next() time.Duration {
	d := b.Min << min(b.n, 20)
	if d > b.Max || d <= 0 {
		d = b.Max
	}
	b.n++
	return d/2 + rand.N(d/2+1)
}

// Reset starts over after a success.
func (b *Backoff) Reset() { b.n = 0 }

// Sleep waits d or until ctx is done, and reports whether ctx is still live.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
