package wiretest

import (
	// Typed configs the gateway golden resources carry.
	_ "github.com/cncf/xds/go/xds/type/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
)

// Gateway is a mesh gateway node (https_addr 127.0.0.1:8443, http_addr
// 127.0.0.1:8080) of the realistic model with the gateway configuration
// of controlplane/translate's gateway test: providers idp (the JWKS of
// GatewayIdPJWKS inline, claims sub→x-user-id) and partners (remote JWKS),
// API keys, and routes of every kind.
const Gateway = "gateway"

// GatewayIdPJWKS and GatewayIdPKey are the idp provider's key set (in the
// Gateway golden resources) and its ES256 private key (PKCS#8 PEM, kid
// idp-1), so tests can sign tokens the golden configuration accepts.
const (
	GatewayIdPJWKS = "gateway-idp.jwks.json"
	GatewayIdPKey  = "gateway-idp.key.pem"
)

// File is the path of a file in wire/testdata.
func File(name string) string { return Path(name)[:len(Path(name))-len(name+".golden.json")] + name }
