package translate

import (
	"fmt"
	"sort"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"google.golang.org/protobuf/proto"

	"github.com/meshvm/mesh/wire"
)

type validator interface{ Validate() error }

// Validate runs go-control-plane's generated Validate() on every resource
// of the sets, then checks that the sets are consistent the way an ADS
// client needs: every EDS cluster has a load assignment, every listener's
// RDS name has a route configuration, every route's cluster exists. The
// go-control-plane Snapshot.Consistent() is not used: it misreports API
// listeners.
func Validate(r Resources) error {
	for _, s := range []Set{r.Clusters, r.Endpoints, r.Listeners, r.Routes} {
		if err := validateSet(s); err != nil {
			return err
		}
	}
	return Consistent(r)
}

func validateSet(s Set) error {
	for _, name := range sortedNames(s) {
		v, ok := s[name].(validator)
		if !ok {
			return fmt.Errorf("resource %q: %T has no Validate", name, s[name])
		}
		if err := v.Validate(); err != nil {
			return fmt.Errorf("resource %q: %w", name, err)
		}
	}
	return nil
}

// Validate checks all the shared resources.
func (m *Mesh) Validate() error {
	_, err := m.validate(nil)
	return err
}

// validate checks the shared resources, skipping the Validate() of those
// in done (checked in an earlier build: same message, same content), and
// returns the set of the messages now checked.
func (m *Mesh) validate(done map[proto.Message]bool) (map[proto.Message]bool, error) {
	r := Resources{
		Clusters:  m.Clusters,
		Endpoints: m.Endpoints,
		Listeners: m.APIListeners,
		Routes:    merged(m.APIRoutes, Set{wire.OutboundRoute: m.Outbound}),
	}
	now := make(map[proto.Message]bool, 4*len(m.Clusters)+1)
	for _, s := range []Set{r.Clusters, r.Endpoints, r.Listeners, r.Routes} {
		fresh := Set{}
		for k, v := range s {
			now[v] = true
			if !done[v] {
				fresh[k] = v
			}
		}
		if err := validateSet(fresh); err != nil {
			return nil, err
		}
	}
	// gRPC's forms of the mTLS clusters (the others are in Clusters).
	fresh := Set{}
	for k, v := range m.APIClusters {
		now[v] = true
		if !done[v] {
			fresh[k] = v
		}
	}
	if err := validateSet(fresh); err != nil {
		return nil, err
	}
	// Listeners checked before still point at the same route names, which
	// exist as long as their services do (checked via the clusters).
	from := r
	from.Listeners = Set{}
	for k, v := range r.Listeners {
		if !done[v] {
			from.Listeners[k] = v
		}
	}
	all := lookup{Clusters: union{r.Clusters}, Endpoints: union{r.Endpoints}, Routes: union{r.Routes}}
	if err := consistent(from, all); err != nil {
		return nil, err
	}
	return now, nil
}

// union looks a name up in several sets without merging them.
type union []Set

func (u union) has(name string) bool {
	for _, s := range u {
		if _, ok := s[name]; ok {
			return true
		}
	}
	return false
}

// Consistent checks that every reference in r resolves within r.
func Consistent(r Resources) error {
	return consistent(r, lookup{Clusters: union{r.Clusters}, Endpoints: union{r.Endpoints}, Routes: union{r.Routes}})
}

// lookup answers "does this resource exist" per type.
type lookup struct{ Clusters, Endpoints, Routes union }

// consistent checks the references of the resources in from against all.
func consistent(from Resources, all lookup) error {
	for _, name := range sortedNames(from.Clusters) {
		c, ok := from.Clusters[name].(*clusterv3.Cluster)
		if !ok {
			return fmt.Errorf("cluster %q: unexpected type %T", name, from.Clusters[name])
		}
		if c.GetType() == clusterv3.Cluster_EDS {
			eds := c.GetEdsClusterConfig().GetServiceName()
			if eds == "" {
				eds = c.GetName()
			}
			if !all.Endpoints.has(eds) {
				return fmt.Errorf("cluster %q: no load assignment %q", name, eds)
			}
		}
	}
	for _, name := range sortedNames(from.Listeners) {
		l, ok := from.Listeners[name].(*listenerv3.Listener)
		if !ok {
			return fmt.Errorf("listener %q: unexpected type %T", name, from.Listeners[name])
		}
		hcms, err := listenerHCMs(l)
		if err != nil {
			return fmt.Errorf("listener %q: %w", name, err)
		}
		for _, h := range hcms {
			if rds := h.GetRds(); rds != nil {
				if !all.Routes.has(rds.GetRouteConfigName()) {
					return fmt.Errorf("listener %q: no route configuration %q", name, rds.GetRouteConfigName())
				}
			}
			if rc := h.GetRouteConfig(); rc != nil {
				if err := routeClusters(rc, all.Clusters); err != nil {
					return fmt.Errorf("listener %q: %w", name, err)
				}
			}
		}
	}
	for _, name := range sortedNames(from.Routes) {
		rc, ok := from.Routes[name].(*routev3.RouteConfiguration)
		if !ok {
			return fmt.Errorf("route configuration %q: unexpected type %T", name, from.Routes[name])
		}
		if err := routeClusters(rc, all.Clusters); err != nil {
			return fmt.Errorf("route configuration %q: %w", name, err)
		}
	}
	return nil
}

func listenerHCMs(l *listenerv3.Listener) ([]*hcmv3.HttpConnectionManager, error) {
	var out []*hcmv3.HttpConnectionManager
	if api := l.GetApiListener().GetApiListener(); api != nil {
		h := &hcmv3.HttpConnectionManager{}
		if err := api.UnmarshalTo(h); err != nil {
			return nil, fmt.Errorf("api_listener: %w", err)
		}
		out = append(out, h)
	}
	for _, fc := range l.GetFilterChains() {
		for _, f := range fc.GetFilters() {
			if f.GetName() != wire.HTTPConnectionManager {
				continue
			}
			h := &hcmv3.HttpConnectionManager{}
			if err := f.GetTypedConfig().UnmarshalTo(h); err != nil {
				return nil, fmt.Errorf("filter %s: %w", f.GetName(), err)
			}
			out = append(out, h)
		}
	}
	return out, nil
}

func routeClusters(rc *routev3.RouteConfiguration, clusters union) error {
	for _, vh := range rc.GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			names := []string{r.GetRoute().GetCluster()}
			for _, w := range r.GetRoute().GetWeightedClusters().GetClusters() {
				names = append(names, w.GetName())
			}
			for _, mp := range r.GetRoute().GetRequestMirrorPolicies() {
				names = append(names, mp.GetCluster())
			}
			for _, c := range names {
				if c != "" && !clusters.has(c) {
					return fmt.Errorf("virtual host %q: no cluster %q", vh.GetName(), c)
				}
			}
		}
	}
	return nil
}

func merged(a, b Set) Set {
	out := make(Set, len(a)+len(b))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

func sortedNames(s Set) []string {
	names := make([]string, 0, len(s))
	for k := range s {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}
