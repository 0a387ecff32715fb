// Package translate turns the control plane's model into Envoy v3 xDS
// resources: model + policies + node → that node's complete, validated
// resources. Translate builds the resources every node shares once per
// model; Mesh.Node gives one node its whole output (the shared sets it
// gets plus its own resources), so a server only versions and sets it. It
// is pure: no I/O, no clock, no randomness, so equal inputs give
// byte-equal resources, and it is table- and golden-tested (the golden
// files are the wire contract's, in wire/testdata). Names and keys come
// from package wire; controlplane/README.md describes the resources.
package translate

import (
	"fmt"
	"net"
	"reflect"
	"slices"
	"strconv"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	localratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	randomv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/random/v3"
	roundrobinv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/round_robin/v3"
	previoushostsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/wire"
)

// Set is resources of one type by name.
type Set map[string]proto.Message

// Mesh is one model's translation: the resources that do not depend on
// the node, built once per model and shared by all nodes (SharedSets),
// and what Node needs to give each node the rest.
type Mesh struct {
	// Clusters has one EDS cluster per service.
	Clusters Set
	// Endpoints has one ClusterLoadAssignment per service.
	Endpoints Set
	// Outbound is the wire.OutboundRoute configuration.
	Outbound *routev3.RouteConfiguration
	// AgentRoutes are the route configurations agents get: Outbound and,
	// for agents subscribed to services one by one (delta xDS), one per
	// service, wire.ServiceRoute(service), holding the very virtual host
	// Outbound has for it (retries pick another host).
	AgentRoutes Set
	// APIListeners and APIRoutes serve gRPC proxyless clients: a listener
	// and a route configuration named after each service.
	APIListeners Set
	APIRoutes    Set
	// APIClusters are the clusters gRPC proxyless clients get: Clusters,
	// except that a service taking mTLS has its UpstreamTlsContext in
	// gRPC's form (certificate provider instances, mtls.go).
	APIClusters Set
	// Policies of the model's services, for node-specific resources.
	policies map[string]config.Policy
	// configured are the configured policies, for a node whose service
	// the model does not know yet.
	configured config.Policies
	// memo holds the own resources built for nodes (see Node).
	memo *memo
	// appPorts maps a service to the app_port its instances register, by
	// node name, for nodes whose metadata omits app_port.
	appPorts map[string]map[string]int
	// mtls is the mTLS policy; mtlsNodes the nodes, by service, whose
	// registration says they take mTLS (mtls.go).
	mtls      MTLS
	mtlsNodes map[string]map[string]bool
	// gateway is what gateway nodes get (gateway.go).
	gateway *gatewayBuild
	// authz is control.authorization (authz.go); protocols the app
	// protocol of each service (a tcp callee gets L4 rules).
	authz     Authorization
	protocols map[string]string
	// routeClusters are, by service with traffic settings, the clusters
	// its virtual host names besides its own (traffic.go).
	routeClusters map[string][]string
	// changed names the services whose shared resources may differ from
	// the previous Mesh of the same Translator; nil means any (Changed).
	changed []string
	base    *Mesh
}

// Changed returns the services whose shared resources (cluster, load
// assignment, API listener, route and cluster) may differ from those of
// Base, sorted; nil means any may have (a full
// translation). The outbound route configuration is compared by pointer.
func (m *Mesh) Changed() []string { return m.changed }

// Base is the Mesh that Changed is relative to (nil for a full
// translation).
func (m *Mesh) Base() *Mesh { return m.base }

// Resources are one node's resources by type.
type Resources struct {
	Clusters, Endpoints, Listeners, Routes Set
}

// Translate builds and validates the node-independent resources of a
// model, from scratch. p are the configured policies: the model's
// services carry theirs, and a node fronting a service the model does
// not know yet gets p.For(service).
func Translate(m *model.Model, p config.Policies) (*Mesh, error) {
	return NewTranslator().Translate(m, p)
}

// Translator translates successive models, reusing the resources of every
// service whose policy or endpoints did not change (the same message
// pointers, so hashing and validation are skipped for them). A health
// change in one of 10,000 services rebuilds one load assignment.
type Translator struct {
	prev     map[string]*entry
	outbound *routev3.RouteConfiguration
	// serviceRoutes are the previous per-service agent routes, reused
	// while their virtual host is the same.
	serviceRoutes map[string]*routev3.RouteConfiguration
	validated     map[proto.Message]bool
	memo          *memo
	// MTLS is the mTLS policy the next Translate applies (mtls.go).
	MTLS     MTLS
	prevMTLS MTLS
	// gatewayIn is the gateway input (SetGateway), gateway its last build.
	gatewayIn *Gateway
	gateway   *gatewayBuild
	authz     Authorization
	// last is the previous Mesh and what it was built from, for
	// incremental translations (incremental.go).
	last *lastBuild
}

// SetAuthorization sets the authorization the next Translate applies
// (control.authorization); nodes whose callee's rules changed get new
// inbound listeners, the others keep theirs.
func (t *Translator) SetAuthorization(a Authorization) { t.authz = a }

type entry struct {
	svc         model.Service
	cluster     *clusterv3.Cluster
	apiCluster  *clusterv3.Cluster
	cla         *endpointv3.ClusterLoadAssignment
	vhost       *routev3.VirtualHost
	apiListener *listenerv3.Listener
	apiRoute    *routev3.RouteConfiguration
}

// NewTranslator returns a translator with no memory.
func NewTranslator() *Translator {
	return &Translator{prev: map[string]*entry{}, validated: map[proto.Message]bool{}, memo: newMemo(nil)}
}

// Translate builds the model's shared resources and validates the new
// ones (go-control-plane's Validate and reference consistency); Mesh.Node
// gives each node's complete output. On error the translator's memory is
// unchanged.
func (t *Translator) Translate(m *model.Model, p config.Policies) (*Mesh, error) {
	if out, ok, err := t.incremental(m, p); ok || err != nil {
		return out, err
	}
	n := len(m.Services)
	out := &Mesh{
		Clusters:     make(Set, n),
		Endpoints:    make(Set, n),
		APIListeners: make(Set, n),
		APIRoutes:    make(Set, n),
		APIClusters:  make(Set, n),
		policies:     make(map[string]config.Policy, n),
		configured:   p,
		memo:         newMemo(t.memo),
		appPorts:     make(map[string]map[string]int, n),
		mtls:         t.MTLS,
		mtlsNodes:    map[string]map[string]bool{},
		authz:        t.authz,
		protocols:    make(map[string]string, n),
	}
	next := make(map[string]*entry, n)
	vhosts := make([]*routev3.VirtualHost, 0, n)
	sameVhosts := len(t.prev) == n
	for i := range m.Services {
		s := &m.Services[i]
		e, err := t.entry(s)
		if err != nil {
			return nil, err
		}
		next[s.Name] = e
		out.Clusters[s.Name] = e.cluster
		out.Endpoints[s.Name] = e.cla
		out.APIListeners[s.Name] = e.apiListener
		out.APIRoutes[s.Name] = e.apiRoute
		out.APIClusters[s.Name] = e.apiCluster
		vhosts = append(vhosts, e.vhost)
		if sameVhosts && (t.outbound == nil || i >= len(t.outbound.VirtualHosts) || t.outbound.VirtualHosts[i] != e.vhost) {
			sameVhosts = false
		}
		out.policies[s.Name] = s.Policy
		out.protocols[s.Name] = serviceProtocol(s)
		if ports, mtls := nodePorts(s); ports != nil || mtls != nil {
			if ports != nil {
				out.appPorts[s.Name] = ports
			}
			if mtls != nil {
				out.mtlsNodes[s.Name] = mtls
			}
		}
	}
	if err := addTraffic(m, out, vhosts, t.MTLS); err != nil {
		return nil, err
	}
	if sameVhosts && t.outbound != nil {
		out.Outbound = t.outbound
	} else {
		out.Outbound = &routev3.RouteConfiguration{
			Name:             wire.OutboundRoute,
			ValidateClusters: wrapperspb.Bool(false),
			VirtualHosts:     vhosts,
		}
	}
	serviceRoutes := make(map[string]*routev3.RouteConfiguration, len(vhosts))
	out.AgentRoutes = make(Set, len(vhosts)+1)
	out.AgentRoutes[wire.OutboundRoute] = out.Outbound
	for i, vh := range vhosts {
		name := wire.ServiceRoute(m.Services[i].Name)
		rc := t.serviceRoutes[name]
		if rc == nil || len(rc.VirtualHosts) != 1 || rc.VirtualHosts[0] != vh {
			rc = &routev3.RouteConfiguration{Name: name, ValidateClusters: wrapperspb.Bool(false), VirtualHosts: []*routev3.VirtualHost{vh}}
		}
		serviceRoutes[name] = rc
		out.AgentRoutes[name] = rc
	}
	validated, err := out.validate(t.validated)
	if err != nil {
		return nil, err
	}
	if out.gateway, err = buildGateway(t.gatewayIn, out, t.gateway); err != nil {
		return nil, err
	}
	t.serviceRoutes = serviceRoutes
	t.prev, t.outbound, t.validated, t.memo, t.prevMTLS, t.gateway = next, out.Outbound, validated, out.memo, t.MTLS, out.gateway
	t.last = &lastBuild{mesh: out, configured: p, mtls: t.MTLS, authz: t.authz, gatewayIn: t.gatewayIn, traffic: hasTraffic(m)}
	return out, nil
}

// entry returns the service's resources, reusing the previous ones that
// its change did not touch.
func (t *Translator) entry(s *model.Service) (*entry, error) {
	prev := t.prev[s.Name]
	e := &entry{svc: *s}
	samePolicy := prev != nil && reflect.DeepEqual(prev.svc.Policy, s.Policy) && serviceProtocol(&prev.svc) == serviceProtocol(s) &&
		sameMTLS(t.prevMTLS, t.MTLS, &prev.svc, s) &&
		prev.svc.VirtualIP == s.VirtualIP && !prev.svc.HasTraffic() && !s.HasTraffic()
	if samePolicy {
		e.cluster, e.vhost, e.apiRoute, e.apiListener, e.apiCluster = prev.cluster, prev.vhost, prev.apiRoute, prev.apiListener, prev.apiCluster
	} else {
		c, err := Cluster(s)
		if err != nil {
			return nil, err
		}
		if err := setUpstreamTLS(c, s, t.MTLS); err != nil {
			return nil, err
		}
		ac, err := grpcCluster(c, s, t.MTLS)
		if err != nil {
			return nil, err
		}
		e.apiCluster = grpcHashLB(ac)
		l, err := APIListener(s.Name)
		if err != nil {
			return nil, err
		}
		e.cluster, e.apiListener = c, l
		e.vhost = virtualHost(s, false)
		e.apiRoute = &routev3.RouteConfiguration{Name: s.Name, VirtualHosts: []*routev3.VirtualHost{virtualHost(s, true)}}
	}
	if prev != nil && model.EqualEndpoints(prev.svc.Endpoints, s.Endpoints) {
		e.cla = prev.cla
	} else {
		e.cla = LoadAssignment(s)
	}
	return e, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// Domains are the Host / :authority values that reach a service through
// the outbound listener, with and without a port; a Kubernetes service's
// name (orders.shop) also gets its cluster DNS names (orders.shop.svc,
// orders.shop.svc.cluster.local).
func Domains(service string) []string {
	d := []string{
		service, service + ":*",
		service + ".mesh", service + ".mesh:*",
		service + ".service.consul", service + ".service.consul:*",
	}
	if strings.Contains(service, ".") {
		// A Kubernetes service (orders.shop): its cluster DNS names too.
		d = append(d, service+".svc", service+".svc:*", service+".svc.cluster.local", service+".svc.cluster.local:*")
	}
	return d
}

// Cluster is a service's EDS cluster carrying its caller-side policy.
func Cluster(s *model.Service) (*clusterv3.Cluster, error) {
	p := s.Policy
	c := &clusterv3.Cluster{
		Name:                 s.Name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource()},
		ConnectTimeout:       durationpb.New(p.ConnectTimeout),
		LbPolicy:             clusterv3.Cluster_ROUND_ROBIN,
	}
	switch p.LoadBalancer.Policy {
	case "least_request":
		c.LbPolicy = clusterv3.Cluster_LEAST_REQUEST
	case "random":
		// Envoy takes the first policy it knows; gRPC, which has no
		// random policy, takes round robin.
		rnd, err := anypb.New(&randomv3.Random{})
		if err != nil {
			return nil, err
		}
		rr, err := anypb.New(&roundrobinv3.RoundRobin{})
		if err != nil {
			return nil, err
		}
		c.LoadBalancingPolicy = &clusterv3.LoadBalancingPolicy{Policies: []*clusterv3.LoadBalancingPolicy_Policy{
			{TypedExtensionConfig: &corev3.TypedExtensionConfig{Name: wire.LBRandom, TypedConfig: rnd}},
			{TypedExtensionConfig: &corev3.TypedExtensionConfig{Name: wire.LBRoundRobin, TypedConfig: rr}},
		}}
	case "ring_hash", "maglev":
		setHashLB(c, p.LoadBalancer)
	}
	if p.LoadBalancer.LocalityAware && !p.LoadBalancer.Hashed() {
		c.CommonLbConfig = &clusterv3.Cluster_CommonLbConfig{
			LocalityConfigSpecifier: &clusterv3.Cluster_CommonLbConfig_ZoneAwareLbConfig_{
				ZoneAwareLbConfig: &clusterv3.Cluster_CommonLbConfig_ZoneAwareLbConfig{
					RoutingEnabled: &typev3.Percent{Value: 100},
					MinClusterSize: wrapperspb.UInt64(1),
				},
			},
		}
	}
	if t := thresholds(p); t != nil {
		c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{t}}
	}
	c.OutlierDetection = outlier(p.OutlierDetection)
	if md := governance(p.CircuitBreaker); md != nil {
		c.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{wire.GovernanceNamespace: md}}
	}
	if err := setProtocol(c, serviceProtocol(s)); err != nil {
		return nil, fmt.Errorf("cluster %s: protocol options: %w", s.Name, err)
	}
	setVirtualIP(c, s.VirtualIP)
	return c, nil
}

func thresholds(p config.Policy) *clusterv3.CircuitBreakers_Thresholds {
	cb, r := p.CircuitBreaker, p.Retries
	t := &clusterv3.CircuitBreakers_Thresholds{Priority: corev3.RoutingPriority_DEFAULT}
	set := false
	if cb.MaxConnections > 0 {
		t.MaxConnections, set = wrapperspb.UInt32(uint32(cb.MaxConnections)), true
	}
	if cb.MaxPendingRequests > 0 {
		t.MaxPendingRequests, set = wrapperspb.UInt32(uint32(cb.MaxPendingRequests)), true
	}
	if cb.MaxRequests > 0 {
		t.MaxRequests, set = wrapperspb.UInt32(uint32(cb.MaxRequests)), true
	}
	if r.BudgetPercent > 0 {
		t.RetryBudget = &clusterv3.CircuitBreakers_Thresholds_RetryBudget{
			BudgetPercent:       &typev3.Percent{Value: r.BudgetPercent},
			MinRetryConcurrency: wrapperspb.UInt32(uint32(r.MinRetryConcurrency)),
		}
		set = true
	}
	if !set {
		return nil
	}
	return t
}

func outlier(o config.OutlierDetection) *clusterv3.OutlierDetection {
	if o == (config.OutlierDetection{}) {
		return nil
	}
	od := &clusterv3.OutlierDetection{
		Consecutive_5Xx:                    wrapperspb.UInt32(uint32(o.Consecutive5xx)),
		EnforcingConsecutive_5Xx:           wrapperspb.UInt32(enforcing(o.Consecutive5xx)),
		ConsecutiveGatewayFailure:          wrapperspb.UInt32(uint32(o.ConsecutiveGatewayFailure)),
		EnforcingConsecutiveGatewayFailure: wrapperspb.UInt32(enforcing(o.ConsecutiveGatewayFailure)),
		MaxEjectionPercent:                 wrapperspb.UInt32(uint32(o.MaxEjectionPercent)),
		// The success-rate detector is not part of mesh's policy.
		EnforcingSuccessRate: wrapperspb.UInt32(0),
	}
	if o.Interval > 0 {
		od.Interval = durationpb.New(o.Interval)
	}
	if o.BaseEjectionTime > 0 {
		od.BaseEjectionTime = durationpb.New(o.BaseEjectionTime)
	}
	return od
}

// enforcing is 100% when a consecutive-failure detector is on, 0 when off.
func enforcing(n int) uint32 {
	if n > 0 {
		return 100
	}
	return 0
}

// governance is the wire.GovernanceNamespace metadata: the error-percentage breaker
// Envoy lacks. sleep_window is a duration string as protobuf JSON writes
// durations ("5s").
func governance(cb config.CircuitBreaker) *structpb.Struct {
	if cb.ErrorPercentThreshold == 0 {
		return nil
	}
	return &structpb.Struct{Fields: map[string]*structpb.Value{
		wire.GovErrorPercentThreshold:  structpb.NewNumberValue(float64(cb.ErrorPercentThreshold)),
		wire.GovRequestVolumeThreshold: structpb.NewNumberValue(float64(cb.RequestVolumeThreshold)),
		wire.GovSleepWindow:            structpb.NewStringValue(durationString(cb.SleepWindow.Seconds())),
	}}
}

func durationString(sec float64) string {
	return strconv.FormatFloat(sec, 'f', -1, 64) + "s"
}

// LoadAssignment is a service's endpoints grouped by locality, in locality
// order, each locality weighted by the sum of its endpoints' weights.
func LoadAssignment(s *model.Service) *endpointv3.ClusterLoadAssignment {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: s.Name}
	eps := slices.Clone(s.Endpoints)
	slices.SortStableFunc(eps, func(a, b model.Endpoint) int {
		if c := strings.Compare(a.Locality.Region, b.Locality.Region); c != 0 {
			return c
		}
		return strings.Compare(a.Locality.Zone, b.Locality.Zone)
	})
	var cur *endpointv3.LocalityLbEndpoints
	var weight uint32
	for i := range eps {
		ep := &eps[i]
		if cur == nil || cur.Locality.Region != ep.Locality.Region || cur.Locality.Zone != ep.Locality.Zone {
			if cur != nil {
				cur.LoadBalancingWeight = wrapperspb.UInt32(weight)
			}
			cur = &endpointv3.LocalityLbEndpoints{
				Locality: &corev3.Locality{Region: ep.Locality.Region, Zone: ep.Locality.Zone},
			}
			weight = 0
			cla.Endpoints = append(cla.Endpoints, cur)
		}
		w := max(ep.Weight, 1)
		weight += w
		cur.LbEndpoints = append(cur.LbEndpoints, &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: socketAddress(ep.Address, ep.Port),
			}},
			HealthStatus:        healthStatus(ep.Health),
			LoadBalancingWeight: wrapperspb.UInt32(w),
			Metadata:            &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{wire.EndpointNamespace: endpointMetadata(ep)}},
		})
	}
	if cur != nil {
		cur.LoadBalancingWeight = wrapperspb.UInt32(weight)
	}
	return cla
}

func healthStatus(h model.Health) corev3.HealthStatus {
	switch h {
	case model.Healthy:
		return corev3.HealthStatus_HEALTHY
	case model.Draining:
		return corev3.HealthStatus_DRAINING
	}
	return corev3.HealthStatus_UNHEALTHY
}

func endpointMetadata(ep *model.Endpoint) *structpb.Struct {
	f := map[string]*structpb.Value{wire.EndpointID: structpb.NewStringValue(ep.ID)}
	str := func(k, v string) {
		if v != "" {
			f[k] = structpb.NewStringValue(v)
		}
	}
	list := func(k string, vs []string) {
		if len(vs) > 0 {
			l := make([]*structpb.Value, len(vs))
			for i, v := range vs {
				l[i] = structpb.NewStringValue(v)
			}
			f[k] = structpb.NewListValue(&structpb.ListValue{Values: l})
		}
	}
	dict := func(k string, m map[string]string) {
		if len(m) > 0 {
			s := &structpb.Struct{Fields: make(map[string]*structpb.Value, len(m))}
			for mk, mv := range m {
				s.Fields[mk] = structpb.NewStringValue(mv)
			}
			f[k] = structpb.NewStructValue(s)
		}
	}
	md := &ep.Metadata
	str(wire.EndpointNode, ep.Node)
	str(wire.EndpointSource, ep.Source)
	str(wire.EndpointNamespaceName, ep.Namespace)
	str(wire.EndpointIdentity, ep.Identity)
	str(wire.EndpointHostname, md.Hostname)
	str(wire.EndpointEnv, md.Env)
	str(wire.EndpointOwner, md.Owner)
	str(wire.EndpointRole, md.Role)
	str(wire.EndpointTenant, md.Tenant)
	str(wire.EndpointStatus, md.Status)
	list(wire.EndpointTags, md.Tags)
	list(wire.EndpointHostTags, md.HostTags)
	dict(wire.EndpointMeta, md.Meta)
	dict(wire.EndpointLabels, md.Labels)
	return &structpb.Struct{Fields: f}
}

func socketAddress(host string, port int) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       host,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
	}}}
}

func parseHostPort(s string) (*corev3.Address, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return nil, fmt.Errorf("listener address %q: %w", s, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p <= 0 || p > 65535 {
		return nil, fmt.Errorf("listener address %q: bad port", s)
	}
	return socketAddress(host, p), nil
}

func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		ResourceApiVersion:    corev3.ApiVersion_V3,
	}
}

// virtualHost routes a service's domains to its cluster with its timeout
// and retry policy. api selects the proxyless variant, which also bounds
// streams (gRPC takes its deadline from max_stream_duration).
func virtualHost(s *model.Service, api bool) *routev3.VirtualHost {
	p := s.Policy
	action := &routev3.RouteAction{
		ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: s.Name},
		Timeout:          durationpb.New(p.Timeout),
		RetryPolicy:      retryPolicy(p.Retries, api),
		HashPolicy:       hashPolicy(p.LoadBalancer),
	}
	if api && p.Timeout > 0 {
		action.MaxStreamDuration = &routev3.RouteAction_MaxStreamDuration{MaxStreamDuration: durationpb.New(p.Timeout)}
	}
	return &routev3.VirtualHost{
		Name:    s.Name,
		Domains: Domains(s.Name),
		Routes: []*routev3.Route{{
			Name:   s.Name,
			Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: action},
		}},
	}
}

func retryPolicy(r config.Retries, api bool) *routev3.RetryPolicy {
	if r.Attempts <= 0 || len(r.RetryOn) == 0 {
		return nil
	}
	rp := &routev3.RetryPolicy{
		RetryOn:    strings.Join(r.RetryOn, ","),
		NumRetries: wrapperspb.UInt32(uint32(r.Attempts)),
	}
	if r.PerTryTimeout > 0 {
		rp.PerTryTimeout = durationpb.New(r.PerTryTimeout)
	}
	if !api {
		prev, _ := anypb.New(&previoushostsv3.PreviousHostsPredicate{})
		rp.RetryHostPredicate = []*routev3.RetryPolicy_RetryHostPredicate{{
			Name:       wire.PreviousHostsPredicate,
			ConfigType: &routev3.RetryPolicy_RetryHostPredicate_TypedConfig{TypedConfig: prev},
		}}
		rp.HostSelectionRetryMaxAttempts = 3
	}
	return rp
}

func routerFilter() (*hcmv3.HttpFilter, error) {
	cfg, err := anypb.New(&routerv3.Router{})
	if err != nil {
		return nil, err
	}
	return &hcmv3.HttpFilter{Name: wire.RouterFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: cfg}}, nil
}

// APIListener is the listener a gRPC proxyless client resolves for
// xds:///<service>: an HCM api_listener whose route configuration comes
// over ADS.
func APIListener(service string) (*listenerv3.Listener, error) {
	router, err := routerFilter()
	if err != nil {
		return nil, err
	}
	hcm, err := anypb.New(&hcmv3.HttpConnectionManager{
		StatPrefix: service,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource: adsSource(), RouteConfigName: service,
		}},
		HttpFilters: []*hcmv3.HttpFilter{faultFilter(), router},
	})
	if err != nil {
		return nil, err
	}
	return &listenerv3.Listener{Name: service, ApiListener: &listenerv3.ApiListener{ApiListener: hcm}}, nil
}

func outboundListener(addr string) (*listenerv3.Listener, error) {
	router, err := routerFilter()
	if err != nil {
		return nil, err
	}
	return httpListener(wire.OutboundListener, addr, &hcmv3.HttpConnectionManager{
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		StatPrefix: "outbound",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource: adsSource(), RouteConfigName: wire.OutboundRoute,
		}},
		HttpFilters: []*hcmv3.HttpFilter{faultFilter(), router},
	})
}

// inboundListener is the HTTP inbound listener; first are filters to run
// before the callee-side policies (authorization).
func inboundListener(addr string, p config.Policy, first ...*hcmv3.HttpFilter) (*listenerv3.Listener, error) {
	filters := first
	if rl := p.RateLimit; rl.MaxTokens > 0 {
		cfg, err := anypb.New(&localratelimitv3.LocalRateLimit{
			StatPrefix: "inbound_rate_limit",
			TokenBucket: &typev3.TokenBucket{
				MaxTokens:     uint32(rl.MaxTokens),
				TokensPerFill: wrapperspb.UInt32(uint32(rl.TokensPerFill)),
				FillInterval:  durationpb.New(rl.FillInterval),
			},
			FilterEnabled:  fullPercent("inbound_rate_limit_enabled"),
			FilterEnforced: fullPercent("inbound_rate_limit_enforced"),
			ResponseHeadersToAdd: []*corev3.HeaderValueOption{{
				Header: &corev3.HeaderValue{Key: wire.ReasonHeader, Value: wire.ReasonRateLimited},
			}},
		})
		if err != nil {
			return nil, err
		}
		filters = append(filters, &hcmv3.HttpFilter{
			Name:       wire.LocalRateLimitFilter,
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: cfg},
		})
	}
	router, err := routerFilter()
	if err != nil {
		return nil, err
	}
	filters = append(filters, router)
	return httpListener(wire.InboundListener, addr, &hcmv3.HttpConnectionManager{
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		StatPrefix: "inbound",
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
			Name: wire.InboundListener,
			VirtualHosts: []*routev3.VirtualHost{{
				Name:    wire.LocalAppCluster,
				Domains: []string{"*"},
				Routes: []*routev3.Route{{
					Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
					Action: &routev3.Route_Route{Route: &routev3.RouteAction{
						ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: wire.LocalAppCluster},
						// The caller's agent bounds the request; the inbound
						// side does not cut it shorter.
						Timeout: durationpb.New(0),
					}},
				}},
			}},
		}},
		HttpFilters: filters,
	})
}

func fullPercent(runtimeKey string) *corev3.RuntimeFractionalPercent {
	return &corev3.RuntimeFractionalPercent{
		DefaultValue: &typev3.FractionalPercent{Numerator: 100, Denominator: typev3.FractionalPercent_HUNDRED},
		RuntimeKey:   runtimeKey,
	}
}

func httpListener(name, addr string, hcm *hcmv3.HttpConnectionManager) (*listenerv3.Listener, error) {
	address, err := parseHostPort(addr)
	if err != nil {
		return nil, err
	}
	cfg, err := anypb.New(hcm)
	if err != nil {
		return nil, err
	}
	return &listenerv3.Listener{
		Name:    name,
		Address: address,
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{
				Name:       wire.HTTPConnectionManager,
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: cfg},
			}},
		}},
	}, nil
}

func localAppCluster(host string, port int, p config.Policy) (*clusterv3.Cluster, error) {
	return &clusterv3.Cluster{
		Name:                 wire.LocalAppCluster,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(p.ConnectTimeout),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: wire.LocalAppCluster,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{{
					HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
						Address: socketAddress(host, port),
					}},
				}},
			}},
		},
	}, nil
}
