package wire

// What mesh control pushes to a gateway node besides the names in
// gateway.go: node metadata for its listener addresses, the HTTP filters
// of its listeners and the extension the gateway reads for API keys.
const (
	// NodeGatewayHTTPSAddr and NodeGatewayHTTPAddr (Node metadata,
	// host:port) are a gateway's listener addresses (defaults
	// DefaultGatewayHTTPSAddr, DefaultGatewayHTTPAddr).
	NodeGatewayHTTPSAddr = "https_addr"
	NodeGatewayHTTPAddr  = "http_addr"

	// HeaderMutationFilter is the gateway listeners' first HTTP filter:
	// it removes incoming copies of the headers verified claims are
	// forwarded in, so they cannot be forged.
	HeaderMutationFilter = "envoy.filters.http.header_mutation"

	// CORSFilter answers CORS preflights and decorates responses of the
	// routes whose typed_per_filter_config carries a CorsPolicy; it comes
	// before jwt_authn, which lets preflights through
	// (bypass_cors_preflight).
	CORSFilter = "envoy.filters.http.cors"

	// JWTPayloadMetadataKey is where jwt_authn writes a verified token's
	// payload (payload_in_metadata, in the filter's dynamic metadata
	// namespace JWTAuthnFilter); the per-route RBAC claim rules match it.
	JWTPayloadMetadataKey = "jwt_payload"

	// APIKeyFilter is mesh's API key HTTP filter, between jwt_authn and
	// rbac. Its config is an xds.type.v3.TypedStruct of type
	// APIKeyAuthType (keys: [{subject, hash}], header); per route, of type
	// APIKeyPerRouteType (require: required|optional, or_jwt: the JWT
	// requirement's provider may stand in for a key). Envoy does not know
	// it, so an Envoy refuses such a listener rather than skip the check.
	APIKeyFilter       = "mesh.filters.http.api_key"
	APIKeyAuthType     = "type.googleapis.com/mesh.gateway.v1.APIKeyAuth"
	APIKeyPerRouteType = "type.googleapis.com/mesh.gateway.v1.APIKeyAuthPerRoute"
	// DefaultAPIKeyHeader carries an API key unless configured otherwise.
	DefaultAPIKeyHeader = "x-api-key"

	// JWKSClusterPrefix starts the name of the cluster a remote JWKS is
	// fetched through (jwks_<provider>; services never contain '_').
	JWKSClusterPrefix = "jwks_"
)
