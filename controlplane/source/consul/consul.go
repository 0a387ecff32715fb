// Package consul is the control plane's Consul source. It holds a small,
// fixed number of connections to Consul whatever the catalog's size: three
// blocking queries signal changes (catalog/services for registrations,
// health/state/any filtered to the checks that are not passing for check
// changes, catalog/nodes for node addresses), and the sync loop reads
// every check (health/state/any) after a registration change, then fetches
// /v1/health/service/<name> for the services those changes name with a
// bounded pool of workers (see state for how they are found). A failed
// query is retried forever with backoff while the last good view stays in
// force.
package consul

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/controlplane/source"
	"github.com/meshvm/mesh/wire"
)

// Name is the source's name in logs and metrics.
const Name = "consul"

// watches is the number of blocking queries the source holds open.
const watches = 3

// Options tune the source; zero values take defaults.
type Options struct {
	// Wait is the blocking queries' wait time (default 60s).
	Wait time.Duration
	// MinBackoff and MaxBackoff bound the retry wait (100ms, 15s).
	MinBackoff, MaxBackoff time.Duration
	// Workers is how many services are fetched at once (default 8). The
	// source opens at most Workers+3 connections to Consul.
	Workers int
	// MinInterval paces fetch rounds: a burst of a few rounds runs at once,
	// then at most one round per MinInterval. It is also the least time
	// between two queries of one watch (default 100ms).
	MinInterval time.Duration
	// Resync is how often every service's index is checked anyway
	// (default 5m): a safety net for changes no watch attributed.
	Resync time.Duration
	// Stale lets any Consul server answer (?stale), spreading the load
	// off the leader at the cost of reads that may lag by a little.
	Stale bool
}

// notPassing filters the checks watch to the checks that are not passing.
// Consul still blocks on the whole checks table (the watch wakes on every
// check write), but an answer holds only the failing checks, not every
// check in the catalog (~35 MB of JSON at 100,000 checks). A check going
// critical or warning appears in it; one going back to passing leaves it.
const notPassing = `Status != "passing"`

// grace is how long a registration change waits for the checks list
// before every service is checked instead.
const grace = 5 * time.Second

// Source watches Consul.
type Source struct {
	client *api.Client
	// transport holds the connections; closed idle on stop, so a stopped
	// source leaves no connection goroutines behind.
	transport *http.Transport
	log       zerolog.Logger
	opts      Options
	status    source.Tracker
}

// New returns a source for the Consul agent cfg names; it contacts nothing.
func New(cfg config.Consul, log zerolog.Logger, opts Options) (*Source, error) {
	if opts.Wait <= 0 {
		opts.Wait = time.Minute
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 100 * time.Millisecond
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 15 * time.Second
	}
	if opts.Workers <= 0 {
		opts.Workers = 8
	}
	if opts.MinInterval <= 0 {
		opts.MinInterval = 100 * time.Millisecond
	}
	if opts.Resync <= 0 {
		opts.Resync = 5 * time.Minute
	}
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
	// A hard bound: Consul refuses a client more than
	// limits.http_max_conns_per_client (200) connections.
	c.Transport.MaxConnsPerHost = opts.Workers + watches
	c.Transport.MaxIdleConnsPerHost = opts.Workers + watches
	c.HttpClient = &http.Client{Transport: c.Transport}
	client, err := api.NewClient(c)
	if err != nil {
		return nil, fmt.Errorf("consul client for %s: %w", cfg.Addr, err)
	}
	return &Source{client: client, transport: c.Transport, log: log, opts: opts}, nil
}

// Name implements source.Source.
func (s *Source) Name() string { return Name }

// Status implements source.Source.
func (s *Source) Status() source.Status { return s.status.Status() }

// Run implements source.Source. The first view is sent once every service
// in the catalog has been fetched; later views follow each change, and an
// unchanged catalog sends nothing.
func (s *Source) Run(ctx context.Context, out chan<- model.View) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait(); s.transport.CloseIdleConnections() }()

	wake := make(chan struct{}, 1)
	var services latest[map[string][]string]
	var checks latest[api.HealthChecks]
	var nodes latest[[]*api.Node]
	wg.Add(watches)
	go func() {
		defer wg.Done()
		watch(ctx, s, "catalog services", s.client.Catalog().Services, &services, wake)
	}()
	go func() {
		defer wg.Done()
		watch(ctx, s, "checks", func(q *api.QueryOptions) (api.HealthChecks, *api.QueryMeta, error) {
			q.Filter = notPassing
			return s.client.Health().State(api.HealthAny, q)
		}, &checks, wake)
	}()
	go func() {
		defer wg.Done()
		watch(ctx, s, "catalog nodes", s.client.Catalog().Nodes, &nodes, wake)
	}()

	st := newState()
	b := source.Backoff{Min: s.opts.MinBackoff, Max: s.opts.MaxBackoff}
	pace := pacer{every: s.opts.MinInterval, burst: roundBurst}
	var next time.Time // rounds wait until then after a failure
	resyncAt := time.Now().Add(s.opts.Resync)
	sent, changed, failing := false, false, false
	for {
		now := time.Now()
		if r, ok := services.take(); ok {
			changed = st.applyServices(r, now) || changed
		}
		if r, ok := checks.take(); ok {
			st.applyFailing(r)
		}
		if r, ok := nodes.take(); ok {
			st.applyNodes(r, now)
		}
		deadline := st.explain(now, grace)
		if sent && !now.Before(resyncAt) {
			st.sweep, resyncAt = true, now.Add(s.opts.Resync)
		}
		st.prune()
		work := st.ready() && (len(st.dirty) > 0 || st.sweep || st.needsChecks())
		ran, at := false, next
		if work {
			at = later(next, pace.ready(now))
		}
		if work && !now.Before(at) {
			ran = true
			pace.spend()
			c, err := s.round(ctx, st)
			if ctx.Err() != nil {
				return nil
			}
			changed = changed || c
			if err != nil {
				s.failed(&failing, err)
				next = time.Now().Add(b.Next())
			} else {
				s.succeeded(&failing, "fetch")
				b.Reset()
			}
		}
		if st.ready() && (sent || st.complete()) && (changed || !sent) {
			select {
			case out <- st.view():
				s.log.Debug().Int("services", len(st.known)).Msg("view sent")
				sent, changed = true, false
			case <-ctx.Done():
				return nil
			}
		}
		if ran {
			continue
		}
		wait := time.Until(resyncAt)
		if work {
			wait = min(wait, time.Until(at))
		}
		if !deadline.IsZero() {
			wait = min(wait, time.Until(deadline))
		}
		t := time.NewTimer(max(wait, 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// roundBurst is how many fetch rounds may run back to back before pacing
// sets in: related changes (a service removed, another added) then arrive
// without waiting, while a catalog that never settles is fetched at most
// once per MinInterval.
const roundBurst = 4

// pacer is a token bucket of rounds (or queries): burst tokens, one more
// every every.
type pacer struct {
	every  time.Duration
	burst  float64
	tokens float64
	last   time.Time
}

// ready returns when a token is there (now if one is).
func (p *pacer) ready(now time.Time) time.Time {
	if p.last.IsZero() {
		p.tokens = p.burst
	} else {
		p.tokens = min(p.burst, p.tokens+float64(now.Sub(p.last))/float64(p.every))
	}
	p.last = now
	if p.tokens >= 1 {
		return now
	}
	return now.Add(time.Duration((1 - p.tokens) * float64(p.every)))
}

// spend takes a token.
func (p *pacer) spend() { p.tokens-- }

// round does the work st asks for: the read of every check after a
// registration change, a sweep, then the fetch of every dirty service,
// Workers at a time. What succeeded is kept even when something failed;
// the failures stay dirty.
func (s *Source) round(ctx context.Context, st *state) (changed bool, err error) {
	if st.needsChecks() {
		at := st.catalogIndex
		checks, idx, err := s.allChecks(ctx)
		if err != nil {
			return false, err
		}
		st.applyChecks(result[api.HealthChecks]{val: checks, index: idx}, at, time.Now())
		st.explain(time.Now(), grace)
	}
	if st.sweep {
		names := make([]string, 0, len(st.services))
		for name := range st.services {
			names = append(names, name)
		}
		idx := make([]uint64, len(names))
		errs := s.each(ctx, names, func(ctx context.Context, i int) (err error) {
			idx[i], err = s.serviceIndex(ctx, names[i])
			return err
		})
		failed := false
		for i, name := range names {
			if errs[i] != nil {
				failed = true
				err = cmpErr(err, errs[i])
				continue
			}
			if f := st.known[name]; f == nil || f.index != idx[i] {
				st.dirty[name] = true
			}
		}
		st.sweep = failed
	}
	st.prune()
	names := make([]string, 0, len(st.dirty))
	for name := range st.dirty {
		names = append(names, name)
	}
	slices.Sort(names)
	defer func(t0 time.Time) {
		s.log.Debug().Int("fetched", len(names)).Dur("took", time.Since(t0)).Msg("fetch round")
	}(time.Now())
	entries := make([][]*api.ServiceEntry, len(names))
	idx := make([]uint64, len(names))
	errs := s.each(ctx, names, func(ctx context.Context, i int) (err error) {
		entries[i], idx[i], err = s.fetch(ctx, names[i])
		return err
	})
	for i, name := range names {
		if errs[i] != nil {
			err = cmpErr(err, errs[i])
			continue
		}
		delete(st.dirty, name)
		if st.store(name, idx[i], Instances(entries[i])) {
			changed = true
		}
	}
	return changed, err
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// each runs fn for every index of names on at most Workers goroutines
// and returns each call's error.
func (s *Source) each(ctx context.Context, names []string, fn func(ctx context.Context, i int) error) []error {
	errs := make([]error, len(names))
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range min(s.opts.Workers, len(names)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				errs[i] = fn(qctx, i)
				cancel()
			}
		}()
	}
	for i := range names {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	return errs
}

// fetch reads one service's instances and its per-service index.
func (s *Source) fetch(ctx context.Context, name string) ([]*api.ServiceEntry, uint64, error) {
	entries, meta, err := s.client.Health().Service(name, "", false, s.queryOptions(ctx, 0, 0))
	if err != nil {
		return nil, 0, fmt.Errorf("health of service %s: %w", name, err)
	}
	return entries, meta.LastIndex, nil
}

// serviceIndex reads a service's index (the one health/service answers
// with) without its data: the filter matches nothing (IDs are never empty).
func (s *Source) serviceIndex(ctx context.Context, name string) (uint64, error) {
	q := s.queryOptions(ctx, 0, 0)
	q.Filter = `ServiceID == ""`
	_, meta, err := s.client.Catalog().Service(name, "", q)
	if err != nil {
		return 0, fmt.Errorf("index of service %s: %w", name, err)
	}
	return meta.LastIndex, nil
}

// allChecks reads every check, without blocking.
func (s *Source) allChecks(ctx context.Context) (api.HealthChecks, uint64, error) {
	qctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	checks, meta, err := s.client.Health().State(api.HealthAny, s.queryOptions(qctx, 0, 0))
	if err != nil {
		return nil, 0, fmt.Errorf("every check: %w", err)
	}
	return checks, meta.LastIndex, nil
}

func (s *Source) failed(failing *bool, err error) {
	hadView := !s.status.Status().LastSuccess.IsZero()
	s.status.Failed(err)
	switch {
	case *failing || errors.Is(err, context.Canceled):
	case hadView:
		s.log.Warn().Err(err).Msg("consul query failed, keeping the last good view and retrying")
	default:
		s.log.Warn().Err(err).Msg("consul query failed before the first view; retrying")
	}
	*failing = true
}

func (s *Source) succeeded(failing *bool, what string) {
	s.status.Succeeded()
	if *failing {
		s.log.Info().Str("query", what).Msg("consul query recovered")
	}
	*failing = false
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
		// The agent's own VM name: agents may register through a Consul
		// agent that is not on their VM, whose node name is not theirs.
		if in.Node = e.Service.Meta[wire.MetaNode]; in.Node == "" && e.Node != nil {
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
