package wire

// Filter-metadata namespaces (Metadata.filter_metadata keys) and their
// fields.
const (
	// GovernanceNamespace is a Cluster's filter_metadata entry holding the
	// policy knobs Envoy has no field for: the hystrix-style error
	// breaker. Absent when the error breaker is off.
	GovernanceNamespace = "mesh.governance"
	// GovErrorPercentThreshold (number, 1-100) opens the breaker when this
	// share of a window's requests failed.
	GovErrorPercentThreshold = "error_percent_threshold"
	// GovRequestVolumeThreshold (number) is the fewest requests in a
	// window before the breaker may open.
	GovRequestVolumeThreshold = "request_volume_threshold"
	// GovSleepWindow (duration string as protobuf JSON writes durations,
	// e.g. "5s") is how long the breaker stays open.
	GovSleepWindow = "sleep_window"

	// EndpointNamespace is an LbEndpoint's filter_metadata entry holding
	// the endpoint's registry and CMDB metadata. String fields are copied
	// to the agent's endpoint metadata.
	EndpointNamespace = "mesh"
	// Endpoint metadata fields. EndpointID, EndpointNode and the CMDB
	// strings are strings; EndpointTags and EndpointHostTags are lists of
	// strings; EndpointMeta (the Consul service meta) and EndpointLabels
	// (CMDB custom fields) are string maps.
	EndpointID       = "id"
	EndpointNode     = "node"
	EndpointTags     = "tags"
	EndpointMeta     = "meta"
	EndpointHostname = "hostname"
	EndpointEnv      = "env"
	EndpointOwner    = "owner"
	EndpointRole     = "role"
	EndpointTenant   = "tenant"
	EndpointStatus   = "status"
	EndpointHostTags = "host_tags"
	EndpointLabels   = "labels"
	// EndpointSource names the source an endpoint came from (consul,
	// kubernetes); EndpointNamespaceName its namespace; EndpointIdentity
	// its workload identity (ns/<namespace>/svc/<service>).
	EndpointSource        = "source"
	EndpointNamespaceName = "namespace"
	EndpointIdentity      = "identity"

	// VirtualIPNamespace is a Cluster's filter_metadata entry holding the
	// service's virtual IP, allocated by the control plane from
	// control.virtual_ips.cidr: field VirtualIPAddress (a dotted IPv4
	// string). Transparent interception routes connections to it, and the
	// agent's DNS responder answers <service>.mesh with it. Absent: the
	// agent computes it itself.
	VirtualIPNamespace = "mesh.virtual_ip"
	VirtualIPAddress   = "address"
)
