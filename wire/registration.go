package wire

// Consul service meta keys the agent writes on its registration, read
// back by the control plane's Consul source and by the agent's own
// Consul-direct discovery. A registration's Address and Port are the
// agent's inbound listener, never the app. mesh sets no tags of its own:
// the user's tags are passed through.
const (
	// MetaAppPort is the app's own port (decimal).
	MetaAppPort = "app_port"
	// MetaVersion is the registering agent's version.
	MetaVersion = "mesh_version"
	// MetaNode is the VM name.
	MetaNode = "mesh_node"
	// MetaZone and MetaRegion are the agent's locality, when set. A CMDB
	// host record for the same IP wins over them in the control plane.
	MetaZone   = "mesh_zone"
	MetaRegion = "mesh_region"
	// MetaHealthCheck is how the app is checked: HealthCheckHTTP or
	// HealthCheckTCP.
	MetaHealthCheck = "mesh_health"
	// MetaAppProtocol is the protocol the app speaks (an AppProtocol);
	// absent means ProtocolAuto.
	MetaAppProtocol = "mesh_app_protocol"
)

// MetaHealthCheck values.
const (
	HealthCheckHTTP = "http"
	HealthCheckTCP  = "tcp"
)

// MetaMTLS, on a registration, says the agent takes mTLS on its inbound
// port and in which mode (MTLSPermissive, MTLSStrict); absent means
// plain text only. Callers' agents that hold an identity dial such an
// endpoint over mTLS; the control plane gives a service whose endpoints
// all carry it an UpstreamTlsContext.
const MetaMTLS = "mesh_mtls"
