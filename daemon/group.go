package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
)

// Group runs a role's long-lived goroutines, each named. The first that
// fails (other than by cancellation or a server closed on purpose) is
// kept, wrapped with its name, and Failed is closed so the role can shut
// down; later failures are dropped, and nothing blocks on reporting.
type Group struct {
	wg     sync.WaitGroup
	once   sync.Once
	failed chan struct{}
	err    error
}

// NewGroup returns an empty group.
func NewGroup() *Group { return &Group{failed: make(chan struct{})} }

// Go runs run in a goroutine of the group.
func (g *Group) Go(name string, run func() error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := run(); err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, http.ErrServerClosed) {
			g.once.Do(func() {
				g.err = fmt.Errorf("%s: %w", name, err)
				close(g.failed)
			})
		}
	}()
}

// Failed is closed when a goroutine of the group failed.
func (g *Group) Failed() <-chan struct{} { return g.failed }

// Err is the first failure, once Failed is closed.
func (g *Group) Err() error {
	select {
	case <-g.failed:
		return g.err
	default:
		return nil
	}
}

// Wait waits for every goroutine of the group to return.
func (g *Group) Wait() { g.wg.Wait() }
