package wire

import (
	"fmt"
	"strings"
)

// AppProtocol is the protocol an app speaks, as configured on its agent
// (agent.app_protocol), registered in Consul (MetaAppProtocol) and carried
// to callers on the service's Cluster.
type AppProtocol string

// App protocols.
const (
	// ProtocolAuto: the agent finds out (h2c prior-knowledge probe or ALPN
	// where the app offers it, else HTTP/1.1). The default.
	ProtocolAuto AppProtocol = "auto"
	// ProtocolHTTP1: HTTP/1.1 only.
	ProtocolHTTP1 AppProtocol = "http1"
	// ProtocolHTTP2: HTTP/2 (h2c, or h2 over TLS).
	ProtocolHTTP2 AppProtocol = "http2"
	// ProtocolGRPC: gRPC, i.e. HTTP/2 with gRPC semantics.
	ProtocolGRPC AppProtocol = "grpc"
	// ProtocolTCP: raw TCP, no HTTP.
	ProtocolTCP AppProtocol = "tcp"
)

// AppProtocols lists every app protocol, the default first.
func AppProtocols() []AppProtocol {
	return []AppProtocol{ProtocolAuto, ProtocolHTTP1, ProtocolHTTP2, ProtocolGRPC, ProtocolTCP}
}

// ParseAppProtocol reads an app protocol; "" is ProtocolAuto. Case and
// surrounding spaces are ignored.
func ParseAppProtocol(s string) (AppProtocol, error) {
	p := AppProtocol(strings.ToLower(strings.TrimSpace(s)))
	if p == "" {
		return ProtocolAuto, nil
	}
	for _, known := range AppProtocols() {
		if p == known {
			return p, nil
		}
	}
	return "", fmt.Errorf("app protocol %q: want one of auto, http1, http2, grpc, tcp", s)
}

// HTTP reports whether the protocol is carried over HTTP (every protocol
// but ProtocolTCP).
func (p AppProtocol) HTTP() bool { return p != ProtocolTCP }

// HTTPProtocolOptions is the Cluster.typed_extension_protocol_options key
// (an envoy.extensions.upstreams.http.v3.HttpProtocolOptions) through
// which a service's app protocol reaches its callers, as Envoy reads it:
// explicit_http_config http_protocol_options for ProtocolHTTP1,
// http2_protocol_options for ProtocolHTTP2 and ProtocolGRPC, and
// use_downstream_protocol_config for ProtocolAuto.
const HTTPProtocolOptions = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
