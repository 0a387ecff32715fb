package wire

// xDS Node metadata keys an agent sends and the control plane reads. All
// are strings except NodeAppPort (a number or a decimal string) and
// NodeProxyless (a bool or "true"/"false").
const (
	// NodeService is the service the node's agent fronts: it gets an
	// inbound listener and a local app cluster.
	NodeService = "service"
	// NodeAppPort is the app's port behind the agent. Without it, the
	// control plane uses the MetaAppPort of the node's own Consul
	// registration.
	NodeAppPort = "app_port"
	// NodeAppAddress is the app's address (default DefaultAppAddress).
	NodeAppAddress = "app_address"
	// NodeInboundAddr and NodeOutboundAddr are the agent's listeners
	// (defaults DefaultInboundAddr, DefaultOutboundAddr).
	NodeInboundAddr  = "inbound_addr"
	NodeOutboundAddr = "outbound_addr"
	// NodeProxyless marks a gRPC proxyless client, which gets the API
	// listeners and routes instead of an agent's listeners.
	NodeProxyless = "proxyless"
)

// User agents (Node.user_agent_name).
const (
	// AgentUserAgent is what a mesh agent sends.
	AgentUserAgent = "mesh-agent"
	// GRPCUserAgentPrefix starts the user agent of a gRPC client (matched
	// case-insensitively): such a node is proxyless unless NodeProxyless
	// says otherwise.
	GRPCUserAgentPrefix = "grpc"
)
