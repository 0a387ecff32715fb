// Package xds serves the control plane's resources to xDS clients (mesh
// agents, Envoy, gRPC proxyless clients) over ADS, state-of-the-world and
// delta, using go-control-plane's server and snapshot cache. It keeps one
// snapshot per connected node, pushes a change type by type (CDS, EDS,
// LDS, RDS) so a client never gets a resource it cannot place, derives
// versions from content so an unchanged view pushes nothing, and does not
// resend a rejected (NACKed) version. It translates nothing:
// controlplane/translate gives each node's complete output (Mesh.Node),
// which this package versions and sets.
package xds

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"

	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/controlplane/translate"
	"github.com/meshvm/mesh/wire"
)

// Server holds the snapshots of the connected nodes and answers their
// xDS streams. Update it with each new translation.
type Server struct {
	log     zerolog.Logger
	metrics *metrics
	// cache serves clusters, listeners and routes from per-node
	// snapshots to state-of-the-world streams, delta to delta streams
	// (name by name, deltacache.go); both get every snapshot. Load
	// assignments are the same for every node and come from one shared
	// collection, so a change sends only the changed assignments (state
	// of the world allows it for EDS), marshalled once for all clients:
	// eds to state-of-the-world streams, deltaEDS (go-control-plane's
	// LinearCache) to delta streams. mux routes requests by type.
	cache    cache.SnapshotCache
	delta    *deltaCache
	eds      *endpointCache
	deltaEDS *cache.LinearCache
	mux      *cache.MuxCache

	// mu guards the fields below and serialises snapshot changes, so the
	// phases of one push never interleave with another.
	mu     sync.Mutex
	mesh   *translate.Mesh
	shared map[translate.SharedSet]*Set
	hasher *Hasher
	nodes  map[string]*nodeState

	smu     sync.Mutex
	streams map[streamKey]*streamState

	// ready is set once the first model has been set: before, streams are
	// refused (UNAVAILABLE) so an agent fails over to a replica that
	// serves (decisions.md). edsUpdates counts deltaEDS's updates, whose
	// system versions are a per-process counter; edsVersions maps the
	// latest of them to the content version of the set they hold, so no
	// replica-specific version leaves the server (deltaVersion).
	ready       atomic.Bool
	edsUpdates  uint64 // under mu
	vmu         sync.Mutex
	edsVersions map[string]string

	// admit, if set, checks each stream's node against who authenticated;
	// secrets serves SDS.
	admit   Admission
	secrets *secrets
}

type nodeState struct {
	node model.Node
	// owner is who the node id is bound to (Admission) while connected.
	owner   string
	streams int
	snap    *Snapshot
	// out is the node's last translation and own its own resources per
	// type (Kinds order), hashed; kept while translate hands out the same
	// own resources (Node.SameOwn).
	out *translate.Node
	own [4]*Set
}

type streamKey struct {
	delta bool
	id    int64
}

type streamState struct {
	// ctx is the stream's context (who authenticated, for Admission).
	ctx    context.Context
	nodeID string
	// sent is the last response per type URL on a SotW stream.
	sent map[string]sent
	// The sync state shown by mesh status (syncstate.go).
	kind   string
	opened time.Time
	types  map[string]*typeSync
	// held is, per type URL, what the stream's client was sent (mesh
	// inspect, /config_dump?node=ID; held.go).
	held map[string]*heldNames
}

type sent struct{ nonce, version string }

// New returns a server with no snapshots.
func New(log zerolog.Logger, reg prometheus.Registerer) *Server {
	s := &Server{
		log:     log,
		metrics: newMetrics(reg),
		hasher:  NewHasher(),
		nodes:   map[string]*nodeState{},
		streams: map[streamKey]*streamState{},
		secrets: newSecrets(log),

		edsVersions: map[string]string{},
	}
	// ads=false: the ADS flag's only other effect is to hold any named
	// request that does not name every resource of its type, which a gRPC
	// client (asking for one listener) never does. Push order is kept by
	// setting snapshots type by type instead (see push).
	s.cache = cache.NewSnapshotCache(false, cache.IDHash{}, cacheLogger{log})
	s.delta = newDeltaCache()
	s.eds = newEndpointCache()
	s.deltaEDS = cache.NewLinearCache(resourcev3.EndpointType, cache.WithLogger(cacheLogger{log}))
	s.mux = &cache.MuxCache{
		Classify: func(r *cache.Request) string {
			switch r.GetTypeUrl() {
			case resourcev3.EndpointType:
				return "eds"
			case resourcev3.SecretType:
				return "secrets"
			}
			return "snapshots"
		},
		ClassifyDelta: func(r *cache.DeltaRequest) string {
			switch r.GetTypeUrl() {
			case resourcev3.EndpointType:
				return "delta-eds"
			case resourcev3.SecretType:
				return "secrets"
			}
			return "delta"
		},
		Caches: map[string]cache.Cache{"eds": s.eds, "delta-eds": s.deltaEDS, "snapshots": s.cache, "delta": s.delta, "secrets": s.secrets.cache},
	}
	return s
}

// Register adds the ADS service (SotW and delta) and the per-type xDS
// services to g. ctx bounds every stream: cancel it before a graceful stop.
func (s *Server) Register(ctx context.Context, g *grpc.Server) {
	srv := serverv3.NewServer(ctx, s.mux, s,
		sotw.WithOrderedADS(),
		sotw.DeactivateLegacyWildcardForTypes([]string{resourcev3.EndpointType, resourcev3.RouteType}),
		sotw.WithLogger(cacheLogger{s.log}),
	)
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(g, srv)
	clusterservice.RegisterClusterDiscoveryServiceServer(g, srv)
	endpointservice.RegisterEndpointDiscoveryServiceServer(g, srv)
	listenerservice.RegisterListenerDiscoveryServiceServer(g, srv)
	routeservice.RegisterRouteDiscoveryServiceServer(g, srv)
}

// Ready reports whether a model has been set and pushed: the server
// serves xDS streams from then on.
func (s *Server) Ready() bool { return s.ready.Load() }

// Update sets every connected node's snapshot from a new translation:
// translate gives each node's complete, validated output (Mesh.Node); the
// server only versions it and sets it. A node whose translation fails
// keeps its previous snapshot. The change goes out type by type for all
// nodes (CDS, EDS, LDS, RDS); types whose version did not change are not
// touched, so an unchanged view pushes nothing and a health change pushes
// one load assignment.
func (s *Server) Update(ctx context.Context, mesh *translate.Mesh) error {
	start := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hasher.Rotate()
	// A Mesh that names its changed services (translate's incremental
	// translation of the previous one) gets copies of the previous sets
	// with only those entries hashed again.
	changed := mesh.Changed()
	if s.mesh == nil || s.shared == nil || mesh.Base() != s.mesh {
		changed = nil
	}
	sh := map[translate.SharedSet]*Set{}
	for name, src := range mesh.SharedSets() {
		var set *Set
		var err error
		if prev := s.shared[name]; changed != nil && prev != nil {
			names := changed
			if name == translate.SharedOutboundRoutes {
				// The services' own route configurations (named after
				// them) and mesh_outbound, which holds every service.
				names = make([]string, 0, len(changed)+1)
				for _, n := range changed {
					names = append(names, wire.ServiceRoute(n))
				}
				names = append(names, wire.OutboundRoute)
			}
			set, err = s.hasher.UpdateSet(prev, src, names)
		} else {
			set, err = s.hasher.NewSet(src)
		}
		if err != nil {
			return fmt.Errorf("version shared %s: %w", name, err)
		}
		sh[name] = set
	}
	prevEndpoints := s.shared[translate.SharedEndpoints]
	s.mesh, s.shared = mesh, sh
	next := make(map[string]*Snapshot, len(s.nodes))
	for id, st := range s.nodes {
		snap, err := s.nodeSnapshot(id, st)
		if err != nil {
			s.log.Error().Err(err).Str("node", id).Msg("node snapshot refused, node keeps its previous one")
			continue
		}
		next[id] = snap
	}
	for i := range Kinds {
		if Kinds[i] == resourcev3.EndpointType {
			if err := s.setEndpoints(prevEndpoints, sh[translate.SharedEndpoints], changed); err != nil {
				return err
			}
		}
		for id, snap := range next {
			if err := s.pushKind(ctx, id, s.nodes[id], snap, i); err != nil {
				s.log.Error().Err(err).Str("node", id).Msg("node snapshot refused, node keeps its previous one")
				delete(next, id)
			}
		}
	}
	s.metrics.setTime.Observe(time.Since(start).Seconds())
	s.ready.Store(true)
	return nil
}

// setEndpoints hands the load assignments that changed between prev and
// next to the shared EDS caches, which push each to the clients subscribed
// to it. names, when not nil, are the only names that may differ.
func (s *Server) setEndpoints(prev, next *Set, names []string) error {
	if prev == nil {
		prev, names = emptySet, nil
	}
	changed := map[string]types.Resource{}
	var gone []string
	if names != nil {
		// Only these may differ.
		for _, name := range names {
			v, ok := next.versions[name]
			switch {
			case ok && prev.versions[name] != v:
				changed[name] = next.resources[name]
			case !ok:
				if _, had := prev.versions[name]; had {
					gone = append(gone, name)
				}
			}
		}
	} else {
		for name, v := range next.versions {
			if prev.versions[name] != v {
				changed[name] = next.resources[name]
			}
		}
		for name := range prev.versions {
			if _, ok := next.versions[name]; !ok {
				gone = append(gone, name)
			}
		}
	}
	if len(changed) == 0 && len(gone) == 0 {
		return nil
	}
	if err := s.eds.update(next.Version, changed, next.versions, gone); err != nil {
		return err
	}
	if err := s.deltaEDS.UpdateResources(changed, gone); err != nil {
		return fmt.Errorf("set load assignments: %w", err)
	}
	s.edsUpdates++
	s.vmu.Lock()
	s.edsVersions[strconv.FormatUint(s.edsUpdates, 10)] = next.Version
	delete(s.edsVersions, strconv.FormatUint(s.edsUpdates-edsVersionsKept, 10))
	s.vmu.Unlock()
	return nil
}

// edsVersionsKept bounds edsVersions: a response is sent right after the
// update it carries, or later with a newer one.
const edsVersionsKept = 64

// deltaVersion is the content version to send as a delta EDS response's
// system_version_info in place of deltaEDS's per-process counter, or ""
// when that update is no longer known.
func (s *Server) deltaVersion(counter string) string {
	s.vmu.Lock()
	defer s.vmu.Unlock()
	return s.edsVersions[counter]
}

// nodeSnapshot builds a node's snapshot from its translation in the
// current mesh, versioning its own resources again only when translate
// built new ones. s.mu is held.
func (s *Server) nodeSnapshot(id string, st *nodeState) (*Snapshot, error) {
	out, err := s.mesh.Node(st.node)
	if err != nil {
		return nil, fmt.Errorf("translate node %s: %w", id, err)
	}
	layers := out.Layers()
	if !out.SameOwn(st.out) {
		var own [4]*Set
		for i, l := range layers {
			if own[i], err = s.hasher.NewSet(l.Own); err != nil {
				return nil, fmt.Errorf("version node %s: %w", id, err)
			}
		}
		st.own = own
	}
	st.out = out
	var snap [4]*Layer
	for i, l := range layers {
		if sh := s.shared[l.Shared]; sh != nil {
			snap[i] = NewLayer(sh, st.own[i])
		} else {
			snap[i] = NewLayer(st.own[i], nil)
		}
	}
	return NewSnapshot(snap[0], snap[1], snap[2], snap[3]), nil
}

// setNode builds a node's snapshot from the current mesh and pushes it.
// s.mu is held.
func (s *Server) setNode(ctx context.Context, id string, st *nodeState) error {
	if s.mesh == nil {
		return nil
	}
	next, err := s.nodeSnapshot(id, st)
	if err != nil {
		return err
	}
	for i := range Kinds {
		if err := s.pushKind(ctx, id, st, next, i); err != nil {
			return err
		}
	}
	return nil
}

// pushKind moves a node's snapshot to next's layer of Kinds[i], setting it
// in the cache when its version changed. Called in Kinds order, the
// responses to the node's open watches leave in that order (the ordered
// ADS server sends them through one queue). For a new node, types not set
// yet have the empty version, which keeps the client's initial
// (empty-version) requests waiting. Load assignments are served from the
// shared EDS cache; the snapshot's layer only records them.
func (s *Server) pushKind(ctx context.Context, id string, st *nodeState, next *Snapshot, i int) error {
	cur := &Snapshot{}
	if st.snap != nil {
		cur.layers = st.snap.layers
	} else {
		for k := range cur.layers {
			cur.layers[k] = &Layer{base: emptySet}
		}
	}
	same := cur.layers[i].Version == next.layers[i].Version
	cur.layers[i] = next.layers[i]
	if !same && Kinds[i] != resourcev3.EndpointType {
		if err := s.cache.SetSnapshot(ctx, id, cur); err != nil {
			return fmt.Errorf("set %s snapshot of node %s: %w", typeName(Kinds[i]), id, err)
		}
		if err := s.delta.set(id, cur, Kinds[i]); err != nil {
			return fmt.Errorf("set %s snapshot of node %s: %w", typeName(Kinds[i]), id, err)
		}
	}
	st.snap = cur
	return nil
}

var emptySet = &Set{resources: map[string]types.Resource{}, withTTL: map[string]types.ResourceWithTTL{}, versions: map[string]string{}}

// NodeInfo is what the server holds for one connected node.
type NodeInfo struct {
	Node     model.Node        `json:"node"`
	Streams  int               `json:"streams"`
	Versions map[string]string `json:"versions,omitempty"`
}

// Nodes lists the connected nodes, sorted by id.
func (s *Server) Nodes() []NodeInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]NodeInfo, 0, len(s.nodes))
	for _, st := range s.nodes {
		out = append(out, info(st))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node.ID < out[j].Node.ID })
	return out
}

func info(st *nodeState) NodeInfo {
	ni := NodeInfo{Node: st.node, Streams: st.streams}
	if st.snap != nil {
		ni.Versions = map[string]string{}
		for i, v := range st.snap.Versions() {
			ni.Versions[typeName(Kinds[i])] = v
		}
	}
	return ni
}

// NodeResources returns what a connected node was sent, by type name
// (cluster, endpoint, listener, route): of its snapshot's resources,
// those its streams subscribed to and were sent (a scoped delta agent
// holds a few services of the mesh), each as the snapshot has it now. It
// returns false if the node is unknown.
func (s *Server) NodeResources(id string) (NodeInfo, map[string]map[string]types.Resource, bool) {
	held := s.heldBy(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.nodes[id]
	if !ok {
		return NodeInfo{}, nil, false
	}
	out := map[string]map[string]types.Resource{}
	if st.snap != nil {
		for _, k := range Kinds {
			out[typeName(k)] = held[k].filter(st.snap.GetResources(k))
		}
	}
	return info(st), out, true
}

// register counts a stream of a node and, for a new node, sets its
// snapshot from the current mesh. A node id connected under another
// owner is refused (errNodeTaken).
func (s *Server) register(n model.Node, owner string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.nodes[n.ID]
	if ok && st.owner != owner {
		return errNodeTaken(n.ID, st.owner, owner)
	}
	if !ok {
		st = &nodeState{node: n, owner: owner}
		s.nodes[n.ID] = st
		s.metrics.connected.Set(float64(len(s.nodes)))
		s.log.Info().Str("node", n.ID).Str("service", n.Service).Bool("proxyless", n.Proxyless).Msg("node connected")
	}
	st.streams++
	if st.node != n || st.snap == nil {
		st.node = n
		if err := s.setNode(context.Background(), n.ID, st); err != nil {
			s.log.Error().Err(err).Str("node", n.ID).Msg("node snapshot refused")
		}
	}
	if !ok {
		s.secrets.connect(n.ID)
	}
	return nil
}

// unregister drops a stream; a node without streams is forgotten.
func (s *Server) unregister(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.nodes[id]
	if !ok {
		return
	}
	if st.streams--; st.streams > 0 {
		return
	}
	delete(s.nodes, id)
	s.cache.ClearSnapshot(id)
	s.delta.clear(id)
	s.secrets.disconnect(id)
	s.metrics.connected.Set(float64(len(s.nodes)))
	s.log.Info().Str("node", id).Msg("node disconnected")
}

func typeName(typeURL string) string {
	switch typeURL {
	case resourcev3.ClusterType:
		return "cluster"
	case resourcev3.EndpointType:
		return "endpoint"
	case resourcev3.ListenerType:
		return "listener"
	case resourcev3.RouteType:
		return "route"
	case resourcev3.SecretType:
		return "secret"
	}
	return strings.TrimPrefix(typeURL, resourcev3.APITypePrefix)
}

// cacheLogger sends go-control-plane's logs to zerolog at debug level
// (errors stay errors).
type cacheLogger struct{ log zerolog.Logger }

func (l cacheLogger) Debugf(f string, a ...any) { l.log.Debug().Msgf(f, a...) }
func (l cacheLogger) Infof(f string, a ...any)  { l.log.Debug().Msgf(f, a...) }
func (l cacheLogger) Warnf(f string, a ...any)  { l.log.Debug().Msgf(f, a...) }
func (l cacheLogger) Errorf(f string, a ...any) { l.log.Error().Msgf(f, a...) }
