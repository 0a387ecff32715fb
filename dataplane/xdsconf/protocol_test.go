package xdsconf_test

import (
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/dataplane/xdsconf"
	"github.com/meshvm/mesh/xdsclient"
)

// protocolCluster is an EDS cluster "svc" with one endpoint, written as
// Envoy reads it: typed_extension_protocol_options, and optionally the
// mesh.protocol metadata.
func protocolCluster(t *testing.T, opts proto.Message, meta string) xdsclient.Resources {
	t.Helper()
	c := &clusterv3.Cluster{Name: "svc", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}}
	if opts != nil {
		a, err := anypb.New(opts)
		if err != nil {
			t.Fatal(err)
		}
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": a}
	}
	if meta != "" {
		c.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
			"mesh.protocol": {Fields: map[string]*structpb.Value{"app_protocol": structpb.NewStringValue(meta)}}}}
	}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: "svc", Endpoints: []*endpointv3.LocalityLbEndpoints{{
		LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: "10.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 15006}}}}}}}}}}}
	return xdsclient.Resources{Clusters: map[string]*clusterv3.Cluster{"svc": c},
		Endpoints: map[string]*endpointv3.ClusterLoadAssignment{"svc": cla}, Versions: map[string]string{}}
}

func explicit(h2 bool) *httpv3.HttpProtocolOptions {
	e := &httpv3.HttpProtocolOptions_ExplicitHttpConfig{}
	if h2 {
		e.ProtocolConfig = &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}}
	} else {
		e.ProtocolConfig = &httpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &corev3.Http1ProtocolOptions{}}
	}
	return &httpv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: e}}
}

// A cluster's upstream protocol becomes its endpoints' app protocol: the
// agent then sends what the app speaks.
func TestClusterProtocol(t *testing.T) {
	downstream := &httpv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
		UseDownstreamProtocolConfig: &httpv3.HttpProtocolOptions_UseDownstreamHttpConfig{}}}
	for _, tc := range []struct {
		name string
		opts proto.Message
		meta string
		want endpoint.Protocol
	}{
		{"explicit HTTP/1.1", explicit(false), "", endpoint.HTTP1},
		{"explicit HTTP/2", explicit(true), "", endpoint.HTTP2},
		{"use downstream", downstream, "", endpoint.Unknown},
		{"no options", nil, "", endpoint.Unknown},
		{"grpc by metadata", explicit(true), "grpc", endpoint.GRPC},
		{"tcp by metadata", nil, "tcp", endpoint.TCP},
		{"auto by metadata", downstream, "auto", endpoint.Unknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tbl, err := xdsconf.Translate(protocolCluster(t, tc.opts, tc.meta))
			if err != nil {
				t.Fatal(err)
			}
			eps := tbl.Services["svc"].Endpoints
			if len(eps) != 1 || eps[0].Protocol != tc.want {
				t.Errorf("endpoints %+v, want one with protocol %v", eps, tc.want)
			}
		})
	}
	_, err := xdsconf.Translate(protocolCluster(t, nil, "smtp"))
	if err == nil || !strings.Contains(err.Error(), "smtp") {
		t.Errorf("unknown app_protocol: %v, want an error naming it", err)
	}
}
