// Package daemon runs a role (`mesh agent`, `mesh control`) as a
// long-lived process: it loads the config, builds the process logger,
// stops the role on SIGTERM or SIGINT and reloads it on SIGHUP with the
// same file and flags it started with.
package daemon

import (
	"context"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"syscall"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/observability"
)

// Process is a running role.
type Process interface {
	// Run serves until ctx is done, then stops gracefully.
	Run(ctx context.Context) error
	// ReloadFrom re-reads the config with load and applies what it can;
	// on failure the running config stays.
	ReloadFrom(ctx context.Context, load func() (*config.Config, error)) error
}

// Run loads the config described by opts, builds the process with build
// and runs it until SIGTERM or SIGINT. SIGHUP calls ReloadFrom with a
// loader that reads the same file with the same flags. A config that does
// not load is returned as is (a *config.Error: exit code 2). The process
// first re-executes itself once with the runtime settings a long-lived
// server runs with (keepSysmonAwake) and holds a GC ballast (newBallast).
func Run(opts config.Options, build func(config.Config, zerolog.Logger) (Process, error)) error {
	keepSysmonAwake()
	ballast := newBallast()
	defer runtime.KeepAlive(ballast)
	load := func() (*config.Config, error) { return config.Load(opts) }
	cfg, err := load()
	if err != nil {
		return err
	}
	// The logger passes everything and the global level filters, so a
	// reload can change the level.
	log := observability.NewLogger(cfg.Log, os.Stderr).Level(zerolog.TraceLevel)
	if level, err := zerolog.ParseLevel(cfg.Log.Level); err == nil {
		zerolog.SetGlobalLevel(level)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	p, err := build(*cfg, log)
	if err != nil {
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				_ = p.ReloadFrom(ctx, load)
			}
		}
	}()
	defer stop() // ends the reload loop before wg.Wait when Run fails
	return p.Run(ctx)
}
