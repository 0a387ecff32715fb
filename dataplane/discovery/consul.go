// Package discovery answers the agent's one question about other services,
// "which healthy instances does service X have?", straight from Consul. It
// is what an agent uses when no control plane is configured (later, the xDS
// client answers the same question through the same endpoint.Resolver).
//
// A watch is a Consul blocking query. There is one on the catalog's service
// list, so that a name Consul has never heard of is told apart from a
// service whose instances are all unhealthy, and one per service in use,
// started by the first Resolve of that service and shared by every request.
// A service's watch lives until Run ends or the service leaves the catalog;
// a service that is merely no longer called keeps its watch (one idle
// blocking query per wait time), so goroutines are bounded by the number of
// services in the catalog, whatever names callers send.
//
// Resolve answers from memory: each watch publishes an immutable endpoint
// slice through an atomic pointer. When Consul fails, the last good answer
// keeps serving; a watch never publishes "no endpoints" because of an error.
package discovery

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/wire"
)

// Defaults for the Options.
const (
	DefaultFirstWait   = 5 * time.Second
	DefaultWaitTime    = time.Minute
	DefaultMinInterval = 100 * time.Millisecond
	DefaultMaxBackoff  = 10 * time.Second
	minBackoff         = 200 * time.Millisecond
)

// Errors Resolve returns for a service it has no answer for yet. Both
// wrap no endpoint information: the caller cannot route (503).
var (
	// ErrStopped: Run has returned.
	ErrStopped = errors.New("discovery stopped")
	// ErrUnavailable: Consul failed before its first answer about the
	// service (or about the catalog). Resolve fails fast then rather than
	// make every request wait while Consul is down.
	ErrUnavailable = errors.New("consul unavailable")
)

// Option tunes a Consul resolver.
type Option func(*Consul)

// WithFirstWait bounds how long the first Resolve of a service waits for
// Consul's first answer, whatever the caller's context (default 5s).
func WithFirstWait(d time.Duration) Option { return func(c *Consul) { c.firstWait = d } }

// WithWaitTime sets the blocking queries' wait time (default 1m).
func WithWaitTime(d time.Duration) Option { return func(c *Consul) { c.waitTime = d } }

// WithMinInterval sets the least time between two queries of one watch, so
// a service that changes very often cannot make the watch spin (default
// 100ms). It is also the most a change can be delayed by this limit.
func WithMinInterval(d time.Duration) Option { return func(c *Consul) { c.minInterval = d } }

// WithMaxBackoff caps the wait between retries after Consul errors
// (default 10s).
func WithMaxBackoff(d time.Duration) Option { return func(c *Consul) { c.maxBackoff = d } }

// Consul resolves services from Consul's health API. Create it with
// NewConsul, run it with Run; Resolve may be called before Run starts
// (it waits for Run, bounded like any first lookup).
type Consul struct {
	client      *consulapi.Client
	log         zerolog.Logger
	firstWait   time.Duration
	waitTime    time.Duration
	minInterval time.Duration
	maxBackoff  time.Duration

	// watches is copy-on-write under mu and read without locks.
	watches atomic.Pointer[map[string]*watch]
	// catalog is the set of service names Consul knows; nil until the
	// catalog watch's first answer.
	catalog      atomic.Pointer[map[string]struct{}]
	catalogState state

	mu      sync.Mutex
	runCtx  context.Context // set by Run; nil before
	stopped chan struct{}   // closed when Run has stopped every watch
	wg      sync.WaitGroup
}

// watch is one service's blocking query and its last good answer.
type watch struct {
	service string
	eps     atomic.Pointer[[]endpoint.Endpoint] // set before state.ok
	state   state
	cancel  context.CancelFunc
}

// state is how far a watch has come: whether it has answered, whether its
// last query failed, and a channel closed at its first outcome (an answer
// or a failure), which first lookups wait on.
type state struct {
	ok      atomic.Bool
	failing atomic.Bool
	settled chan struct{}
	once    sync.Once
}

func newState() state { return state{settled: make(chan struct{})} }

func (s *state) settle() { s.once.Do(func() { close(s.settled) }) }

// NewConsul returns a resolver reading from client (which carries the
// Consul address and token). It starts nothing: Run does.
func NewConsul(client *consulapi.Client, log zerolog.Logger, opts ...Option) *Consul {
	c := &Consul{
		client:       client,
		log:          log.With().Str("component", "discovery").Logger(),
		firstWait:    DefaultFirstWait,
		waitTime:     DefaultWaitTime,
		minInterval:  DefaultMinInterval,
		maxBackoff:   DefaultMaxBackoff,
		catalogState: newState(),
		stopped:      make(chan struct{}),
	}
	for _, o := range opts {
		o(c)
	}
	empty := map[string]*watch{}
	c.watches.Store(&empty)
	return c
}

// Run watches Consul until ctx is done, then stops every watch and waits
// for them. Endpoints already known keep being answered after Run returns
// (an agent that is draining still routes). Run returns nil, or an error
// if it was already called.
func (c *Consul) Run(ctx context.Context) error {
	c.mu.Lock()
	if c.runCtx != nil {
		c.mu.Unlock()
		return errors.New("discovery: Run called twice")
	}
	c.runCtx = ctx
	c.wg.Add(1)
	go c.watchCatalog(ctx)
	for _, w := range *c.watches.Load() {
		c.startLocked(w)
	}
	c.mu.Unlock()

	<-ctx.Done()
	c.mu.Lock()
	close(c.stopped) // no watch starts after this
	c.mu.Unlock()
	c.wg.Wait()
	return nil
}

// Resolve returns the passing instances of service. After the first lookup
// of a service it answers from memory without allocating; the first lookup
// starts the service's watch and waits for its first answer, for at most
// the first-wait bound or until ctx is done.
func (c *Consul) Resolve(ctx context.Context, service string) ([]endpoint.Endpoint, error) {
	if w := (*c.watches.Load())[service]; w != nil && w.state.ok.Load() {
		return c.answer(w)
	}
	return c.resolveSlow(ctx, service)
}

func (c *Consul) answer(w *watch) ([]endpoint.Endpoint, error) {
	eps := *w.eps.Load()
	if len(eps) == 0 && !c.known(w.service) {
		return nil, endpoint.ErrUnknownService
	}
	return eps, nil
}

// known reports whether the catalog holds service; before the catalog's
// first answer, nothing is known.
func (c *Consul) known(service string) bool {
	cat := c.catalog.Load()
	if cat == nil {
		return false
	}
	_, ok := (*cat)[service]
	return ok
}

func (c *Consul) resolveSlow(ctx context.Context, service string) ([]endpoint.Endpoint, error) {
	// A name the catalog does not hold gets no watch: callers cannot make
	// goroutines by sending made-up names. This path does not allocate.
	if c.catalog.Load() != nil && !c.known(service) {
		return nil, endpoint.ErrUnknownService
	}
	if c.firstWait > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.firstWait)
		defer cancel()
	}
	if err := c.wait(ctx, &c.catalogState, service); err != nil {
		return nil, err
	}
	if !c.known(service) {
		return nil, endpoint.ErrUnknownService
	}
	w, err := c.ensureWatch(service)
	if err != nil {
		return nil, err
	}
	if err := c.wait(ctx, &w.state, service); err != nil {
		return nil, err
	}
	return c.answer(w)
}

// wait waits for st's first outcome; it fails if that was an error.
func (c *Consul) wait(ctx context.Context, st *state, service string) error {
	select {
	case <-st.settled:
	case <-c.stopped:
		return fmt.Errorf("resolve %s: %w", service, ErrStopped)
	case <-ctx.Done():
		return fmt.Errorf("resolve %s: waiting for consul's first answer: %w", service, ctx.Err())
	}
	if !st.ok.Load() {
		return fmt.Errorf("resolve %s: %w", service, ErrUnavailable)
	}
	return nil
}

// ensureWatch returns service's watch, creating it (and starting it if
// Run is running) when there is none.
func (c *Consul) ensureWatch(service string) (*watch, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := *c.watches.Load()
	if w := old[service]; w != nil {
		return w, nil
	}
	select {
	case <-c.stopped:
		return nil, fmt.Errorf("resolve %s: %w", service, ErrStopped)
	default:
	}
	if !c.known(service) {
		// The catalog dropped it since the caller looked: dropWatches
		// would not see a watch made now.
		return nil, endpoint.ErrUnknownService
	}
	w := &watch{service: service, state: newState()}
	next := maps.Clone(old)
	next[service] = w
	c.watches.Store(&next)
	if c.runCtx != nil {
		c.startLocked(w)
	}
	return w, nil
}

// startLocked starts w's goroutine; c.mu must be held.
func (c *Consul) startLocked(w *watch) {
	ctx, cancel := context.WithCancel(c.runCtx)
	w.cancel = cancel
	c.wg.Add(1)
	go c.watchService(ctx, w)
}

// dropWatches stops and forgets the watches of services that left the
// catalog, so the next Resolve answers ErrUnknownService.
func (c *Consul) dropWatches(catalog map[string]struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := *c.watches.Load()
	var next map[string]*watch
	for name, w := range old {
		if _, ok := catalog[name]; ok {
			continue
		}
		if next == nil {
			next = maps.Clone(old)
		}
		delete(next, name)
		if w.cancel != nil {
			w.cancel()
		}
		c.log.Debug().Str("service", name).Msg("service left the catalog, watch stopped")
	}
	if next != nil {
		c.watches.Store(&next)
	}
}

// Snapshot returns the endpoints of every service answered so far, for
// /config_dump. The slices are shared and must not be modified.
func (c *Consul) Snapshot() map[string][]endpoint.Endpoint {
	out := map[string][]endpoint.Endpoint{}
	for name, w := range *c.watches.Load() {
		if w.state.ok.Load() {
			out[name] = *w.eps.Load()
		}
	}
	return out
}

// blockingLoop runs one blocking-query watch as Consul recommends: it
// resets the index when it goes backwards, waits at least minInterval
// between queries, and backs off with jitter on errors, retrying forever.
// fetch does one query at index, publishes its answer and returns the new
// index; blockingLoop records the outcome in st.
func (c *Consul) blockingLoop(ctx context.Context, what string, st *state, fetch func(ctx context.Context, index uint64) (uint64, error)) {
	var index uint64
	backoff := minBackoff
	failing := false
	var last time.Time
	for {
		if d := c.minInterval - time.Since(last); d > 0 && !sleep(ctx, d) {
			return
		}
		last = time.Now()
		next, err := fetch(ctx, index)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			switch {
			case failing:
				c.log.Debug().Err(err).Str("watch", what).Dur("backoff", backoff).Msg("consul query still failing")
			case st.ok.Load():
				c.log.Warn().Err(err).Str("watch", what).Msg("consul query failing, keeping the last good answer")
			default:
				c.log.Warn().Err(err).Str("watch", what).Msg("consul query failing before its first answer; nothing to route by yet, retrying")
			}
			failing = true
			st.failing.Store(true)
			st.settle()
			if !sleep(ctx, jitter(backoff)) {
				return
			}
			backoff = min(backoff*2, c.maxBackoff)
			continue
		}
		st.ok.Store(true)
		st.failing.Store(false)
		st.settle()
		if failing {
			c.log.Info().Str("watch", what).Msg("consul query recovered")
			failing = false
		}
		backoff = minBackoff
		if next < index {
			index = 0 // the index went backwards (a new leader, a snapshot restore)
		} else {
			index = next
		}
	}
}

func (c *Consul) watchCatalog(ctx context.Context) {
	defer c.wg.Done()
	var lastIndex uint64
	c.blockingLoop(ctx, "catalog", &c.catalogState, func(ctx context.Context, index uint64) (uint64, error) {
		q := (&consulapi.QueryOptions{WaitIndex: index, WaitTime: c.waitTime, AllowStale: true}).WithContext(ctx)
		services, meta, err := c.client.Catalog().Services(q)
		if err != nil {
			return 0, fmt.Errorf("list catalog services: %w", err)
		}
		if cur := c.catalog.Load(); cur != nil && meta.LastIndex == lastIndex {
			return meta.LastIndex, nil // the wait timed out, nothing changed
		}
		lastIndex = meta.LastIndex
		set := make(map[string]struct{}, len(services))
		for name := range services {
			set[name] = struct{}{}
		}
		cur := c.catalog.Load()
		if cur == nil || !maps.Equal(*cur, set) {
			c.catalog.Store(&set)
			c.dropWatches(set)
		}
		return meta.LastIndex, nil
	})
}

func (c *Consul) watchService(ctx context.Context, w *watch) {
	defer c.wg.Done()
	var lastIndex uint64
	c.blockingLoop(ctx, w.service, &w.state, func(ctx context.Context, index uint64) (uint64, error) {
		q := (&consulapi.QueryOptions{WaitIndex: index, WaitTime: c.waitTime, AllowStale: true}).WithContext(ctx)
		entries, meta, err := c.client.Health().Service(w.service, "", true, q)
		if err != nil {
			return 0, fmt.Errorf("health of %s: %w", w.service, err)
		}
		if w.state.ok.Load() && meta.LastIndex == lastIndex {
			return meta.LastIndex, nil
		}
		lastIndex = meta.LastIndex
		eps := Endpoints(entries)
		if cur := w.eps.Load(); cur == nil || !equal(*cur, eps) {
			w.eps.Store(&eps)
			c.log.Debug().Str("service", w.service).Int("endpoints", len(eps)).Msg("endpoints changed")
		}
		return meta.LastIndex, nil
	})
}

// Endpoints turns Consul health entries into endpoints, sorted by address
// then node. The address is the service's (the callee agent's inbound
// listener), or its node's when the service has none; the node, zone and
// region come from the meta the agent registers (mesh_node, else the Consul
// node's name; mesh_zone, mesh_region); the weight is
// the service's passing weight. It never returns nil.
func Endpoints(entries []*consulapi.ServiceEntry) []endpoint.Endpoint {
	eps := make([]endpoint.Endpoint, 0, len(entries))
	for _, e := range entries {
		if e.Service == nil {
			continue
		}
		host := e.Service.Address
		// The VM's name is what its agent registered (mesh_node): many
		// agents register through one Consul agent, whose node name is
		// not theirs.
		node := e.Service.Meta[wire.MetaNode]
		if e.Node != nil {
			if node == "" {
				node = e.Node.Node
			}
			if host == "" {
				host = e.Node.Address
			}
		}
		var weight uint32
		if p := e.Service.Weights.Passing; p > 0 {
			weight = uint32(p)
		}
		eps = append(eps, endpoint.Endpoint{
			Addr:   net.JoinHostPort(host, strconv.Itoa(e.Service.Port)),
			Node:   node,
			Region: e.Service.Meta[wire.MetaRegion],
			Zone:   e.Service.Meta[wire.MetaZone],
			Weight: weight,
			Meta:   e.Service.Meta,
			// The callee's agent registers what its app speaks.
			Protocol: endpoint.ParseProtocol(e.Service.Meta[config.MetaAppProtocol]),
		})
	}
	slices.SortFunc(eps, func(a, b endpoint.Endpoint) int {
		if c := strings.Compare(a.Addr, b.Addr); c != 0 {
			return c
		}
		return strings.Compare(a.Node, b.Node)
	})
	return eps
}

func equal(a, b []endpoint.Endpoint) bool {
	return slices.EqualFunc(a, b, func(x, y endpoint.Endpoint) bool {
		return x.Addr == y.Addr && x.Node == y.Node && x.Region == y.Region && x.Zone == y.Zone &&
			x.Weight == y.Weight && maps.Equal(x.Meta, y.Meta)
	})
}

// sleep waits d or until ctx is done; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// jitter returns d ± 20%.
func jitter(d time.Duration) time.Duration {
	return d - d/5 + rand.N(2*d/5+1)
}
