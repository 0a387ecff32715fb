package xds

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// endpointCache serves load assignments to state-of-the-world streams. Every
// node gets the same assignments, and an agent subscribes to all of them
// (10,000 names at 10,000 services), so it is built for many clients with
// large subscriptions and changes touching few names:
//   - each assignment is marshalled once per content, for all clients;
//   - a response holds only the assignments that changed for that client
//     (the xDS protocol allows it for EDS), never the whole set;
//   - an open watch is one map entry, not one per subscribed name, and an
//     update checks each watch against the changed names only.
//
// go-control-plane's LinearCache does the first two, but indexes every
// watch under each of its names: at 200 agents x 10,000 names that cost
// seconds per change (see docs/benchmarks.md). Delta streams still use a
// LinearCache (see Server).
type endpointCache struct {
	mu sync.Mutex
	// version is the content version of the whole set, sent as
	// version_info.
	version string
	res     map[string]*edsEntry
	watches map[uint64]*edsWatch
	nextID  uint64
}

type edsEntry struct {
	// version is the content hash of the assignment.
	version string
	any     *anypb.Any
}

type edsWatch struct {
	req *cache.Request
	sub cache.Subscription
	out chan cache.Response
}

func newEndpointCache() *endpointCache {
	return &endpointCache{res: map[string]*edsEntry{}, watches: map[uint64]*edsWatch{}}
}

// update sets the assignments in changed (name -> resource, with its
// content version in versions), removes those in gone, and answers the
// open watches that subscribe to a changed name.
func (c *endpointCache) update(version string, changed map[string]types.Resource, versions map[string]string, gone []string) error {
	entries := make(map[string]*edsEntry, len(changed))
	for name, r := range changed {
		b, err := cache.MarshalResource(r)
		if err != nil {
			return fmt.Errorf("marshal load assignment %s: %w", name, err)
		}
		entries[name] = &edsEntry{version: versions[name], any: &anypb.Any{TypeUrl: resourcev3.EndpointType, Value: b}}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.version = version
	maps.Copy(c.res, entries)
	for _, name := range gone {
		delete(c.res, name)
	}
	if len(entries) == 0 {
		return nil // state of the world cannot tell a client that an assignment is gone
	}
	for id, w := range c.watches {
		if resp := c.respond(w, entries, false); resp != nil {
			delete(c.watches, id)
			w.out <- resp
		}
	}
	return nil
}

// respond builds the response of w for the assignments in cand that the
// watch subscribes to and its client does not hold at their version, or
// nil if there are none (and !always). c.mu is held.
func (c *endpointCache) respond(w *edsWatch, cand map[string]*edsEntry, always bool) cache.Response {
	returned := w.sub.ReturnedResources()
	var names []string
	check := func(name string, e *edsEntry) {
		if v, ok := returned[name]; !ok || v != e.version {
			names = append(names, name)
		}
	}
	switch subscribed := w.sub.SubscribedResources(); {
	case w.sub.IsWildcard():
		for name, e := range cand {
			check(name, e)
		}
	case len(cand) < len(subscribed):
		for name, e := range cand {
			if _, ok := subscribed[name]; ok {
				check(name, e)
			}
		}
	default:
		for name := range subscribed {
			if e, ok := cand[name]; ok {
				check(name, e)
			}
		}
	}
	if len(names) == 0 && !always {
		return nil
	}
	next := maps.Clone(returned)
	if next == nil {
		next = map[string]string{}
	}
	anys := make([]*anypb.Any, len(names))
	for i, name := range names {
		e := cand[name]
		anys[i] = e.any
		next[name] = e.version
	}
	// Forget what the client no longer subscribes to, so a later
	// subscription sends it again.
	if !w.sub.IsWildcard() {
		subscribed := w.sub.SubscribedResources()
		for name := range next {
			if _, ok := subscribed[name]; !ok {
				delete(next, name)
			}
		}
	}
	return &edsResponse{req: w.req, version: c.version, resources: anys, returned: next}
}

// CreateWatch implements cache.ConfigWatcher for state-of-the-world EDS.
func (c *endpointCache) CreateWatch(req *cache.Request, sub cache.Subscription, out chan cache.Response) (func(), error) {
	if req.GetTypeUrl() != resourcev3.EndpointType {
		return nil, fmt.Errorf("endpoint cache asked for %s", req.GetTypeUrl())
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	w := &edsWatch{req: req, sub: sub, out: out}
	// A request without a version starts the client's state: it gets an
	// answer even if none of its names exist yet.
	if resp := c.respond(w, c.res, req.GetVersionInfo() == ""); resp != nil {
		out <- resp
		return func() {}, nil
	}
	c.nextID++
	id := c.nextID
	c.watches[id] = w
	return func() {
		c.mu.Lock()
		delete(c.watches, id)
		c.mu.Unlock()
	}, nil
}

// CreateDeltaWatch implements cache.ConfigWatcher; delta streams are
// served by another cache.
func (c *endpointCache) CreateDeltaWatch(*cache.DeltaRequest, cache.Subscription, chan cache.DeltaResponse) (func(), error) {
	return nil, errors.New("endpoint cache serves state-of-the-world streams only")
}

// Fetch implements cache.ConfigFetcher (REST is not served).
func (c *endpointCache) Fetch(context.Context, *cache.Request) (cache.Response, error) {
	return nil, errors.New("fetch is not served")
}

// edsResponse is a response whose resources are already marshalled.
type edsResponse struct {
	req       *cache.Request
	version   string
	resources []*anypb.Any
	returned  map[string]string
}

func (r *edsResponse) GetDiscoveryResponse() (*discovery.DiscoveryResponse, error) {
	return &discovery.DiscoveryResponse{VersionInfo: r.version, Resources: r.resources, TypeUrl: resourcev3.EndpointType}, nil
}

func (r *edsResponse) GetRequest() *discovery.DiscoveryRequest { return r.req }

func (r *edsResponse) GetVersion() (string, error) { return r.version, nil }

func (r *edsResponse) GetResponseVersion() string { return r.version }

func (r *edsResponse) GetReturnedResources() map[string]string { return r.returned }

func (r *edsResponse) GetContext() context.Context { return context.Background() }

// holdsCurrent reports whether a state-of-the-world client of node is
// waiting (an open watch) while holding the current version of every
// assignment it subscribes to: it is in sync even when the version it
// ACKed is not the last one sent, as after a rejected update whose cause
// went away (removals send nothing; see update).
func (c *endpointCache) holdsCurrent(node string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	found := false
	for _, w := range c.watches {
		if w.req.GetNode().GetId() != node {
			continue
		}
		found = true
		returned := w.sub.ReturnedResources()
		check := func(name string, e *edsEntry) bool { return returned[name] == e.version }
		if w.sub.IsWildcard() {
			for name, e := range c.res {
				if !check(name, e) {
					return false
				}
			}
			continue
		}
		for name := range w.sub.SubscribedResources() {
			if e, ok := c.res[name]; ok && !check(name, e) {
				return false
			}
		}
	}
	return found
}
