package daemon

import (
	"context"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/sdnotify"
)

// Stoppable is a server a drain stops: it stops accepting and lets
// in-flight requests finish (Shutdown), or cuts them (Close).
type Stoppable interface {
	Shutdown(context.Context) error
	Close() error
}

// Named is one server of a drain, named for the log.
type Named struct {
	Name   string
	Server Stoppable
}

// Drain is how a proxying role (the agent, the gateway) leaves on
// SIGTERM: tell systemd it is stopping, deregister from Consul, keep
// serving for Period while callers (or a load balancer) learn it is
// gone, then stop every server, letting in-flight requests finish within
// Timeout and cutting the rest.
type Drain struct {
	Log        zerolog.Logger
	Deregister func(context.Context) error
	Period     time.Duration
	Timeout    time.Duration
	// Audience names who must learn the process is gone, for the log
	// ("callers", "the load balancer").
	Audience string
}

// Run drains and stops servers; it returns when all have stopped.
func (d Drain) Run(servers []Named) {
	_ = sdnotify.Stopping()
	dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	if err := d.Deregister(dctx); err != nil {
		d.Log.Warn().Err(err).Msg("deregister failed; Consul's health check will take this instance out")
	}
	cancel()
	if d.Period > 0 {
		d.Log.Info().Dur("drain_period", d.Period).Msg("draining: still serving while " + d.Audience + " learn we are gone")
		time.Sleep(d.Period)
	}
	sctx, cancel := context.WithTimeout(context.Background(), d.Timeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, s := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Server.Shutdown(sctx); err != nil {
				d.Log.Warn().Err(err).Str("listener", s.Name).Msg("in-flight requests cut at shutdown timeout")
				_ = s.Server.Close()
			}
		}()
	}
	wg.Wait()
	d.Log.Info().Msg("stopped")
}
