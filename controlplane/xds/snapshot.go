package xds

import (
	"encoding/binary"
	"fmt"
	"maps"
	"strconv"

	"github.com/cespare/xxhash/v2"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/meshvm/mesh/controlplane/translate"
)

// Kinds are the resource types mesh serves, in push order: a client
// never gets an EDS or RDS resource before the CDS or LDS resource that
// names it.
var Kinds = [4]string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType}

// Set is a hashed, versioned set of resources of one type. Sets are
// immutable once built and shared between the snapshots of many nodes.
type Set struct {
	// Version is derived from the content: equal sets have equal versions.
	Version   string
	resources map[string]types.Resource
	withTTL   map[string]types.ResourceWithTTL
	versions  map[string]string
	// sum is the sum of the entries' hashes (entryHash), which Version
	// is made of: adding, removing or changing one entry updates it
	// without a pass over the others (Hasher.UpdateSet).
	sum uint64
}

// Len is the number of resources.
func (s *Set) Len() int { return len(s.resources) }

// Resources returns the set's resources; do not modify the map.
func (s *Set) Resources() map[string]types.Resource { return s.resources }

// Hasher hashes resources, reusing a buffer and remembering the hash of
// each resource message it has seen (by pointer), so resources shared
// between builds are not marshalled again.
type Hasher struct {
	buf  []byte
	seen map[proto.Message]string
	next map[proto.Message]string
}

// NewHasher returns a hasher with an empty memory.
func NewHasher() *Hasher {
	return &Hasher{seen: map[proto.Message]string{}, next: map[proto.Message]string{}}
}

// Rotate forgets hashes not used since the previous Rotate, bounding the
// memory to the resources of the current build.
func (h *Hasher) Rotate() {
	h.seen, h.next = h.next, make(map[proto.Message]string, len(h.next))
}

func (h *Hasher) hash(m proto.Message) (string, error) {
	if v, ok := h.next[m]; ok {
		return v, nil
	}
	if v, ok := h.seen[m]; ok {
		h.next[m] = v
		return v, nil
	}
	var err error
	h.buf, err = proto.MarshalOptions{Deterministic: true}.MarshalAppend(h.buf[:0], m)
	if err != nil {
		return "", err
	}
	// The version go-control-plane's delta server puts on the wire for
	// each resource (the SHA-256 of its deterministic encoding, whatever
	// version map the snapshot gives): with the same function here, the
	// versions a reconnecting client sends (initial_resource_versions)
	// compare equal to the snapshot's, so nothing unchanged is resent,
	// by this replica or another one (decision 61).
	v := cache.HashResource(h.buf)
	h.next[m] = v
	return v, nil
}

// NewSet hashes resources into a Set.
func (h *Hasher) NewSet(in translate.Set) (*Set, error) {
	s := &Set{
		resources: make(map[string]types.Resource, len(in)),
		withTTL:   make(map[string]types.ResourceWithTTL, len(in)),
		versions:  make(map[string]string, len(in)),
	}
	for name, m := range in {
		if err := h.put(s, name, m); err != nil {
			return nil, err
		}
	}
	s.Version = strconv.FormatUint(s.sum, 36)
	return s, nil
}

// UpdateSet is NewSet for in when only the names in changed may differ
// from prev's resources: prev's maps are copied and only those names are
// hashed again (or removed), so a change to one of 10,000 resources
// costs no pass over the others. prev is not modified.
func (h *Hasher) UpdateSet(prev *Set, in translate.Set, changed []string) (*Set, error) {
	s := &Set{
		resources: maps.Clone(prev.resources),
		withTTL:   maps.Clone(prev.withTTL),
		versions:  maps.Clone(prev.versions),
		sum:       prev.sum,
	}
	for _, name := range changed {
		if v, ok := s.versions[name]; ok {
			s.sum -= entryHash(name, v)
			delete(s.resources, name)
			delete(s.withTTL, name)
			delete(s.versions, name)
		}
		if m, ok := in[name]; ok {
			if err := h.put(s, name, m); err != nil {
				return nil, err
			}
		}
	}
	s.Version = strconv.FormatUint(s.sum, 36)
	return s, nil
}

func (h *Hasher) put(s *Set, name string, m proto.Message) error {
	v, err := h.hash(m)
	if err != nil {
		return fmt.Errorf("hash %s: %w", name, err)
	}
	s.resources[name] = m
	s.withTTL[name] = types.ResourceWithTTL{Resource: m}
	s.versions[name] = v
	s.sum += entryHash(name, v)
	return nil
}

// entryHash is one entry's part of its set's version: the version is the
// sum of its entries' hashes, so it does not depend on their order and
// equal sets have equal versions on every replica.
func entryHash(name, version string) uint64 {
	d := xxhash.New()
	var l [8]byte
	binary.LittleEndian.PutUint64(l[:], uint64(len(name)))
	_, _ = d.Write(l[:])
	_, _ = d.WriteString(name)
	_, _ = d.WriteString(version)
	return d.Sum64()
}

// Layer is a shared Set plus a few node-specific resources: a node's
// clusters are the mesh's plus its local app cluster. The merged maps are
// built when asked for, so 10,000 shared clusters are not copied per node.
type Layer struct {
	Version string
	base    *Set
	own     *Set
}

// NewLayer combines base with own (which may be nil or empty).
func NewLayer(base, own *Set) *Layer {
	if own == nil || own.Len() == 0 {
		return &Layer{Version: base.Version, base: base}
	}
	return &Layer{Version: base.Version + "." + own.Version, base: base, own: own}
}

func (l *Layer) resources() map[string]types.Resource {
	if l.own == nil {
		return l.base.resources
	}
	out := make(map[string]types.Resource, len(l.base.resources)+len(l.own.resources))
	for k, v := range l.base.resources {
		out[k] = v
	}
	for k, v := range l.own.resources {
		out[k] = v
	}
	return out
}

func (l *Layer) withTTL() map[string]types.ResourceWithTTL {
	if l.own == nil {
		return l.base.withTTL
	}
	out := make(map[string]types.ResourceWithTTL, len(l.base.withTTL)+len(l.own.withTTL))
	for k, v := range l.base.withTTL {
		out[k] = v
	}
	for k, v := range l.own.withTTL {
		out[k] = v
	}
	return out
}

func (l *Layer) versions() map[string]string {
	if l.own == nil {
		return l.base.versions
	}
	out := make(map[string]string, len(l.base.versions)+len(l.own.versions))
	for k, v := range l.base.versions {
		out[k] = v
	}
	for k, v := range l.own.versions {
		out[k] = v
	}
	return out
}

// get returns one resource of the layer and its version, without
// building the merged maps.
func (l *Layer) get(name string) (types.Resource, string, bool) {
	if l.own != nil {
		if v, ok := l.own.versions[name]; ok {
			return l.own.resources[name], v, true
		}
	}
	if v, ok := l.base.versions[name]; ok {
		return l.base.resources[name], v, true
	}
	return nil, "", false
}

// each calls f for every resource of the layer.
func (l *Layer) each(f func(name string, r types.Resource, version string)) {
	for _, s := range []*Set{l.base, l.own} {
		if s == nil {
			continue
		}
		for name, v := range s.versions {
			f(name, s.resources[name], v)
		}
	}
}

// Len is the number of resources in the layer.
func (l *Layer) Len() int {
	n := l.base.Len()
	if l.own != nil {
		n += l.own.Len()
	}
	return n
}

// Snapshot is one node's resources, one Layer per kind (in Kinds order).
// It implements go-control-plane's cache.ResourceSnapshot.
type Snapshot struct {
	layers [4]*Layer
}

// NewSnapshot builds a snapshot from layers in Kinds order.
func NewSnapshot(clusters, endpoints, listeners, routes *Layer) *Snapshot {
	return &Snapshot{layers: [4]*Layer{clusters, endpoints, listeners, routes}}
}

func (s *Snapshot) layer(typeURL string) *Layer {
	for i, k := range Kinds {
		if k == typeURL {
			return s.layers[i]
		}
	}
	return nil
}

// GetVersion implements cache.ResourceSnapshot.
func (s *Snapshot) GetVersion(typeURL string) string {
	if l := s.layer(typeURL); l != nil {
		return l.Version
	}
	return ""
}

// GetResourcesAndTTL implements cache.ResourceSnapshot.
func (s *Snapshot) GetResourcesAndTTL(typeURL string) map[string]types.ResourceWithTTL {
	if l := s.layer(typeURL); l != nil {
		return l.withTTL()
	}
	return nil
}

// GetResources implements cache.ResourceSnapshot.
func (s *Snapshot) GetResources(typeURL string) map[string]types.Resource {
	if l := s.layer(typeURL); l != nil {
		return l.resources()
	}
	return nil
}

// ConstructVersionMap implements cache.ResourceSnapshot: the per-resource
// versions are the content hashes computed when the sets were built.
func (s *Snapshot) ConstructVersionMap() error { return nil }

// GetVersionMap implements cache.ResourceSnapshot.
func (s *Snapshot) GetVersionMap(typeURL string) map[string]string {
	if l := s.layer(typeURL); l != nil {
		return l.versions()
	}
	return nil
}

// Versions returns the snapshot's version per kind, in Kinds order.
func (s *Snapshot) Versions() [4]string {
	var v [4]string
	for i, l := range s.layers {
		v[i] = l.Version
	}
	return v
}
