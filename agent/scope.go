package agent

import (
	"context"
	"sync"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/dataplane/chain"
	"github.com/meshvm/mesh/wire"
	"github.com/meshvm/mesh/xdsclient"
)

// scope decides which services the agent holds over delta xDS: those it
// declares (agent.upstreams, agent.dependencies), never dropped, and those
// met on the request path (on demand), dropped once not called for
// agent.on_demand.idle. A request for a service the agent does not hold
// subscribes to it and waits for its cluster, load assignment and route
// up to agent.on_demand.timeout; a service that did not come answers
// no-route at once for agent.on_demand.negative_ttl.
type scope struct {
	xds      *xdsclient.Client
	handlers *chain.Switch
	state    *chain.State
	cfg      config.OnDemand
	declared map[string]bool

	mu sync.Mutex
	// onDemand: services subscribed on demand, by when they were.
	onDemand map[string]time.Time
	// held: services whose cluster, endpoints and route the agent holds.
	held map[string]bool
	// waiting: requests waiting for a service, closed when it is held.
	waiting map[string]chan struct{}
	// missing: services that did not come, until when they are not
	// waited for again.
	missing map[string]time.Time
}

// declaredServices are the services an agent subscribes to from the start.
func declaredServices(a config.Agent) map[string]bool {
	out := map[string]bool{}
	for _, u := range a.Upstreams {
		out[u.Service] = true
	}
	for _, d := range a.Dependencies {
		out[d] = true
	}
	return out
}

func newScope(a config.Agent, handlers *chain.Switch, state *chain.State) *scope {
	return &scope{
		handlers: handlers, state: state, cfg: a.OnDemand, declared: declaredServices(a),
		onDemand: map[string]time.Time{}, held: map[string]bool{},
		waiting: map[string]chan struct{}{}, missing: map[string]time.Time{},
	}
}

// subscriptions are the delta client's starting subscriptions: the
// declared services and those of the cache the agent starts from (kept
// fresh, dropped when idle like any service fetched on demand).
func (s *scope) subscriptions(cached xdsclient.Resources) (clusters, routes []string) {
	clusters = []string{wire.LocalAppCluster}
	for svc := range s.declared {
		clusters = append(clusters, svc)
		routes = append(routes, wire.ServiceRoute(svc))
	}
	now := time.Now()
	for name := range cached.Clusters {
		if name == wire.LocalAppCluster || s.declared[name] {
			continue
		}
		clusters = append(clusters, name)
		if _, ok := cached.Routes[wire.ServiceRoute(name)]; ok {
			routes = append(routes, wire.ServiceRoute(name))
		}
		s.onDemand[name] = now
	}
	return clusters, routes
}

// miss is the request path's question for a service the table does not
// hold (chain.State.OnMiss): subscribe, wait, return the handlers that
// hold it, or nil.
func (s *scope) miss(ctx context.Context, service string) *chain.Handlers {
	s.mu.Lock()
	if until, ok := s.missing[service]; ok {
		if time.Now().Before(until) {
			s.mu.Unlock()
			return nil
		}
		delete(s.missing, service)
	}
	if s.held[service] {
		s.mu.Unlock()
		return s.handlers.Current()
	}
	ch := s.waiting[service]
	if ch == nil {
		ch = make(chan struct{})
		s.waiting[service] = ch
		if _, ok := s.onDemand[service]; !ok && !s.declared[service] {
			s.onDemand[service] = time.Now()
			s.xds.Subscribe(resource.ClusterType, service)
			s.xds.Subscribe(resource.RouteType, wire.ServiceRoute(service))
		}
	}
	s.mu.Unlock()

	t := time.NewTimer(s.cfg.Timeout)
	defer t.Stop()
	select {
	case <-ch:
		return s.handlers.Current()
	case <-ctx.Done():
		return nil
	case <-t.C:
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held[service] {
		return s.handlers.Current()
	}
	if s.waiting[service] == ch {
		// It did not come: do not wait for it again for a while, and do
		// not keep asking for it.
		delete(s.waiting, service)
		if s.cfg.NegativeTTL > 0 {
			s.missing[service] = time.Now().Add(s.cfg.NegativeTTL)
		}
		if !s.declared[service] {
			delete(s.onDemand, service)
			s.xds.Unsubscribe(resource.ClusterType, service)
			s.xds.Unsubscribe(resource.RouteType, wire.ServiceRoute(service))
		}
	}
	return nil
}

// applied is told each resource set the agent has swapped in: it releases
// the requests waiting for a service now held, and subscribes to the
// clusters the held routes send to (a service's subsets).
func (s *scope) applied(res xdsclient.Resources) {
	held := map[string]bool{}
	for name, c := range res.Clusters {
		if name == wire.LocalAppCluster {
			continue
		}
		if _, ok := res.Endpoints[edsName(c.GetEdsClusterConfig().GetServiceName(), name)]; !ok {
			continue
		}
		if _, ok := res.Routes[wire.ServiceRoute(name)]; ok {
			held[name] = true
		}
	}
	var extra []string
	for _, rc := range res.Routes {
		for _, c := range routeClusters(rc) {
			if _, ok := res.Clusters[c]; !ok {
				extra = append(extra, c)
			}
		}
	}
	if len(extra) > 0 {
		s.xds.Subscribe(resource.ClusterType, extra...)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.held = held
	for svc, ch := range s.waiting {
		if held[svc] {
			close(ch)
			delete(s.waiting, svc)
		}
	}
}

func edsName(serviceName, cluster string) string {
	if serviceName != "" {
		return serviceName
	}
	return cluster
}

// routeClusters are the clusters a route configuration's routes name.
func routeClusters(rc *routev3.RouteConfiguration) []string {
	var out []string
	for _, vh := range rc.GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			a := r.GetRoute()
			if c := a.GetCluster(); c != "" {
				out = append(out, c)
			}
			for _, w := range a.GetWeightedClusters().GetClusters() {
				out = append(out, w.GetName())
			}
			for _, m := range a.GetRequestMirrorPolicies() {
				out = append(out, m.GetCluster())
			}
		}
	}
	return out
}

// run drops the services fetched on demand that were not called for
// agent.on_demand.idle, until ctx is done.
func (s *scope) run(ctx context.Context) error {
	if s.cfg.Idle <= 0 {
		<-ctx.Done()
		return nil
	}
	every := min(max(s.cfg.Idle/4, 100*time.Millisecond), time.Minute)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		s.sweep(time.Now())
	}
}

func (s *scope) sweep(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for svc, since := range s.onDemand {
		last := since
		if t, ok := s.state.LastCall(svc); ok && t.After(last) {
			last = t
		}
		if now.Sub(last) < s.cfg.Idle || s.waiting[svc] != nil {
			continue
		}
		delete(s.onDemand, svc)
		s.xds.Unsubscribe(resource.ClusterType, svc)
		s.xds.Unsubscribe(resource.RouteType, wire.ServiceRoute(svc))
	}
}
