package translate

import (
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
)

const (
	// HTTPProtocolOptionsKey is the typed_extension_protocol_options key
	// under which Envoy reads a cluster's upstream HTTP protocol.
	HTTPProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	// ProtocolKey is the Cluster filter_metadata key holding the app
	// protocol as registered ("app_protocol": http1, http2, grpc, tcp,
	// auto): HttpProtocolOptions cannot tell gRPC from HTTP/2, nor say TCP.
	ProtocolKey = "mesh.protocol"
)

// serviceProtocol is the app protocol every endpoint of s registered
// (config.MetaAppProtocol), or auto when they disagree or do not say.
func serviceProtocol(s *model.Service) string {
	p := ""
	for i := range s.Endpoints {
		ep := s.Endpoints[i].Metadata.Meta[config.MetaAppProtocol]
		switch {
		case ep == "" || ep == config.AppProtocolAuto:
			return config.AppProtocolAuto
		case p == "":
			p = ep
		case p != ep:
			return config.AppProtocolAuto
		}
	}
	if p == "" {
		return config.AppProtocolAuto
	}
	return p
}

// setProtocol sets a cluster's upstream protocol as Envoy reads it:
// explicit HTTP/1.1 for http1 apps, explicit HTTP/2 for http2 and grpc
// apps, the downstream's protocol for auto; a tcp cluster has none (its
// listener is a TCP proxy). The registered value also goes into the
// ProtocolKey metadata.
func setProtocol(c *clusterv3.Cluster, proto string) error {
	var opts *httpv3.HttpProtocolOptions
	switch proto {
	case config.AppProtocolHTTP1:
		opts = &httpv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &corev3.Http1ProtocolOptions{}},
			}}}
	case config.AppProtocolHTTP2, config.AppProtocolGRPC:
		opts = &httpv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
			}}}
	case config.AppProtocolTCP:
	default:
		proto = config.AppProtocolAuto
		opts = &httpv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
			UseDownstreamProtocolConfig: &httpv3.HttpProtocolOptions_UseDownstreamHttpConfig{
				HttpProtocolOptions:  &corev3.Http1ProtocolOptions{},
				Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
			}}}
	}
	if opts != nil {
		a, err := anypb.New(opts)
		if err != nil {
			return err
		}
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{HTTPProtocolOptionsKey: a}
	}
	if c.Metadata == nil {
		c.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{}}
	}
	c.Metadata.FilterMetadata[ProtocolKey] = &structpb.Struct{Fields: map[string]*structpb.Value{
		"app_protocol": structpb.NewStringValue(proto),
	}}
	return nil
}
