package translate

import (
	"fmt"
	"reflect"
	"sync"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/wire"
)

// SharedSet names one of a Mesh's resource sets that many nodes get
// unchanged. A server versions each shared set once per Mesh, not per
// node.
type SharedSet string

// The shared sets of a Mesh.
const (
	// SharedClusters: one EDS cluster per service (every node).
	SharedClusters SharedSet = "clusters"
	// SharedEndpoints: one load assignment per service (every node).
	SharedEndpoints SharedSet = "endpoints"
	// SharedAPIListeners and SharedAPIRoutes: a listener and a route
	// configuration named after each service (gRPC proxyless nodes).
	SharedAPIListeners SharedSet = "api_listeners"
	SharedAPIRoutes    SharedSet = "api_routes"
	// SharedOutboundRoutes: the outbound route configuration and the
	// per-service route configurations (agents, Mesh.AgentRoutes).
	SharedOutboundRoutes SharedSet = "outbound_routes"
	// SharedAPIClusters: the clusters of gRPC proxyless nodes (mtls.go).
	SharedAPIClusters SharedSet = "api_clusters"
)

// SharedSets returns the Mesh's shared sets by name; do not modify them.
func (m *Mesh) SharedSets() map[SharedSet]Set {
	return map[SharedSet]Set{
		SharedClusters:       m.Clusters,
		SharedEndpoints:      m.Endpoints,
		SharedAPIListeners:   m.APIListeners,
		SharedAPIRoutes:      m.APIRoutes,
		SharedOutboundRoutes: m.AgentRoutes,
		SharedAPIClusters:    m.APIClusters,
	}
}

// Layer is a node's resources of one type: one shared set ("" for none)
// plus the node's own resources, whose names never clash with it.
type Layer struct {
	Shared SharedSet
	Own    Set
}

// Node is one node's complete output: what it gets of every type,
// validated (every resource, and every reference resolved within the
// node's resources).
type Node struct {
	Clusters, Endpoints, Listeners, Routes Layer

	mesh *Mesh
	own  *ownEntry
}

// Layers returns the node's layers in xDS push order: clusters,
// endpoints, listeners, routes.
func (n *Node) Layers() [4]Layer {
	return [4]Layer{n.Clusters, n.Endpoints, n.Listeners, n.Routes}
}

// SameOwn reports whether n and o have the very same own resources (the
// same messages), as happens for one node across Meshes of a Translator
// while what they are built from does not change: a server may keep what
// it derived from them (hashes, versions).
func (n *Node) SameOwn(o *Node) bool { return o != nil && n.own == o.own }

// Resources returns all of the node's resources in fresh maps.
func (n *Node) Resources() Resources {
	sets := n.mesh.SharedSets()
	layer := func(l Layer) Set { return merged(sets[l.Shared], l.Own) }
	return Resources{
		Clusters:  layer(n.Clusters),
		Endpoints: layer(n.Endpoints),
		Listeners: layer(n.Listeners),
		Routes:    layer(n.Routes),
	}
}

// Node returns a node's complete output. A gRPC proxyless node gets every
// cluster and load assignment and the API listeners and routes. An agent
// gets every cluster and load assignment, the outbound route
// configuration, its outbound listener and, when it fronts a service whose
// app port is known (node metadata, else the app_port its Consul
// registration on that node carries), its inbound listener and local app
// cluster, with the policy of its service (the model's, else the
// configured one).
//
// It is a function of the Mesh and the node. A node's own resources are
// kept while what they are built from stays equal, across the Meshes of
// one Translator, so an unchanged node gets the same messages (SameOwn).
// Safe for concurrent use.
func (m *Mesh) Node(n model.Node) (*Node, error) {
	e, err := m.ownEntry(n)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", n.ID, err)
	}
	out := &Node{mesh: m, own: e}
	if n.Proxyless {
		out.Clusters = Layer{Shared: SharedAPIClusters}
		out.Endpoints = Layer{Shared: SharedEndpoints}
		out.Listeners = Layer{Shared: SharedAPIListeners}
		out.Routes = Layer{Shared: SharedAPIRoutes}
		return out, nil
	}
	out.Clusters = Layer{Shared: SharedClusters, Own: e.res.Clusters}
	out.Endpoints = Layer{Shared: SharedEndpoints}
	out.Listeners = Layer{Own: e.res.Listeners}
	out.Routes = Layer{Shared: SharedOutboundRoutes}
	if n.Gateway {
		// A gateway: every service's cluster, plus its own (gateway.go).
		out.Endpoints.Own = e.res.Endpoints
		out.Routes = Layer{Own: e.res.Routes}
	}
	return out, nil
}

// ownInputs is what a node's own resources are built from: equal inputs
// give equal resources.
type ownInputs struct {
	node model.Node
	// appPort is the node's app port: its metadata's, else the app_port
	// of its own registration; 0 if unknown.
	appPort int
	// policy is the policy of the node's service.
	policy config.Policy
	// mtlsMode is the inbound mTLS mode when the node's registration
	// takes mTLS, else "" (mtls.go).
	mtlsMode string
	// gateway is a gateway node's shared build.
	gateway *gatewayBuild
	// authz is the authorization of the node's service; protocol its app
	// protocol (authz.go).
	authz    authzInputs
	protocol string
}

func (a ownInputs) equal(b ownInputs) bool {
	return a.node == b.node && a.appPort == b.appPort && a.mtlsMode == b.mtlsMode && reflect.DeepEqual(a.policy, b.policy) && a.gateway == b.gateway &&
		a.protocol == b.protocol && reflect.DeepEqual(a.authz, b.authz)
}

func (m *Mesh) ownInputs(n model.Node) ownInputs {
	in := ownInputs{node: n, appPort: n.AppPort}
	if n.Gateway {
		in.gateway = m.gateway
		return in
	}
	if n.Proxyless || n.Service == "" {
		return in
	}
	if in.appPort == 0 {
		in.appPort = m.appPorts[n.Service][n.ID]
	}
	if in.appPort == 0 {
		return in
	}
	p, ok := m.policies[n.Service]
	if !ok {
		p = m.configured.For(n.Service)
	}
	in.policy = p
	if m.mtlsNodes[n.Service][n.ID] {
		in.mtlsMode = m.mtls.Mode(n.Service)
	}
	in.authz = m.authz.inputs(n.Service)
	in.protocol = m.protocols[n.Service]
	return in
}

type ownEntry struct {
	in  ownInputs
	res Resources
}

// memo keeps the own resources built for each node id: those used while
// one Mesh was current carry over to the next, so the memory is bounded
// by the nodes asked for recently.
type memo struct {
	mu        sync.Mutex
	prev, cur map[string]*ownEntry
}

func newMemo(prev *memo) *memo {
	m := &memo{cur: map[string]*ownEntry{}}
	if prev != nil {
		prev.mu.Lock()
		m.prev = prev.cur
		prev.mu.Unlock()
	}
	return m
}

// ownEntry returns the node's own resources, validated, built or reused.
// A reused entry was validated when built; its references point at its
// own resources and at the outbound route configuration, which every Mesh
// has.
func (m *Mesh) ownEntry(n model.Node) (*ownEntry, error) {
	in := m.ownInputs(n)
	m.memo.mu.Lock()
	defer m.memo.mu.Unlock()
	for _, e := range []*ownEntry{m.memo.cur[n.ID], m.memo.prev[n.ID]} {
		if e != nil && e.in.equal(in) {
			m.memo.cur[n.ID] = e
			return e, nil
		}
	}
	res, err := ownResources(in)
	if err != nil {
		return nil, err
	}
	if err := m.validateOwn(n, res); err != nil {
		return nil, err
	}
	e := &ownEntry{in: in, res: res}
	m.memo.cur[n.ID] = e
	return e, nil
}

// ownResources builds a node's own resources from their inputs.
func ownResources(in ownInputs) (Resources, error) {
	n := in.node
	r := Resources{Clusters: Set{}, Endpoints: Set{}, Listeners: Set{}, Routes: Set{}}
	if n.Proxyless {
		return r, nil
	}
	if n.Gateway {
		return gatewayResources(n, in.gateway)
	}
	out, err := outboundListener(cmpOr(n.OutboundAddr, wire.DefaultOutboundAddr))
	if err != nil {
		return Resources{}, err
	}
	r.Listeners[wire.OutboundListener] = out
	if n.Service == "" || in.appPort == 0 {
		return r, nil
	}
	local, err := localAppCluster(cmpOr(n.AppAddress, wire.DefaultAppAddress), in.appPort, in.policy)
	if err != nil {
		return Resources{}, err
	}
	inbound, err := inboundListenerFor(in)
	if err != nil {
		return Resources{}, err
	}
	if in.mtlsMode != "" {
		if err := secureInbound(inbound, in.mtlsMode); err != nil {
			return Resources{}, err
		}
	}
	r.Listeners[wire.InboundListener] = inbound
	r.Clusters[wire.LocalAppCluster] = local
	return r, nil
}

// validateOwn checks a node's own resources and that their references
// resolve within the node's own and shared resources. The shared
// resources are checked once per model (Mesh.Validate).
func (m *Mesh) validateOwn(n model.Node, own Resources) error {
	for _, s := range []Set{own.Clusters, own.Endpoints, own.Listeners, own.Routes} {
		if err := validateSet(s); err != nil {
			return err
		}
	}
	sh := Resources{Clusters: m.Clusters, Endpoints: m.Endpoints, Routes: m.AgentRoutes}
	if n.Proxyless {
		sh.Routes = m.APIRoutes
	}
	all := lookup{
		Clusters:  union{own.Clusters, sh.Clusters},
		Endpoints: union{own.Endpoints, sh.Endpoints},
		Routes:    union{own.Routes, sh.Routes},
	}
	return consistent(own, all)
}
