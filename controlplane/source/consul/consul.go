// Package consul is the control plane's Consul source: blocking queries on
// the catalog's service list and on each service's health, turned into
// model instances. A failed query is retried forever with backoff while
// the last good view stays in force.
package consul

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/controlplane/source"
)

// Name is the source's name in logs and metrics.
const Name = "consul"

// Options tune the source; zero values take defaults.
type Options struct {
	// Wait is the blocking queries' wait time (default 60s).
	Wait time.Duration
	// MinBackoff and MaxBackoff bound the retry wait (100ms, 15s).
	MinBackoff, MaxBackoff time.Duration
}

// Source watches Consul.
type Source struct {
	client *api.Client
	// transport holds the blocking queries' connections; closed idle on
	// stop, so a stopped source leaves no connection goroutines behind.
	transport *http.Transport
	log       zerolog.Logger
	opts      Options
	status    source.Tracker
}

// New returns a source for the Consul agent cfg names; it contacts nothing.
func New(cfg config.Consul, log zerolog.Logger, opts Options) (*Source, error) {
	c := api.DefaultConfig()
	addr := cfg.Addr
	switch {
	case strings.HasPrefix(addr, "https://"):
		c.Scheme, addr = "https", strings.TrimPrefix(addr, "https://")
	case strings.HasPrefix(addr, "http://"):
		c.Scheme, addr = "http", strings.TrimPrefix(addr, "http://")
	}
	if addr != "" {
		c.Address = addr
	}
	c.Token = cfg.Token
	c.Datacenter = cfg.Datacenter
	// Blocking queries hold a connection each: one per service.
	c.Transport.MaxIdleConnsPerHost = 1024
	c.HttpClient = &http.Client{Transport: c.Transport}
	client, err := api.NewClient(c)
	if err != nil {
		return nil, fmt.Errorf("consul client for %s: %w", cfg.Addr, err)
	}
	if opts.Wait <= 0 {
		opts.Wait = time.Minute
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 100 * time.Millisecond
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 15 * time.Second
	}
	return &Source{client: client, transport: c.Transport, log: log, opts: opts}, nil
}

// Name implements source.Source.
func (s *Source) Name() string { return Name }

// Status implements source.Source.
func (s *Source) Status() source.Status { return s.status.Status() }

type serviceUpdate struct {
	name      string
	instances []model.Instance
}

// Run implements source.Source. The first view is sent once every service
// in the catalog has answered its first health query; later views follow
// each change.
func (s *Source) Run(ctx context.Context, out chan<- model.View) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait(); s.transport.CloseIdleConnections() }()

	names := make(chan map[string]bool)
	updates := make(chan serviceUpdate)
	wg.Add(1)
	go func() { defer wg.Done(); s.watchCatalog(ctx, names) }()

	watchers := map[string]context.CancelFunc{}
	state := map[string][]model.Instance{}
	synced, dirty := false, false
	for {
		select {
		case <-ctx.Done():
			return nil
		case set := <-names:
			for name, stop := range watchers {
				if !set[name] {
					stop()
					delete(watchers, name)
					if _, ok := state[name]; ok {
						delete(state, name)
						dirty = true
					}
				}
			}
			for name := range set {
				if _, ok := watchers[name]; !ok {
					wctx, stop := context.WithCancel(ctx)
					watchers[name] = stop
					wg.Add(1)
					go func() { defer wg.Done(); s.watchService(wctx, name, updates) }()
				}
			}
			if !synced {
				dirty = true
			}
		case u := <-updates:
			if _, live := watchers[u.name]; !live {
				continue
			}
			state[u.name] = u.instances
			dirty = true
		}
		if !dirty {
			continue
		}
		if !synced {
			if len(state) < len(watchers) {
				continue
			}
			synced = true
		}
		dirty = false
		select {
		case out <- view(state):
		case <-ctx.Done():
			return nil
		}
	}
}

func view(state map[string][]model.Instance) model.View {
	n := 0
	for _, in := range state {
		n += len(in)
	}
	v := model.View{Instances: make([]model.Instance, 0, n)}
	for _, in := range state {
		v.Instances = append(v.Instances, in...)
	}
	return v
}

// watchCatalog sends the set of service names each time it changes.
func (s *Source) watchCatalog(ctx context.Context, out chan<- map[string]bool) {
	b := source.Backoff{Min: s.opts.MinBackoff, Max: s.opts.MaxBackoff}
	var index uint64
	var last map[string]bool
	failing := false
	for ctx.Err() == nil {
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: s.opts.Wait}).WithContext(ctx)
		services, meta, err := s.client.Catalog().Services(q)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.failed(&failing, fmt.Errorf("list catalog services: %w", err))
			source.Sleep(ctx, b.Next())
			continue
		}
		s.succeeded(&failing)
		b.Reset()
		index = nextIndex(index, meta.LastIndex)
		set := make(map[string]bool, len(services))
		for name := range services {
			if name != "consul" {
				set[name] = true
			}
		}
		if last != nil && reflect.DeepEqual(set, last) {
			continue
		}
		last = set
		select {
		case out <- set:
		case <-ctx.Done():
			return
		}
	}
}

// watchService sends a service's instances each time they change.
func (s *Source) watchService(ctx context.Context, name string, out chan<- serviceUpdate) {
	b := source.Backoff{Min: s.opts.MinBackoff, Max: s.opts.MaxBackoff}
	var index uint64
	var last []model.Instance
	first, failing := true, false
	for ctx.Err() == nil {
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: s.opts.Wait}).WithContext(ctx)
		entries, meta, err := s.client.Health().Service(name, "", false, q)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, context.Canceled) {
				return
			}
			s.failed(&failing, fmt.Errorf("health of service %s: %w", name, err))
			source.Sleep(ctx, b.Next())
			continue
		}
		s.succeeded(&failing)
		b.Reset()
		index = nextIndex(index, meta.LastIndex)
		inst := Instances(entries)
		if !first && reflect.DeepEqual(inst, last) {
			continue
		}
		first, last = false, inst
		select {
		case out <- serviceUpdate{name: name, instances: inst}:
		case <-ctx.Done():
			return
		}
	}
}

func (s *Source) failed(failing *bool, err error) {
	s.status.Failed(err)
	if !*failing {
		s.log.Warn().Err(err).Msg("consul query failed, keeping the last good view and retrying")
	}
	*failing = true
}

func (s *Source) succeeded(failing *bool) {
	s.status.Succeeded()
	if *failing {
		s.log.Info().Msg("consul query recovered")
	}
	*failing = false
}

// nextIndex follows Consul's advice on blocking-query indexes: start over
// when the index goes backwards, never wait on 0.
func nextIndex(prev, last uint64) uint64 {
	if last < prev || last == 0 {
		return 1
	}
	return last
}

// Instances converts health entries into instances, sorted by ID. The
// check state aggregates the node's and the service's checks (maintenance
// is critical); the weight is Consul's weight for that state.
func Instances(entries []*api.ServiceEntry) []model.Instance {
	out := make([]model.Instance, 0, len(entries))
	for _, e := range entries {
		if e.Service == nil {
			continue
		}
		addr := e.Service.Address
		if addr == "" && e.Node != nil {
			addr = e.Node.Address
		}
		in := model.Instance{
			Service: e.Service.Service,
			ID:      e.Service.ID,
			Address: addr,
			Port:    e.Service.Port,
			Tags:    e.Service.Tags,
			Meta:    e.Service.Meta,
		}
		if e.Node != nil {
			in.Node = e.Node.Node
		}
		switch e.Checks.AggregatedStatus() {
		case api.HealthPassing:
			in.Check, in.Weight = model.CheckPassing, uint32(max(e.Service.Weights.Passing, 0))
		case api.HealthWarning:
			in.Check, in.Weight = model.CheckWarning, uint32(max(e.Service.Weights.Warning, 0))
		default:
			in.Check = model.CheckCritical
		}
		if len(in.Tags) == 0 {
			in.Tags = nil
		}
		if len(in.Meta) == 0 {
			in.Meta = nil
		}
		out = append(out, in)
	}
	slices.SortFunc(out, func(a, b model.Instance) int { return strings.Compare(a.ID, b.ID) })
	return out
}
