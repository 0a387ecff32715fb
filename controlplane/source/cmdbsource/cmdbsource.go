// Package cmdbsource adapts the cmdb package's Poller into a control-plane
// source: each good CMDB view becomes a model view of hosts. The poller
// keeps the last good view when the CMDB fails, so a failure sends nothing.
package cmdbsource

import (
	"context"
	"slices"
	"sync"

	"github.com/meshvm/mesh/cmdb"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/controlplane/source"
)

// Name is the source's name in logs and metrics.
const Name = "cmdb"

// Source is a CMDB poller seen as a source.
type Source struct {
	poller *cmdb.Poller
}

// New wraps a poller; it starts nothing.
func New(p *cmdb.Poller) *Source { return &Source{poller: p} }

// Name implements source.Source.
func (s *Source) Name() string { return Name }

// Status implements source.Source from the poller's stats.
func (s *Source) Status() source.Status {
	st := s.poller.Stats()
	return source.Status{Errors: st.Failures, LastSuccess: st.LastSuccess, LastError: st.LastError}
}

// Run implements source.Source.
func (s *Source) Run(ctx context.Context, out chan<- model.View) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hosts := make(chan []cmdb.Host)
	var wg sync.WaitGroup
	var err error
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer cancel()
		err = s.poller.Run(ctx, hosts)
	}()
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			cancel()
			wg.Wait()
			return err
		case hs := <-hosts:
			select {
			case out <- model.View{Hosts: Hosts(hs)}:
			case <-ctx.Done():
			}
		}
	}
}

// Hosts converts CMDB hosts into model hosts.
func Hosts(in []cmdb.Host) []model.Host {
	out := make([]model.Host, 0, len(in))
	for _, h := range in {
		out = append(out, model.Host{
			IP:       h.IP,
			Hostname: h.Hostname,
			Region:   h.Region,
			Zone:     h.Zone,
			Env:      h.Env,
			Owner:    h.Owner,
			Status:   h.Status,
			Role:     h.Role,
			Tenant:   h.Tenant,
			Tags:     slices.Clone(h.Tags),
			Labels:   h.Labels,
		})
	}
	return out
}
