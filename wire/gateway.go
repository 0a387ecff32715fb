package wire

// The edge gateway's contract with the control plane.
const (
	// NodeRole (Node metadata, string) says what kind of proxy a node is:
	// RoleAgent (the default when absent), RoleGateway.
	NodeRole    = "role"
	RoleAgent   = "agent"
	RoleGateway = "gateway"

	// GatewayUserAgent is what mesh gateway sends as Node.user_agent_name.
	GatewayUserAgent = "mesh-gateway"

	// GatewayHTTPSListener and GatewayHTTPListener are a gateway node's
	// listeners; GatewayRoute is the route configuration both use (the
	// HTTP listener redirects to HTTPS unless a route says otherwise).
	GatewayHTTPSListener = "mesh_gateway_https"
	GatewayHTTPListener  = "mesh_gateway_http"
	GatewayRoute         = "mesh_gateway"

	// JWTAuthnFilter is the standard JWT authentication HTTP filter the
	// gateway's listeners carry (providers, and per-route requirements).
	JWTAuthnFilter = "envoy.filters.http.jwt_authn"

	// MetaKind is the Consul service meta key naming a registration's
	// kind; KindGateway marks a mesh gateway.
	MetaKind    = "mesh_kind"
	KindGateway = "gateway"

	// Default gateway listener addresses.
	DefaultGatewayHTTPSAddr = "0.0.0.0:8443"
	DefaultGatewayHTTPAddr  = "0.0.0.0:8080"
)
