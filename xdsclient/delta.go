package xdsclient

import (
	"context"
	"fmt"
	"slices"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
)

// Subscribe adds names to the delta subscriptions of typeURL (clusters,
// routes or listeners); the running stream asks for them at once. A
// state-of-the-world client ignores it.
func (c *Client) Subscribe(typeURL string, names ...string) {
	c.changeSubscription(typeURL, names, true)
}

// Unsubscribe removes names from the delta subscriptions of typeURL; the
// client drops what it held of them (and the load assignments of dropped
// clusters) and hands the smaller set to Apply.
func (c *Client) Unsubscribe(typeURL string, names ...string) {
	c.changeSubscription(typeURL, names, false)
}

func (c *Client) changeSubscription(typeURL string, names []string, add bool) {
	c.subMu.Lock()
	w := c.want[typeURL]
	if w == nil {
		w = map[string]bool{}
		c.want[typeURL] = w
	}
	changed := false
	for _, n := range names {
		if w[n] != add {
			changed = true
			if add {
				w[n] = true
			} else {
				delete(w, n)
			}
		}
	}
	c.subMu.Unlock()
	if changed {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
}

// Subscriptions returns the delta subscriptions of typeURL, sorted.
func (c *Client) Subscriptions(typeURL string) []string {
	c.subMu.Lock()
	defer c.subMu.Unlock()
	return sortedKeys(c.want[typeURL])
}

// wanted is what the client should be subscribed to per type now: the
// configured names for clusters, listeners and routes, the load
// assignments of the clusters it holds, the secrets it is given.
func (c *Client) wanted(held *Resources) map[string]map[string]bool {
	c.subMu.Lock()
	out := map[string]map[string]bool{}
	for _, t := range []string{resource.ClusterType, resource.ListenerType, resource.RouteType} {
		out[t] = cloneMap(c.want[t])
	}
	c.subMu.Unlock()
	out[resource.EndpointType] = edsNames(held.Clusters)
	if len(c.opts.Secrets) > 0 && c.opts.OnSecrets != nil {
		out[resource.SecretType] = map[string]bool{}
		for _, n := range c.opts.Secrets {
			out[resource.SecretType][n] = true
		}
	}
	return out
}

// deltaTypes is the order delta subscriptions are sent in.
var deltaTypes = []string{resource.ClusterType, resource.EndpointType, resource.ListenerType, resource.RouteType, resource.SecretType}

// deltaStream runs one delta ADS stream to server until it fails or ctx
// is done.
func (c *Client) deltaStream(ctx context.Context, server string, held *Resources) error {
	conn, err := c.dial(server)
	if err != nil {
		return err
	}
	defer conn.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ads, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(sctx)
	if err != nil {
		return fmt.Errorf("open delta ADS stream to %s: %w", server, err)
	}
	resps := make(chan *discoveryv3.DeltaDiscoveryResponse)
	recvErr := make(chan error, 1)
	go func() {
		for {
			r, err := ads.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case resps <- r:
			case <-sctx.Done():
				return
			}
		}
	}()

	// sent is what this stream has subscribed to, per type; a type absent
	// has had no request yet (its first one carries the versions held).
	sent := map[string]map[string]bool{}
	nodeSent := false
	send := func(req *discoveryv3.DeltaDiscoveryRequest) error {
		if !nodeSent {
			req.Node, nodeSent = c.opts.Node, true
		}
		return ads.Send(req)
	}
	// sync brings the stream's subscriptions to what is wanted, dropping
	// what the client held of names no longer wanted. It never sends an
	// empty first subscription: a server takes that as a wildcard.
	sync := func() error {
		want := c.wanted(held)
		next := held.Clone()
		dropped := false
		for _, t := range deltaTypes {
			w, have := want[t], sent[t]
			if have == nil {
				if len(w) == 0 {
					continue
				}
				req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: t, ResourceNamesSubscribe: sortedKeys(w)}
				for n := range w {
					if v, ok := held.ResourceVersions[t][n]; ok {
						if req.InitialResourceVersions == nil {
							req.InitialResourceVersions = map[string]string{}
						}
						req.InitialResourceVersions[n] = v
					}
				}
				if t == resource.SecretType {
					for n := range w {
						if v, ok := c.secretVersions[n]; ok {
							if req.InitialResourceVersions == nil {
								req.InitialResourceVersions = map[string]string{}
							}
							req.InitialResourceVersions[n] = v
						}
					}
				}
				if err := send(req); err != nil {
					return fmt.Errorf("subscribe %s: %w", t, err)
				}
				sent[t] = w
				continue
			}
			var add, drop []string
			for n := range w {
				if !have[n] {
					add = append(add, n)
				}
			}
			for n := range have {
				if !w[n] {
					drop = append(drop, n)
				}
			}
			if len(add) == 0 && len(drop) == 0 {
				continue
			}
			slices.Sort(add)
			slices.Sort(drop)
			if err := send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: t, ResourceNamesSubscribe: add, ResourceNamesUnsubscribe: drop}); err != nil {
				return fmt.Errorf("update %s subscription: %w", t, err)
			}
			sent[t] = w
			for _, n := range drop {
				if next.remove(t, n) {
					dropped = true
				}
			}
		}
		if !dropped {
			return nil
		}
		pruneEndpoints(&next)
		if err := c.opts.Apply(next); err != nil {
			// The smaller set is refused: keep applying the last good one;
			// what was dropped stays held until the next change.
			c.opts.Log.Warn().Err(err).Msg("unsubscribed resources could not be dropped; keeping them")
			return nil
		}
		*held = next
		return nil
	}
	if err := sync(); err != nil {
		return err
	}
	// The stream is open and subscribed: a server that holds nothing newer
	// than what the client resumes from sends nothing, so do not wait for
	// a response to call the stream connected.
	c.setConnected(server, true)

	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-recvErr:
			return fmt.Errorf("receive from %s: %w", server, err)
		case <-c.wake:
			if err := sync(); err != nil {
				return err
			}
		case resp := <-resps:
			if err := c.deltaResponse(resp, held, send); err != nil {
				return err
			}
			// Follow what the clusters now name.
			if err := sync(); err != nil {
				return err
			}
		}
	}
}

// deltaResponse applies one response and ACKs or NACKs it.
func (c *Client) deltaResponse(resp *discoveryv3.DeltaDiscoveryResponse, held *Resources, send func(*discoveryv3.DeltaDiscoveryRequest) error) error {
	typeURL := resp.GetTypeUrl()
	if c.opts.OnResources != nil {
		c.opts.OnResources(typeURL, len(resp.GetResources()), len(resp.GetRemovedResources()))
	}
	var err error
	if typeURL == resource.SecretType {
		err = c.deltaSecrets(resp)
	} else {
		var next Resources
		next, err = mergeDelta(*held, resp)
		if err == nil {
			err = c.opts.Apply(next)
		}
		if err == nil {
			*held = next
		}
	}
	if err != nil {
		c.nacks.Add(1)
		c.responded(typeURL, false)
		c.mu.Lock()
		c.state.LastNack = err.Error()
		c.mu.Unlock()
		c.opts.Log.Error().Err(err).Str("type", typeURL).Str("version", resp.GetSystemVersionInfo()).Msg("rejected xds update (NACK); keeping the last good config")
		if err := send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeURL, ResponseNonce: resp.GetNonce(),
			ErrorDetail: &statuspb.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}}); err != nil {
			return fmt.Errorf("nack: %w", err)
		}
		return nil
	}
	c.acks.Add(1)
	c.mu.Lock()
	c.state.LastUpdate = time.Now()
	c.mu.Unlock()
	c.responded(typeURL, true)
	if err := send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeURL, ResponseNonce: resp.GetNonce()}); err != nil {
		return fmt.Errorf("ack: %w", err)
	}
	return nil
}

// deltaSecrets applies a secrets response to the secrets held and hands
// them all to OnSecrets.
func (c *Client) deltaSecrets(resp *discoveryv3.DeltaDiscoveryResponse) error {
	next := cloneMap(c.secretsHeld)
	versions := cloneMap(c.secretVersions)
	for _, r := range resp.GetResources() {
		if r.GetResource() == nil {
			continue
		}
		msg, name, err := Decode(r.GetResource())
		if err != nil {
			return err
		}
		sec, ok := msg.(*tlsv3.Secret)
		if !ok {
			return fmt.Errorf("resource of type %s in a secrets response", r.GetResource().GetTypeUrl())
		}
		next[name], versions[name] = sec, r.GetVersion()
	}
	for _, n := range resp.GetRemovedResources() {
		delete(next, n)
		delete(versions, n)
	}
	if err := c.opts.OnSecrets(next); err != nil {
		return err
	}
	c.secretsHeld, c.secretVersions = next, versions
	return nil
}

// mergeDelta applies one delta response to a copy of held: the resources
// it carries replace those of the same name, the removed ones go, and
// load assignments no held cluster names are pruned.
func mergeDelta(held Resources, resp *discoveryv3.DeltaDiscoveryResponse) (Resources, error) {
	next := held.Clone()
	typeURL := resp.GetTypeUrl()
	vers := next.ResourceVersions[typeURL]
	if vers == nil {
		vers = map[string]string{}
		next.ResourceVersions[typeURL] = vers
	}
	for _, r := range resp.GetResources() {
		a := r.GetResource()
		if a == nil {
			continue // a TTL heartbeat: nothing changed
		}
		if a.GetTypeUrl() != typeURL {
			return held, fmt.Errorf("resource of type %s in a %s response", a.GetTypeUrl(), typeURL)
		}
		msg, name, err := Decode(a)
		if err != nil {
			return held, err
		}
		next.Put(msg, name)
		vers[name] = r.GetVersion()
	}
	for _, n := range resp.GetRemovedResources() {
		next.remove(typeURL, n)
	}
	pruneEndpoints(&next)
	next.Versions[typeURL] = resp.GetSystemVersionInfo()
	return next, nil
}

// remove drops one resource and its version; it reports whether it was
// held.
func (r *Resources) remove(typeURL, name string) bool {
	_, had := r.ResourceVersions[typeURL][name]
	delete(r.ResourceVersions[typeURL], name)
	switch typeURL {
	case resource.ListenerType:
		_, ok := r.Listeners[name]
		delete(r.Listeners, name)
		return ok || had
	case resource.ClusterType:
		_, ok := r.Clusters[name]
		delete(r.Clusters, name)
		return ok || had
	case resource.RouteType:
		_, ok := r.Routes[name]
		delete(r.Routes, name)
		return ok || had
	case resource.EndpointType:
		_, ok := r.Endpoints[name]
		delete(r.Endpoints, name)
		return ok || had
	}
	return had
}

// pruneEndpoints drops the load assignments no held cluster names.
func pruneEndpoints(r *Resources) {
	eds := edsNames(r.Clusters)
	for n := range r.Endpoints {
		if !eds[n] {
			r.remove(resource.EndpointType, n)
		}
	}
}
