package wire

// xDS resource names. Service names cannot contain '_', so these never
// clash with a service's cluster, listener or route configuration, which
// are named after the service.
const (
	// OutboundListener is an agent's listener for its app's calls.
	OutboundListener = "mesh_outbound"
	// OutboundRoute is the route configuration of OutboundListener: one
	// virtual host per service, whose route's cluster is the service's.
	OutboundRoute = "mesh_outbound"
	// InboundListener is an agent's listener for calls to its app; it
	// carries the callee-side policy (the local rate limit).
	InboundListener = "mesh_inbound"
	// LocalAppCluster is the node's own app behind its agent.
	LocalAppCluster = "local_app"
)

// AgentListeners are the listener names an agent subscribes to.
func AgentListeners() []string { return []string{OutboundListener, InboundListener} }

// Default agent listener addresses, used by the control plane when the
// node metadata does not say (NodeInboundAddr, NodeOutboundAddr) and by
// the agent's configuration defaults.
const (
	DefaultInboundAddr  = "0.0.0.0:15006"
	DefaultOutboundAddr = "127.0.0.1:15001"
	// DefaultAppAddress is where the app listens when NodeAppAddress is
	// not set.
	DefaultAppAddress = "127.0.0.1"
)

// Envoy extension names mesh writes and reads. The agent matches filters
// by these names or by the typed config's message type.
const (
	// HTTPConnectionManager is the network filter of every HTTP listener.
	HTTPConnectionManager = "envoy.filters.network.http_connection_manager"
	// TCPProxy is the network filter of a raw TCP listener.
	TCPProxy = "envoy.filters.network.tcp_proxy"
	// RouterFilter is the last HTTP filter of every connection manager.
	RouterFilter = "envoy.filters.http.router"
	// LocalRateLimitFilter is the inbound listener's token bucket.
	LocalRateLimitFilter = "envoy.filters.http.local_ratelimit"

	// Load-balancing policy extensions (Cluster.load_balancing_policy).
	// The agent takes the first it knows, matching on the name's suffix
	// (".round_robin", ".least_request", ".random").
	LBRoundRobin   = "envoy.load_balancing_policies.round_robin"
	LBLeastRequest = "envoy.load_balancing_policies.least_request"
	LBRandom       = "envoy.load_balancing_policies.random"

	// PreviousHostsPredicate makes a retry pick another endpoint.
	PreviousHostsPredicate = "envoy.retry_host_predicates.previous_hosts"
)

// Refusals the control plane asks Envoy to mark the way an agent marks
// its own: the header a mesh refusal carries and its reason values.
const (
	ReasonHeader      = "x-mesh-reason"
	ReasonRateLimited = "rate-limited"
)

// HTTP filters an agent's outbound connection manager carries before the
// router, configured per route (Route.typed_per_filter_config) under
// these names.
const (
	// FaultFilter injects delays and aborts (envoy.extensions.filters.http.fault.v3.HTTPFault).
	FaultFilter = "envoy.filters.http.fault"
)
