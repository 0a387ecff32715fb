package translate

import (
	"maps"
	"reflect"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/wire"
)

// lastBuild is the Translator's previous Mesh and the inputs besides the
// model it was built from.
type lastBuild struct {
	mesh       *Mesh
	configured config.Policies
	mtls       MTLS
	authz      Authorization
	gatewayIn  *Gateway
	// traffic says a service had traffic rules (subsets, routes: added
	// by addTraffic across services); such models translate in full.
	traffic bool
}

// incremental translates m from the previous Mesh when the model names
// the services that changed (model.Model.Changed) and nothing else the
// translation depends on did: only those services' resources are built,
// validated and put in copies of the previous sets, so a change to one of
// 10,000 services costs one service plus a copy of the sets' maps. ok is
// false when a full translation is needed.
func (t *Translator) incremental(m *model.Model, p config.Policies) (out *Mesh, ok bool, err error) {
	l := t.last
	if m.Changed == nil || l == nil || l.gatewayIn != t.gatewayIn ||
		!reflect.DeepEqual(l.mtls, t.MTLS) || !reflect.DeepEqual(l.authz, t.authz) || !reflect.DeepEqual(l.configured, p) ||
		l.traffic || hasTraffic(m) {
		return nil, false, nil
	}
	prev := l.mesh
	out = &Mesh{
		Clusters:     maps.Clone(prev.Clusters),
		Endpoints:    maps.Clone(prev.Endpoints),
		APIListeners: maps.Clone(prev.APIListeners),
		APIRoutes:    maps.Clone(prev.APIRoutes),
		APIClusters:  maps.Clone(prev.APIClusters),
		AgentRoutes:  maps.Clone(prev.AgentRoutes),
		policies:     maps.Clone(prev.policies),
		configured:   p,
		memo:         newMemo(t.memo),
		appPorts:     maps.Clone(prev.appPorts),
		mtls:         t.MTLS,
		mtlsNodes:    maps.Clone(prev.mtlsNodes),
		authz:        t.authz,
		protocols:    maps.Clone(prev.protocols),
		changed:      m.Changed,
		base:         prev,
		// Only models without traffic rules translate incrementally.
		routeClusters: prev.routeClusters,
	}
	next := maps.Clone(t.prev)
	// fresh are the new messages to validate; stale the replaced ones, to
	// forget once the build succeeds.
	fresh := Resources{Clusters: Set{}, Endpoints: Set{}, Listeners: Set{}, Routes: Set{}}
	freshAPIClusters := Set{}
	var stale []proto.Message
	vhostsChanged := false
	for _, name := range m.Changed {
		old := t.prev[name]
		s := m.Service(name)
		if s == nil {
			if old != nil {
				vhostsChanged = true
				stale = append(stale, old.messages()...)
			}
			delete(next, name)
			for _, set := range []Set{out.Clusters, out.Endpoints, out.APIListeners, out.APIRoutes, out.APIClusters} {
				delete(set, name)
			}
			delete(out.AgentRoutes, wire.ServiceRoute(name))
			delete(t.serviceRoutes, wire.ServiceRoute(name))
			delete(out.policies, name)
			delete(out.protocols, name)
			delete(out.appPorts, name)
			delete(out.mtlsNodes, name)
			continue
		}
		e, err := t.entry(s)
		if err != nil {
			return nil, true, err
		}
		next[name] = e
		if old == nil || old.vhost != e.vhost {
			vhostsChanged = true
		}
		if old != nil {
			for i, m := range old.messages() {
				if m != e.messages()[i] {
					stale = append(stale, m)
				}
			}
		}
		out.Clusters[name], out.Endpoints[name], out.APIListeners[name], out.APIRoutes[name], out.APIClusters[name] =
			e.cluster, e.cla, e.apiListener, e.apiRoute, e.apiCluster
		rn := wire.ServiceRoute(name)
		if rc, ok := out.AgentRoutes[rn].(*routev3.RouteConfiguration); !ok || len(rc.VirtualHosts) != 1 || rc.VirtualHosts[0] != e.vhost {
			out.AgentRoutes[rn] = &routev3.RouteConfiguration{Name: rn, ValidateClusters: wrapperspb.Bool(false), VirtualHosts: []*routev3.VirtualHost{e.vhost}}
		}
		for i, m := range e.messages() {
			if !t.validated[m] {
				[]Set{fresh.Clusters, fresh.Endpoints, fresh.Listeners, fresh.Routes, freshAPIClusters}[i][name] = m
			}
		}
		out.policies[name] = s.Policy
		out.protocols[name] = serviceProtocol(s)
		out.appPorts[name], out.mtlsNodes[name] = nodePorts(s)
		if out.appPorts[name] == nil {
			delete(out.appPorts, name)
		}
		if out.mtlsNodes[name] == nil {
			delete(out.mtlsNodes, name)
		}
	}
	out.Outbound = t.outbound
	if vhostsChanged || out.Outbound == nil {
		vhosts := make([]*routev3.VirtualHost, 0, len(m.Services))
		for i := range m.Services {
			vhosts = append(vhosts, next[m.Services[i].Name].vhost)
		}
		out.Outbound = &routev3.RouteConfiguration{
			Name:             wire.OutboundRoute,
			ValidateClusters: wrapperspb.Bool(false),
			VirtualHosts:     vhosts,
		}
		fresh.Routes[wire.OutboundRoute] = out.Outbound
		if t.outbound != nil {
			stale = append(stale, t.outbound)
		}
	}
	if out.AgentRoutes == nil {
		out.AgentRoutes = Set{}
	}
	out.AgentRoutes[wire.OutboundRoute] = out.Outbound
	for _, s := range []Set{fresh.Clusters, fresh.Endpoints, fresh.Listeners, fresh.Routes, freshAPIClusters} {
		if err := validateSet(s); err != nil {
			return nil, true, err
		}
	}
	all := lookup{Clusters: union{out.Clusters}, Endpoints: union{out.Endpoints}, Routes: union{out.APIRoutes, {wire.OutboundRoute: out.Outbound}}}
	if err := consistent(fresh, all); err != nil {
		return nil, true, err
	}
	if out.gateway, err = buildGateway(t.gatewayIn, out, t.gateway); err != nil {
		return nil, true, err
	}
	// The build stands: the translator's memory moves to it.
	for _, m := range stale {
		delete(t.validated, m)
	}
	for _, s := range []Set{fresh.Clusters, fresh.Endpoints, fresh.Listeners, fresh.Routes, freshAPIClusters} {
		for _, m := range s {
			t.validated[m] = true
		}
	}
	t.prev, t.outbound, t.memo, t.prevMTLS, t.gateway = next, out.Outbound, out.memo, t.MTLS, out.gateway
	t.last = &lastBuild{mesh: out, configured: p, mtls: t.MTLS, authz: t.authz, gatewayIn: t.gatewayIn}
	return out, true, nil
}

// hasTraffic reports whether a service of m has traffic rules.
func hasTraffic(m *model.Model) bool {
	for i := range m.Services {
		if m.Services[i].HasTraffic() {
			return true
		}
	}
	return false
}

// messages are the entry's shared resources, in a fixed order.
func (e *entry) messages() []proto.Message {
	return []proto.Message{e.cluster, e.cla, e.apiListener, e.apiRoute, e.apiCluster}
}

// nodePorts are a service's app ports by node name and the nodes (by
// registration ID and VM name) whose registration says they take mTLS;
// nil when there are none.
func nodePorts(s *model.Service) (map[string]int, map[string]bool) {
	var ports map[string]int
	var mtls map[string]bool
	for _, ep := range s.Endpoints {
		if ep.AppPort > 0 && ep.Node != "" {
			if ports == nil {
				ports = map[string]int{}
			}
			ports[ep.Node] = ep.AppPort
		}
		if ep.Metadata.Meta[wire.MetaMTLS] != "" {
			if mtls == nil {
				mtls = map[string]bool{}
			}
			for _, k := range []string{ep.ID, ep.Node} {
				if k != "" {
					mtls[k] = true
				}
			}
		}
	}
	return ports, mtls
}
