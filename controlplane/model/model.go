// Package model is the control plane's platform-neutral view of the mesh:
// what the sources (Consul, the CMDB, later Kubernetes) report, and the
// merged services and endpoints the translator turns into xDS. It imports
// no protobufs, so it can be built, compared and dumped as JSON on its own.
package model

import (
	"maps"
	"net/netip"
	"reflect"
	"slices"

	"github.com/meshvm/mesh/config"
)

// Check is a registry's aggregated health verdict for one instance.
type Check string

// Registry check states, as Consul names them.
const (
	CheckPassing  Check = "passing"
	CheckWarning  Check = "warning"
	CheckCritical Check = "critical"
)

// Health is what the mesh does with an endpoint.
type Health string

// Endpoint health. Healthy endpoints take traffic; Unhealthy ones do not;
// Draining ones finish what they have but get no new requests.
const (
	Healthy   Health = "healthy"
	Unhealthy Health = "unhealthy"
	Draining  Health = "draining"
)

// Instance is one registered instance of a service as a registry knows it.
type Instance struct {
	Service string `json:"service"`
	// ID is the registry's unique instance ID.
	ID string `json:"id"`
	// Node is the registry node (VM) the instance runs on.
	Node string `json:"node"`
	// Address and Port reach the instance's agent inbound listener.
	Address string `json:"address"`
	Port    int    `json:"port"`
	Check   Check  `json:"check"`
	// Weight is the registry's load-balancing weight for the current
	// check state; 0 means 1.
	Weight uint32            `json:"weight,omitempty"`
	Tags   []string          `json:"tags,omitempty"`
	Meta   map[string]string `json:"meta,omitempty"`
	// Source names the source of an instance not from the registry
	// (Consul): SourceKubernetes. Empty means the registry.
	Source string `json:"source,omitempty"`
	// Namespace is a Kubernetes instance's namespace.
	Namespace string `json:"namespace,omitempty"`
	// Identity is the workload's SPIFFE ID path (see Identity), when the
	// source names one.
	Identity string `json:"identity,omitempty"`
	// Draining says the source reports the instance as shutting down but
	// still serving (a terminating Kubernetes endpoint).
	Draining bool `json:"draining,omitempty"`
	// Locality places the instance when the source knows it (Kubernetes
	// zone and region); it wins over the mesh_region/mesh_zone meta, a
	// CMDB host wins over it.
	Locality Locality `json:"locality,omitzero"`
}

// SourceKubernetes is Instance.Source for instances read from Kubernetes.
const SourceKubernetes = "kubernetes"

// Identity is the SPIFFE ID path of a service's workloads,
// "ns/<namespace>/svc/<service>", as in spiffe://<trust-domain>/ns/shop/svc/orders.
// The service is the workload's own name (orders), not the mesh name.
func Identity(namespace, service string) string {
	return "ns/" + namespace + "/svc/" + service
}

// Host is one machine's metadata from the CMDB. Hosts join instances by IP.
type Host struct {
	IP       netip.Addr        `json:"ip"`
	Hostname string            `json:"hostname,omitempty"`
	Region   string            `json:"region,omitempty"`
	Zone     string            `json:"zone,omitempty"`
	Env      string            `json:"env,omitempty"`
	Owner    string            `json:"owner,omitempty"`
	Status   string            `json:"status,omitempty"`
	Role     string            `json:"role,omitempty"`
	Tenant   string            `json:"tenant,omitempty"`
	Tags     []string          `json:"tags,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"`
}

// View is one source's full current state. A registry fills Instances, a
// CMDB fills Hosts; a source may fill both.
type View struct {
	Instances []Instance `json:"instances,omitempty"`
	Hosts     []Host     `json:"hosts,omitempty"`
	// Changed names the services whose instances may differ from the
	// source's previous view (added, changed or gone); nil means any may
	// have, and Hosts may have changed. A registry that knows what it
	// fetched sets it, so the merge and the translation touch only those
	// services (MergeChanged).
	Changed []string `json:"-"`
}

// Locality places an endpoint; empty fields mean unknown.
type Locality struct {
	Region string `json:"region,omitempty"`
	Zone   string `json:"zone,omitempty"`
}

// Endpoint is one routable instance of a service after the merge.
type Endpoint struct {
	ID       string   `json:"id"`
	Node     string   `json:"node"`
	Address  string   `json:"address"`
	Port     int      `json:"port"`
	Locality Locality `json:"locality"`
	Health   Health   `json:"health"`
	// Weight is at least 1.
	Weight uint32 `json:"weight"`
	// AppPort is the app's own port behind the agent (meta app_port), 0 if
	// unknown.
	AppPort  int      `json:"app_port,omitempty"`
	Metadata Metadata `json:"metadata"`
	// Source, Namespace and Identity are the instance's (see Instance).
	Source    string `json:"source,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	Identity  string `json:"identity,omitempty"`
}

// Metadata is what an endpoint carries besides its address: registry tags
// and meta, and the CMDB host record.
type Metadata struct {
	Tags     []string          `json:"tags,omitempty"`
	Meta     map[string]string `json:"meta,omitempty"`
	Hostname string            `json:"hostname,omitempty"`
	Env      string            `json:"env,omitempty"`
	Owner    string            `json:"owner,omitempty"`
	Role     string            `json:"role,omitempty"`
	Tenant   string            `json:"tenant,omitempty"`
	// Status is the CMDB status of the host.
	Status   string            `json:"status,omitempty"`
	HostTags []string          `json:"host_tags,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"`
}

// Service is one service with its endpoints and the policy callers and the
// service itself apply.
type Service struct {
	Name      string        `json:"name"`
	Policy    config.Policy `json:"policy"`
	Endpoints []Endpoint    `json:"endpoints"`
	// VirtualIP is the service's stable virtual IP (virtualip.go); zero
	// without a range.
	VirtualIP netip.Addr `json:"virtual_ip,omitzero"`
	// Subsets are the configured subsets with the endpoints each holds
	// (subsets.go); DefaultSubset and Routes are the service's
	// (control.services.<name>).
	Subsets       []Subset       `json:"subsets,omitempty"`
	DefaultSubset string         `json:"default_subset,omitempty"`
	Routes        []config.Route `json:"routes,omitempty"`
}

// Model is the merged view the translator consumes. Services are sorted by
// name and endpoints by ID, so equal inputs give equal models.
type Model struct {
	Services []Service `json:"services"`
	// Conflicts are the endpoints dropped because another endpoint of the
	// same service has the same address and port, sorted by service and
	// address. Equal ignores them: they change nothing that is served.
	Conflicts []Conflict `json:"conflicts,omitempty"`
	// Changed names, sorted, the services that may differ from the model
	// the merge started from (MergeChanged); nil means any may. Equal
	// ignores it.
	Changed []string `json:"-"`
}

// Conflict is two instances of one service on one address:port: xDS
// clients reject duplicate addresses, so one is kept.
type Conflict struct {
	Service string `json:"service"`
	// Address is ip:port.
	Address string `json:"address"`
	// Kept and Dropped name the instances as source/id (source "consul"
	// for the registry).
	Kept    string `json:"kept"`
	Dropped string `json:"dropped"`
}

// Service returns the named service, or nil.
func (m *Model) Service(name string) *Service {
	lo, hi := 0, len(m.Services)
	for lo < hi {
		mid := (lo + hi) / 2
		switch {
		case m.Services[mid].Name == name:
			return &m.Services[mid]
		case m.Services[mid].Name < name:
			lo = mid + 1
		default:
			hi = mid
		}
	}
	return nil
}

// Counts returns the number of services and endpoints.
func (m *Model) Counts() (services, endpoints int) {
	for _, s := range m.Services {
		endpoints += len(s.Endpoints)
	}
	return len(m.Services), endpoints
}

// Node is an xDS client as the control plane sees it: its id and what its
// node metadata says (keys: package wire).
type Node struct {
	ID string `json:"id"`
	// Service is the service the node's agent fronts; empty for a pure
	// client such as a gRPC proxyless client.
	Service string `json:"service,omitempty"`
	// Proxyless nodes (gRPC xDS clients) get one API listener per service
	// instead of the agent's inbound and outbound listeners.
	Proxyless bool     `json:"proxyless,omitempty"`
	Locality  Locality `json:"locality"`
	// AppAddress:AppPort is where the fronted app listens; AppPort 0 means
	// unknown, and the node gets no inbound listener.
	AppAddress string `json:"app_address,omitempty"`
	AppPort    int    `json:"app_port,omitempty"`
	// Gateway nodes (mesh gateway) get the gateway listeners and routes
	// instead of an agent's; HTTPSAddr and HTTPAddr are their addresses.
	Gateway   bool   `json:"gateway,omitempty"`
	HTTPSAddr string `json:"https_addr,omitempty"`
	HTTPAddr  string `json:"http_addr,omitempty"`
	// InboundAddr and OutboundAddr are the agent's listeners (host:port).
	InboundAddr  string `json:"inbound_addr,omitempty"`
	OutboundAddr string `json:"outbound_addr,omitempty"`
}

// Equal reports whether two endpoints are the same, field by field (nil
// and empty tags or maps are equal). It is the translator's and the
// reconciler's change test, much cheaper than reflect.DeepEqual at 100,000
// endpoints.
func (e *Endpoint) Equal(o *Endpoint) bool {
	return e.ID == o.ID && e.Node == o.Node && e.Address == o.Address && e.Port == o.Port &&
		e.Locality == o.Locality && e.Health == o.Health && e.Weight == o.Weight && e.AppPort == o.AppPort &&
		e.Source == o.Source && e.Namespace == o.Namespace && e.Identity == o.Identity &&
		e.Metadata.Equal(&o.Metadata)
}

// Equal reports whether two metadata are the same.
func (m *Metadata) Equal(o *Metadata) bool {
	return m.Hostname == o.Hostname && m.Env == o.Env && m.Owner == o.Owner && m.Role == o.Role &&
		m.Tenant == o.Tenant && m.Status == o.Status &&
		slices.Equal(m.Tags, o.Tags) && slices.Equal(m.HostTags, o.HostTags) &&
		maps.Equal(m.Meta, o.Meta) && maps.Equal(m.Labels, o.Labels)
}

// EqualEndpoints reports whether two endpoint lists are the same, in order.
func EqualEndpoints(a, b []Endpoint) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(&b[i]) {
			return false
		}
	}
	return true
}

// Equal reports whether two models are the same: services, their
// policies and their endpoints.
func (m *Model) Equal(o *Model) bool {
	if len(m.Services) != len(o.Services) {
		return false
	}
	for i := range m.Services {
		if !m.Services[i].Equal(&o.Services[i]) {
			return false
		}
	}
	return true
}

// Equal reports whether two services are the same: name, policy,
// endpoints, traffic rules and virtual IP.
func (s *Service) Equal(o *Service) bool {
	return s.Name == o.Name && s.VirtualIP == o.VirtualIP && EqualEndpoints(s.Endpoints, o.Endpoints) &&
		reflect.DeepEqual(s.Policy, o.Policy) && s.EqualTraffic(o)
}
