// Package table is what the agent's data path routes by: every known
// service's traffic policy (and, with a control plane, its endpoints) plus
// the policy of the agent's own inbound side. A Table is immutable once
// built; the agent builds a new one from each accepted xDS update (or from
// its local config in Consul-direct mode) and swaps it in atomically.
package table

import (
	"context"
	"net/netip"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/dataplane/rbac"
	"github.com/meshvm/mesh/routematch"
)

// Table is one complete, immutable routing configuration.
type Table struct {
	// Version identifies the inputs it was built from (xDS versions, or
	// "local").
	Version string
	// Services by name. With a control plane every routable service is
	// here; in Consul-direct mode it holds only services with an explicit
	// policy, and Default applies to the rest.
	Services map[string]*Service
	// Default is the policy of a service not in Services.
	Default config.Policy
	// Inbound is the callee-side policy of the agent's own service.
	Inbound Inbound
	// Static is true when Services carry their endpoints (xDS); false when
	// endpoints come from a live endpoint.Resolver (Consul-direct).
	Static bool
}

// Service is one upstream service.
type Service struct {
	Name   string
	Policy config.Policy
	// Endpoints are the routable (healthy or degraded, not draining)
	// endpoints when Table.Static is true.
	Endpoints []endpoint.Endpoint
	// MTLSIdentity, with a control plane, is the SPIFFE ID its Cluster's
	// UpstreamTlsContext requires of the service's agents: set, the hop
	// to them is mTLS. MTLSMode is the service's inbound mode as the
	// Cluster's metadata repeats it (for /config_dump).
	MTLSIdentity, MTLSMode string
	// VirtualIP is the service's virtual IP as the control plane
	// allocated it (xDS); zero when it sent none.
	VirtualIP netip.Addr
	// HashLB sizes the consistent-hash balancer of a ring_hash or maglev
	// policy (the Cluster's ring_hash_lb_config or maglev_lb_config).
	HashLB HashLB
	// Routes, with a control plane, are the service's virtual host
	// compiled (its traffic routes in order, then the catch-all): the
	// outbound path's route step matches each request against them and
	// picks the cluster (the service's, one of its subsets "orders/v2",
	// another service). Nil when the virtual host is only the catch-all
	// to the service's own cluster, whose timeout and retries are then
	// the Policy's.
	Routes *routematch.VirtualHost `json:"-"`
}

// HashLB sizes the consistent-hash balancers; zero fields are Envoy's
// defaults (a ring of 1024 to 8M points, a Maglev table of 65537 slots).
type HashLB struct {
	MinRingSize     uint64 `json:"minimum_ring_size,omitempty"`
	MaxRingSize     uint64 `json:"maximum_ring_size,omitempty"`
	MaglevTableSize uint64 `json:"table_size,omitempty"`
}

// Inbound is the policy of the agent's own inbound listener.
type Inbound struct {
	// RateLimit is the local token bucket; MaxTokens 0 means none.
	RateLimit config.RateLimit
	// MaxRequests bounds concurrent requests to the app; 0 means none.
	MaxRequests int
	// MTLSMode is the inbound listener's mTLS mode from the control
	// plane's Listener (wire.MTLSStrict, wire.MTLSPermissive); empty means
	// the local config's.
	MTLSMode string
	// Authorization is the service's RBAC policy (nil: every caller is
	// served).
	Authorization *rbac.Policy `json:"authorization,omitempty"`
}

// Policy returns the policy of service.
func (t *Table) Policy(service string) config.Policy {
	if s, ok := t.Services[service]; ok {
		return s.Policy
	}
	return t.Default
}

// Resolve implements endpoint.Resolver over a static table: a service the
// table does not know is endpoint.ErrUnknownService.
func (t *Table) Resolve(_ context.Context, service string) ([]endpoint.Endpoint, error) {
	s, ok := t.Services[service]
	if !ok {
		return nil, endpoint.ErrUnknownService
	}
	return s.Endpoints, nil
}

// FromConfig builds the Consul-direct table from the agent's own config:
// policies from its `policies` section, endpoints left to a live resolver.
func FromConfig(cfg config.Config) *Table {
	t := &Table{
		Version:  "local",
		Services: make(map[string]*Service, len(cfg.Policies.Services)),
		Default:  cfg.Policies.Default,
	}
	for name, p := range cfg.Policies.Services {
		t.Services[name] = &Service{Name: name, Policy: p}
	}
	own := cfg.Policies.For(cfg.Agent.Service)
	t.Inbound = Inbound{RateLimit: own.RateLimit}
	return t
}
