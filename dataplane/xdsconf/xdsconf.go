// Package xdsconf turns the Envoy v3 resources an agent receives from its
// control plane into the agent's routing table. Translate is pure: the
// same resources always give the same table, and a resource the agent
// cannot honour is an error naming it, which the xDS client sends back as
// the NACK's detail while the last good table keeps serving.
//
// What the agent reads (names and keys from the wire contract, package
// wire; controlplane/README.md describes the resources):
//   - every RouteConfiguration but the gateway's (wire.OutboundRoute, one
//     virtual host per service, and the per-service wire.ServiceRoute):
//     each service's virtual host compiled by routematch (routes.go); the
//     catch-all's timeout and retry_policy become the service's timeout
//     and retries, and a virtual host with more (traffic routes: splits
//     over subsets, header routes, rewrites, redirects...) becomes the
//     service's table.Service.Routes;
//   - one EDS Cluster per service, and one per subset (wire.SubsetCluster,
//     "orders/v2": a table service of its own): connect_timeout, lb_policy (or
//     load_balancing_policy), zone-aware routing, circuit_breakers
//     thresholds and retry budget, outlier_detection, and the
//     wire.GovernanceNamespace filter metadata for the error-percentage breaker,
//     and the app protocol: typed_extension_protocol_options
//     (HttpProtocolOptions: explicit HTTP/1.1 or HTTP/2, or the
//     downstream's) refined by the "mesh.protocol" metadata (grpc, tcp);
//   - the ClusterLoadAssignment of each: endpoints with HEALTHY, DEGRADED or
//     UNKNOWN health are routable, others are not; locality gives the zone;
//   - the inbound Listener (wire.InboundListener): its
//     wire.LocalRateLimitFilter token bucket, its mTLS mode from the
//     filter chains (mtls.go), and its RBAC filters (wire.RBACFilter in
//     the connection manager, wire.RBACNetworkFilter before a TCP proxy)
//     as the service's authorization (rbac.go);
//   - a Cluster's transport_socket: an UpstreamTlsContext's URI SAN is
//     the SPIFFE ID the service's agents must prove over mTLS.
package xdsconf

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	localratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/dataplane/table"
	"github.com/meshvm/mesh/wire"
	"github.com/meshvm/mesh/xdsclient"
)

// Translate builds the table from a complete resource set.
func Translate(r xdsclient.Resources) (*table.Table, error) {
	t := &table.Table{
		Version:  version(r.Versions),
		Services: make(map[string]*table.Service, len(r.Clusters)),
		Default:  config.DefaultPolicy(),
		Static:   true,
	}
	for name, c := range r.Clusters {
		if name == wire.LocalAppCluster {
			continue
		}
		p, err := clusterPolicy(c)
		if err != nil {
			return nil, fmt.Errorf("cluster %q: %w", name, err)
		}
		hlb, err := hashLB(c)
		if err != nil {
			return nil, fmt.Errorf("cluster %q: %w", name, err)
		}
		eps, err := endpoints(r.Endpoints[edsName(c)])
		if err != nil {
			return nil, fmt.Errorf("endpoints of cluster %q: %w", name, err)
		}
		proto, err := clusterProtocol(c)
		if err != nil {
			return nil, fmt.Errorf("cluster %q: %w", name, err)
		}
		for i := range eps {
			eps[i].Protocol = proto
		}
		id, mode, err := clusterMTLS(c)
		if err != nil {
			return nil, fmt.Errorf("cluster %q: %w", name, err)
		}
		vip, err := clusterVirtualIP(c)
		if err != nil {
			return nil, fmt.Errorf("cluster %q: %w", name, err)
		}
		t.Services[name] = &table.Service{Name: name, Policy: p, Endpoints: eps, MTLSIdentity: id, MTLSMode: mode, VirtualIP: vip, HashLB: hlb}
	}
	if err := applyRoutes(t, r.Routes); err != nil {
		return nil, err
	}
	if l := r.Listeners[wire.InboundListener]; l != nil {
		mode, err := inboundMTLS(l)
		if err != nil {
			return nil, fmt.Errorf("listener %q: %w", wire.InboundListener, err)
		}
		t.Inbound.MTLSMode = mode
		authz, err := inboundAuthorization(l)
		if err != nil {
			return nil, fmt.Errorf("listener %q: %w", wire.InboundListener, err)
		}
		t.Inbound.Authorization = authz
		for _, hcm := range xdsclient.HTTPConnectionManagers(l) {
			for _, f := range hcm.GetHttpFilters() {
				if f.GetName() != wire.LocalRateLimitFilter && !f.GetTypedConfig().MessageIs(&localratelimitv3.LocalRateLimit{}) {
					continue
				}
				rl := &localratelimitv3.LocalRateLimit{}
				if err := f.GetTypedConfig().UnmarshalTo(rl); err != nil {
					return nil, fmt.Errorf("listener %q filter %s: %w", wire.InboundListener, f.GetName(), err)
				}
				tb := rl.GetTokenBucket()
				if tb == nil {
					return nil, fmt.Errorf("listener %q filter %s: no token_bucket", wire.InboundListener, f.GetName())
				}
				t.Inbound.RateLimit = config.RateLimit{
					MaxTokens:     int(tb.GetMaxTokens()),
					TokensPerFill: int(max(tb.GetTokensPerFill().GetValue(), 1)),
					FillInterval:  tb.GetFillInterval().AsDuration(),
				}
			}
		}
	}
	return t, nil
}

// version is a stable summary of the per-type versions.
func version(v map[string]string) string {
	return fmt.Sprintf("cds=%s eds=%s lds=%s rds=%s",
		v[resource.ClusterType], v[resource.EndpointType], v[resource.ListenerType], v[resource.RouteType])
}

func edsName(c *clusterv3.Cluster) string {
	if n := c.GetEdsClusterConfig().GetServiceName(); n != "" {
		return n
	}
	return c.GetName()
}

// clusterPolicy reads the caller-side policy a cluster carries. Fields a
// cluster leaves unset keep their zero value (feature off), except
// connect_timeout, which Envoy defaults to 5s.
func clusterPolicy(c *clusterv3.Cluster) (config.Policy, error) {
	var p config.Policy
	if c.GetType() != clusterv3.Cluster_EDS {
		return p, fmt.Errorf("discovery type %s is not supported (mesh agents use EDS clusters)", c.GetType())
	}
	p.ConnectTimeout = 5 * time.Second
	if d := c.GetConnectTimeout(); d != nil {
		p.ConnectTimeout = d.AsDuration()
	}
	lb, err := lbPolicy(c)
	if err != nil {
		return p, err
	}
	p.LoadBalancer.Policy = lb
	if z := c.GetCommonLbConfig().GetZoneAwareLbConfig(); z != nil {
		p.LoadBalancer.LocalityAware = z.GetRoutingEnabled() == nil || z.GetRoutingEnabled().GetValue() > 0
	}
	for _, th := range c.GetCircuitBreakers().GetThresholds() {
		if th.GetPriority() != corev3.RoutingPriority_DEFAULT {
			continue
		}
		p.CircuitBreaker.MaxConnections = int(th.GetMaxConnections().GetValue())
		p.CircuitBreaker.MaxPendingRequests = int(th.GetMaxPendingRequests().GetValue())
		p.CircuitBreaker.MaxRequests = int(th.GetMaxRequests().GetValue())
		if rb := th.GetRetryBudget(); rb != nil {
			p.Retries.BudgetPercent = rb.GetBudgetPercent().GetValue()
			p.Retries.MinRetryConcurrency = int(rb.GetMinRetryConcurrency().GetValue())
		}
	}
	if od := c.GetOutlierDetection(); od != nil {
		p.OutlierDetection = config.OutlierDetection{
			Consecutive5xx:            enforced(od.GetConsecutive_5Xx(), 5, od.GetEnforcingConsecutive_5Xx()),
			ConsecutiveGatewayFailure: enforced(od.GetConsecutiveGatewayFailure(), 5, od.GetEnforcingConsecutiveGatewayFailure()),
			Interval:                  durationOr(od.GetInterval(), 10*time.Second),
			BaseEjectionTime:          durationOr(od.GetBaseEjectionTime(), 30*time.Second),
			MaxEjectionPercent:        int(uintOr(od.GetMaxEjectionPercent(), 10)),
		}
	}
	if md := c.GetMetadata().GetFilterMetadata()[wire.GovernanceNamespace]; md != nil {
		f := md.GetFields()
		p.CircuitBreaker.ErrorPercentThreshold = int(f[wire.GovErrorPercentThreshold].GetNumberValue())
		p.CircuitBreaker.RequestVolumeThreshold = int(f[wire.GovRequestVolumeThreshold].GetNumberValue())
		if s := f[wire.GovSleepWindow].GetStringValue(); s != "" {
			d, err := time.ParseDuration(s)
			if err != nil {
				return p, fmt.Errorf("metadata %s.sleep_window %q: %w", wire.GovernanceNamespace, s, err)
			}
			p.CircuitBreaker.SleepWindow = d
		}
		if p.CircuitBreaker.ErrorPercentThreshold < 0 || p.CircuitBreaker.ErrorPercentThreshold > 100 {
			return p, fmt.Errorf("metadata %s.error_percent_threshold %d is not between 0 and 100", wire.GovernanceNamespace, p.CircuitBreaker.ErrorPercentThreshold)
		}
		if p.CircuitBreaker.ErrorPercentThreshold > 0 && p.CircuitBreaker.SleepWindow <= 0 {
			return p, fmt.Errorf("metadata %s: sleep_window must be positive when error_percent_threshold is set", wire.GovernanceNamespace)
		}
	}
	return p, nil
}

// lbPolicy maps lb_policy, or the first load_balancing_policy the agent
// knows, onto round_robin, least_request, random, ring_hash or maglev
// (sized by hashLB).
func lbPolicy(c *clusterv3.Cluster) (string, error) {
	if lbp := c.GetLoadBalancingPolicy(); lbp != nil {
		var names []string
		for _, pol := range lbp.GetPolicies() {
			name := pol.GetTypedExtensionConfig().GetName()
			names = append(names, name)
			switch {
			case strings.HasSuffix(name, ".round_robin"):
				return "round_robin", nil
			case strings.HasSuffix(name, ".least_request"):
				return "least_request", nil
			case strings.HasSuffix(name, ".random"):
				return "random", nil
			case strings.HasSuffix(name, ".ring_hash"):
				return "ring_hash", nil
			case strings.HasSuffix(name, ".maglev"):
				return "maglev", nil
			}
		}
		return "", fmt.Errorf("none of the load_balancing_policy entries %v is supported (round_robin, least_request, random, ring_hash, maglev)", names)
	}
	switch c.GetLbPolicy() {
	case clusterv3.Cluster_ROUND_ROBIN:
		return "round_robin", nil
	case clusterv3.Cluster_LEAST_REQUEST:
		return "least_request", nil
	case clusterv3.Cluster_RANDOM:
		return "random", nil
	case clusterv3.Cluster_RING_HASH:
		return "ring_hash", nil
	case clusterv3.Cluster_MAGLEV:
		return "maglev", nil
	}
	return "", fmt.Errorf("lb_policy %s is not supported (ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH, MAGLEV)", c.GetLbPolicy())
}

// enforced is a consecutive-failure threshold (Envoy's default when
// unset), or 0 (off) when its enforcing percentage is explicitly 0.
func enforced(v *wrapperspb.UInt32Value, def uint32, enforcing *wrapperspb.UInt32Value) int {
	if enforcing != nil && enforcing.GetValue() == 0 {
		return 0
	}
	return int(uintOr(v, def))
}

func durationOr(d *durationpb.Duration, def time.Duration) time.Duration {
	if d == nil {
		return def
	}
	return d.AsDuration()
}

func uintOr(v *wrapperspb.UInt32Value, def uint32) uint32 {
	if v == nil {
		return def
	}
	return v.GetValue()
}

// endpoints returns the routable endpoints of a load assignment.
func endpoints(cla *endpointv3.ClusterLoadAssignment) ([]endpoint.Endpoint, error) {
	var out []endpoint.Endpoint
	for _, le := range cla.GetEndpoints() {
		loc := le.GetLocality()
		for _, lb := range le.GetLbEndpoints() {
			switch lb.GetHealthStatus() {
			case corev3.HealthStatus_UNKNOWN, corev3.HealthStatus_HEALTHY, corev3.HealthStatus_DEGRADED:
			default:
				continue // UNHEALTHY, DRAINING, TIMEOUT
			}
			sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
			if sa == nil || sa.GetPortValue() == 0 {
				return nil, fmt.Errorf("endpoint %v has no socket address with a port value", lb.GetEndpoint().GetAddress())
			}
			if net.ParseIP(sa.GetAddress()) == nil {
				return nil, fmt.Errorf("endpoint address %q is not an IP address", sa.GetAddress())
			}
			ep := endpoint.Endpoint{
				Addr:   net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))),
				Region: loc.GetRegion(),
				Zone:   loc.GetZone(),
				Weight: lb.GetLoadBalancingWeight().GetValue(),
			}
			if md := lb.GetMetadata().GetFilterMetadata()[wire.EndpointNamespace]; md != nil {
				ep.Meta = map[string]string{}
				for k, v := range md.GetFields() {
					if sv := v.GetStringValue(); sv != "" {
						ep.Meta[k] = sv
					}
				}
				ep.Node = ep.Meta[wire.EndpointNode]
				copyAppPort(ep.Meta, md)
			}
			out = append(out, ep)
		}
	}
	slices.SortStableFunc(out, func(a, b endpoint.Endpoint) int { return strings.Compare(a.Addr, b.Addr) })
	return out, nil
}
