package xdsconf

import (
	"fmt"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"

	"github.com/meshvm/mesh/dataplane/endpoint"
)

// Where a cluster says what its app speaks (controlplane/translate).
const (
	httpProtocolOptions = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	protocolKey         = "mesh.protocol"
)

// clusterProtocol reads what a cluster's app speaks: the "mesh.protocol"
// metadata when present (it tells gRPC from HTTP/2, and says TCP), else
// its HttpProtocolOptions as Envoy reads them: explicit HTTP/1.1 or HTTP/2,
// or the downstream's protocol (Unknown). A cluster with neither is
// Unknown too.
func clusterProtocol(c *clusterv3.Cluster) (endpoint.Protocol, error) {
	if md := c.GetMetadata().GetFilterMetadata()[protocolKey]; md != nil {
		s := md.GetFields()["app_protocol"].GetStringValue()
		p := endpoint.ParseProtocol(s)
		if p == endpoint.Unknown && s != "" && s != "auto" {
			return p, fmt.Errorf("metadata %s.app_protocol %q is not one of http1, http2, grpc, tcp, auto", protocolKey, s)
		}
		return p, nil
	}
	a := c.GetTypedExtensionProtocolOptions()[httpProtocolOptions]
	if a == nil {
		return endpoint.Unknown, nil
	}
	var o httpv3.HttpProtocolOptions
	if err := a.UnmarshalTo(&o); err != nil {
		return endpoint.Unknown, fmt.Errorf("typed_extension_protocol_options %s: %w", httpProtocolOptions, err)
	}
	if e := o.GetExplicitHttpConfig(); e != nil {
		switch {
		case e.GetHttp2ProtocolOptions() != nil:
			return endpoint.HTTP2, nil
		case e.GetHttpProtocolOptions() != nil:
			return endpoint.HTTP1, nil
		case e.GetHttp3ProtocolOptions() != nil:
			return endpoint.Unknown, fmt.Errorf("typed_extension_protocol_options %s: HTTP/3 upstreams are not supported", httpProtocolOptions)
		}
	}
	return endpoint.Unknown, nil // use_downstream_protocol_config, auto_config
}
