package chain

import (
	"context"
	"sync"
	"time"
)

// tryCtx is the context of one try: its parent, ending at a deadline.
// Unlike context.WithDeadline it arms no timer and registers nothing with
// its parent until someone asks for Done (or registers a child): until
// then Err reads the parent and the clock. Most tries never ask: the
// HTTP/1.1 client watches the context only for an exchange that outlives
// proxy's cancelWatchDelay. context.WithDeadline per try (a timer, a
// child registered in the connection's context and removed again) was
// ~7% of an agent's CPU per request at one connection (docs/decisions.md,
// decision 45).
type tryCtx struct {
	context.Context // the parent
	deadline        time.Time

	mu         sync.Mutex
	real       context.Context // context.WithDeadline(parent, deadline), made on demand
	cancelReal context.CancelFunc
	cancelled  bool
}

func newTryCtx(parent context.Context, deadline time.Time) *tryCtx {
	if pd, ok := parent.Deadline(); ok && pd.Before(deadline) {
		deadline = pd
	}
	return &tryCtx{Context: parent, deadline: deadline}
}

// materialize returns the real context, making it first; c.mu is held.
func (c *tryCtx) materialize() context.Context {
	if c.real == nil {
		c.real, c.cancelReal = context.WithDeadline(c.Context, c.deadline)
		if c.cancelled {
			c.cancelReal()
		}
	}
	return c.real
}

func (c *tryCtx) Deadline() (time.Time, bool) { return c.deadline, true }

func (c *tryCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.materialize().Done()
}

func (c *tryCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.real != nil:
		return c.real.Err()
	case c.cancelled:
		return context.Canceled
	}
	if err := c.Context.Err(); err != nil {
		return err
	}
	if !time.Now().Before(c.deadline) {
		return context.DeadlineExceeded
	}
	return nil
}

// Value answers from the real context once it exists (it knows its own
// cancellation, which is how the context package links children to it),
// else from the parent.
func (c *tryCtx) Value(key any) any {
	c.mu.Lock()
	real := c.real
	c.mu.Unlock()
	if real != nil {
		return real.Value(key)
	}
	return c.Context.Value(key)
}

func (c *tryCtx) cancel() {
	c.mu.Lock()
	c.cancelled = true
	if c.cancelReal != nil {
		c.cancelReal()
	}
	c.mu.Unlock()
}
