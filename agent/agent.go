// Package agent is the `mesh agent` role: the sidecar next to one app
// instance. It owns the inbound, outbound, per-upstream and admin
// listeners, registers the app in Consul, and shuts down without losing
// requests.
package agent

import (
	"context"
	"errors"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/config"
)

// Agent is one sidecar.
type Agent struct {
	cfg config.Config
	log zerolog.Logger
}

// New builds an agent; it starts nothing.
func New(cfg config.Config, log zerolog.Logger) (*Agent, error) {
	return &Agent{cfg: cfg, log: log}, nil
}

// Run serves until ctx is done, then shuts down gracefully.
func (a *Agent) Run(ctx context.Context) error {
	return errors.New("not implemented yet")
}
