package translate

import (
	"fmt"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/wire"
)

// Traffic management (control.services.<name>): a service's subsets
// become clusters of their own, named wire.SubsetCluster (orders/v2),
// with the service's policy translation (or the subset's override), its
// mTLS identity and a load assignment holding the matching endpoints
// only; the service's routes go, in order, before the catch-all route of
// its virtual host in the agents' outbound route configuration and in the
// service's own route configuration (gRPC proxyless clients); the
// catch-all goes to the default subset when there is one.

// addTraffic adds the subsets' clusters and load assignments of the
// model's services to out and replaces the virtual hosts (vhosts, in
// model order) and API route configurations of services with traffic
// settings. A route's target the model does not know yet gets a cluster
// with the configured policy and no endpoints, so the route answers 503
// until it appears.
func addTraffic(m *model.Model, out *Mesh, vhosts []*routev3.VirtualHost, mtls MTLS) error {
	needed := map[string]bool{}
	policyOf := func(cluster string) config.Policy {
		svc, sub := wire.SplitCluster(cluster)
		s := m.Service(svc)
		switch {
		case s == nil:
			return out.configured.For(svc)
		case sub == "":
			return s.Policy
		case s.Subset(sub) != nil:
			return s.Subset(sub).Policy
		}
		return s.Policy
	}
	for i := range m.Services {
		s := &m.Services[i]
		if !s.HasTraffic() {
			continue
		}
		for j := range s.Subsets {
			if err := addSubset(out, s, &s.Subsets[j], mtls); err != nil {
				return err
			}
		}
		mine := map[string]bool{}
		for j := range s.Subsets {
			mine[wire.SubsetCluster(s.Name, s.Subsets[j].Name)] = true
		}
		for _, api := range []bool{false, true} {
			vh, err := trafficVirtualHost(s, &routeCtx{
				owner:          s.Name,
				defaultCluster: defaultCluster(s),
				api:            api,
				hash:           true,
				policyOf:       policyOf,
				ensure:         func(c string) error { needed[c], mine[c] = true, true; return nil },
			})
			if err != nil {
				return err
			}
			if api {
				out.APIRoutes[s.Name] = &routev3.RouteConfiguration{Name: wire.ServiceRoute(s.Name), VirtualHosts: []*routev3.VirtualHost{vh}}
			} else {
				vhosts[i] = vh
			}
		}
		delete(mine, s.Name)
		if out.routeClusters == nil {
			out.routeClusters = map[string][]string{}
		}
		out.routeClusters[s.Name] = sortedKeys(mine)
	}
	for _, name := range sortedKeys(needed) {
		if _, ok := out.Clusters[name]; ok {
			continue
		}
		svc, _ := wire.SplitCluster(name)
		c, err := Cluster(&model.Service{Name: svc, Policy: policyOf(name)})
		if err != nil {
			return fmt.Errorf("cluster %s: %w", name, err)
		}
		c.Name = name
		out.Clusters[name] = c
		out.APIClusters[name] = grpcHashLB(c)
		out.Endpoints[name] = &endpointv3.ClusterLoadAssignment{ClusterName: name}
	}
	return nil
}

// ServiceClusters are the clusters a caller of service needs: the
// service's own, its subsets' and every cluster its routes send or
// mirror to, sorted (the service's first). For an agent that gets only
// the services it uses.
func (m *Mesh) ServiceClusters(service string) []string {
	return append([]string{service}, m.routeClusters[service]...)
}

// defaultCluster is where a service's catch-all route goes.
func defaultCluster(s *model.Service) string {
	if s.DefaultSubset != "" {
		return wire.SubsetCluster(s.Name, s.DefaultSubset)
	}
	return s.Name
}

// addSubset adds one subset's cluster (the service's translation, named
// orders/v2, verifying the service's identity), its gRPC form and its
// load assignment (the subset's endpoints).
func addSubset(out *Mesh, s *model.Service, sub *model.Subset, mtls MTLS) error {
	name := wire.SubsetCluster(s.Name, sub.Name)
	// The service's name and endpoints (protocol, mTLS and identity are
	// the service's), the subset's policy.
	as := &model.Service{Name: s.Name, Policy: sub.Policy, Endpoints: s.Endpoints}
	c, err := Cluster(as)
	if err != nil {
		return fmt.Errorf("subset %s: %w", name, err)
	}
	if err := setUpstreamTLS(c, as, mtls); err != nil {
		return fmt.Errorf("subset %s: %w", name, err)
	}
	c.Name = name
	ac, err := grpcCluster(c, as, mtls)
	if err != nil {
		return fmt.Errorf("subset %s: %w", name, err)
	}
	out.Clusters[name] = c
	out.APIClusters[name] = grpcHashLB(ac)
	out.Endpoints[name] = LoadAssignment(&model.Service{Name: name, Endpoints: sub.Endpoints})
	return nil
}

// trafficVirtualHost is a service's virtual host: its routes in order,
// then the catch-all to its default cluster.
func trafficVirtualHost(s *model.Service, rc *routeCtx) (*routev3.VirtualHost, error) {
	vh := &routev3.VirtualHost{Name: s.Name, Domains: Domains(s.Name)}
	for i := range s.Routes {
		r, err := buildRoute(&s.Routes[i], routeName(&s.Routes[i], i), rc)
		if err != nil {
			return nil, fmt.Errorf("control.services.%s.routes[%d]: %w", s.Name, i, err)
		}
		vh.Routes = append(vh.Routes, r)
	}
	r, err := buildRoute(&config.Route{}, s.Name, rc)
	if err != nil {
		return nil, fmt.Errorf("control.services.%s: default route: %w", s.Name, err)
	}
	vh.Routes = append(vh.Routes, r)
	return vh, nil
}

// setHashLB makes c a consistent-hash cluster: RING_HASH (with its
// minimum ring size) or MAGLEV. Zone-aware routing does not apply to
// them.
func setHashLB(c *clusterv3.Cluster, lb config.LoadBalancer) {
	switch lb.Policy {
	case "ring_hash":
		c.LbPolicy = clusterv3.Cluster_RING_HASH
		cfg := &clusterv3.Cluster_RingHashLbConfig{}
		if lb.RingSize > 0 {
			cfg.MinimumRingSize = wrapperspb.UInt64(uint64(lb.RingSize))
		}
		c.LbConfig = &clusterv3.Cluster_RingHashLbConfig_{RingHashLbConfig: cfg}
	case "maglev":
		c.LbPolicy = clusterv3.Cluster_MAGLEV
		c.LbConfig = &clusterv3.Cluster_MaglevLbConfig_{MaglevLbConfig: &clusterv3.Cluster_MaglevLbConfig{}}
	}
}

// grpcHashLB is c as gRPC proxyless clients get it: gRPC has no Maglev,
// so a MAGLEV cluster is offered as RING_HASH (the same hash keys pick
// an endpoint consistently, on another ring).
func grpcHashLB(c *clusterv3.Cluster) *clusterv3.Cluster {
	if c.GetLbPolicy() != clusterv3.Cluster_MAGLEV {
		return c
	}
	g := proto.Clone(c).(*clusterv3.Cluster)
	g.LbPolicy = clusterv3.Cluster_RING_HASH
	g.LbConfig = &clusterv3.Cluster_RingHashLbConfig_{RingHashLbConfig: &clusterv3.Cluster_RingHashLbConfig{}}
	return g
}

// faultFilter is the HTTP filter wire.FaultFilter with no faults of its
// own: routes configure it (typed_per_filter_config).
func faultFilter() *hcmv3.HttpFilter {
	a, err := anypb.New(&faultv3.HTTPFault{})
	if err != nil {
		panic(fmt.Sprintf("marshal an empty HTTPFault: %v", err)) // cannot happen
	}
	return &hcmv3.HttpFilter{Name: wire.FaultFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}}
}
