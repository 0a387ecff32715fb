package xds

import (
	"context"
	"errors"
	"fmt"
	"sync"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// deltaCache serves clusters, listeners and route configurations to delta
// streams from each node's snapshot, name by name: answering a request or
// a push costs what the stream subscribes to, not what the snapshot
// holds. An agent subscribes to ~10 of 10,000 shared clusters;
// go-control-plane's snapshot cache (which still serves state-of-the-world
// streams) asks a snapshot for its whole resource and version maps on
// every delta request and every push, which for a Layer is a merge of the
// shared set with the node's own, O(all services) per node (decision 67).
//
// What it sends is what go-control-plane's snapshot cache sends for the
// same snapshot and subscription (cache/v3 createDeltaResponse): the
// subscribed resources whose version differs from the one the stream
// holds, the held ones that are gone, every resource for a wildcard
// subscription; the per-resource versions are the content hashes of the
// sets (decision 61), so a reconnecting client's initial versions match.
type deltaCache struct {
	mu     sync.Mutex
	nodes  map[string]*deltaNode
	nextID int64
}

type deltaNode struct {
	snap    *Snapshot
	watches map[int64]*deltaWatch
}

type deltaWatch struct {
	req *cache.DeltaRequest
	sub cache.Subscription
	out chan cache.DeltaResponse
}

func newDeltaCache() *deltaCache { return &deltaCache{nodes: map[string]*deltaNode{}} }

func (c *deltaCache) node(id string) *deltaNode {
	n := c.nodes[id]
	if n == nil {
		n = &deltaNode{watches: map[int64]*deltaWatch{}}
		c.nodes[id] = n
	}
	return n
}

// set makes snap the node's snapshot and answers its open watches of
// typeURL that it changes something for.
func (c *deltaCache) set(id string, snap *Snapshot, typeURL string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.node(id)
	n.snap = snap
	for wid, w := range n.watches {
		if w.req.GetTypeUrl() != typeURL {
			continue
		}
		resp, err := respondDelta(snap, w.req, w.sub)
		if err != nil {
			return fmt.Errorf("answer node %s: %w", id, err)
		}
		if resp != nil {
			delete(n.watches, wid)
			w.out <- resp
		}
	}
	return nil
}

// clear forgets a node and its watches.
func (c *deltaCache) clear(id string) {
	c.mu.Lock()
	delete(c.nodes, id)
	c.mu.Unlock()
}

// CreateDeltaWatch implements cache.ConfigWatcher: it answers at once if
// the node's snapshot has something for the subscription, else keeps the
// watch until a snapshot does.
func (c *deltaCache) CreateDeltaWatch(req *cache.DeltaRequest, sub cache.Subscription, out chan cache.DeltaResponse) (func(), error) {
	id := req.GetNode().GetId()
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.node(id)
	if n.snap != nil {
		resp, err := respondDelta(n.snap, req, sub)
		if err != nil {
			return nil, fmt.Errorf("answer node %s: %w", id, err)
		}
		if resp != nil {
			out <- resp
			return nil, nil
		}
	}
	c.nextID++
	wid := c.nextID
	n.watches[wid] = &deltaWatch{req: req, sub: sub, out: out}
	return func() {
		c.mu.Lock()
		if n := c.nodes[id]; n != nil {
			delete(n.watches, wid)
		}
		c.mu.Unlock()
	}, nil
}

// CreateWatch implements cache.ConfigWatcher; state-of-the-world streams
// are served by the snapshot cache.
func (c *deltaCache) CreateWatch(*cache.Request, cache.Subscription, chan cache.Response) (func(), error) {
	return nil, errors.New("delta cache serves delta streams only")
}

// Fetch implements cache.ConfigFetcher (REST is not served).
func (c *deltaCache) Fetch(context.Context, *cache.Request) (cache.Response, error) {
	return nil, errors.New("fetch is not served")
}

// respondDelta is the response to a delta watch from snap, or nil when
// there is nothing to send: only a wildcard subscription's first request
// is answered even when empty (the client waits for it to initialise).
func respondDelta(snap *Snapshot, req *cache.DeltaRequest, sub cache.Subscription) (*deltaResponse, error) {
	l := snap.layer(req.GetTypeUrl())
	if l == nil {
		return nil, fmt.Errorf("no %s in the snapshot", req.GetTypeUrl())
	}
	returned := sub.ReturnedResources()
	resp := &deltaResponse{req: req, version: l.Version}
	if sub.IsWildcard() {
		resp.next = make(map[string]string, l.Len())
		l.each(func(name string, r types.Resource, v string) {
			resp.next[name] = v
			if prev, ok := returned[name]; !ok || prev != v {
				resp.add(name, r, v)
			}
		})
		for name := range returned {
			if _, _, ok := l.get(name); !ok {
				resp.removed = append(resp.removed, name)
			}
		}
		if len(resp.names) == 0 && len(resp.removed) == 0 && req.GetResponseNonce() != "" {
			return nil, nil
		}
		return resp, nil
	}
	subscribed := sub.SubscribedResources()
	resp.next = make(map[string]string, len(subscribed))
	for name := range subscribed {
		prev, held := returned[name]
		r, v, ok := l.get(name)
		switch {
		case ok:
			resp.next[name] = v
			if !held || prev != v {
				resp.add(name, r, v)
			}
		case held:
			resp.removed = append(resp.removed, name)
		}
	}
	if len(resp.names) == 0 && len(resp.removed) == 0 {
		return nil, nil
	}
	return resp, nil
}

// deltaResponse implements cache.DeltaResponse. Its resources are
// marshalled by the stream's goroutine when it sends it, not under the
// cache's lock.
type deltaResponse struct {
	req      *cache.DeltaRequest
	version  string
	names    []string
	res      []types.Resource
	versions []string
	removed  []string
	next     map[string]string
}

func (r *deltaResponse) add(name string, res types.Resource, version string) {
	r.names = append(r.names, name)
	r.res = append(r.res, res)
	r.versions = append(r.versions, version)
}

// GetDeltaDiscoveryResponse implements cache.DeltaResponse: a new message
// on each call (the server sets its nonce).
func (r *deltaResponse) GetDeltaDiscoveryResponse() (*discovery.DeltaDiscoveryResponse, error) {
	resources := make([]*discovery.Resource, len(r.names))
	for i, name := range r.names {
		b, err := cache.MarshalResource(r.res[i])
		if err != nil {
			return nil, fmt.Errorf("marshal %s: %w", name, err)
		}
		resources[i] = &discovery.Resource{Name: name, Version: r.versions[i],
			Resource: &anypb.Any{TypeUrl: r.req.GetTypeUrl(), Value: b}}
	}
	return &discovery.DeltaDiscoveryResponse{Resources: resources, RemovedResources: r.removed,
		TypeUrl: r.req.GetTypeUrl(), SystemVersionInfo: r.version}, nil
}

func (r *deltaResponse) GetDeltaRequest() *discovery.DeltaDiscoveryRequest { return r.req }

func (r *deltaResponse) GetSystemVersion() (string, error) { return r.version, nil }

func (r *deltaResponse) GetResponseVersion() string { return r.version }

func (r *deltaResponse) GetNextVersionMap() map[string]string { return r.next }

func (r *deltaResponse) GetReturnedResources() map[string]string { return r.next }

func (r *deltaResponse) GetContext() context.Context { return context.Background() }
