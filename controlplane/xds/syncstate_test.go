package xds

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshvm/mesh/meshapi"
	"github.com/meshvm/mesh/wire"
)

func TestKindOf(t *testing.T) {
	gw, _ := structpb.NewStruct(map[string]any{wire.NodeRole: wire.RoleGateway})
	for _, c := range []struct {
		name string
		node *corev3.Node
		want string
	}{
		{"mesh agent", &corev3.Node{UserAgentName: wire.AgentUserAgent}, meshapi.KindAgent},
		{"mesh gateway", &corev3.Node{UserAgentName: wire.GatewayUserAgent}, meshapi.KindGateway},
		{"gateway by role", &corev3.Node{UserAgentName: "envoy", Metadata: gw}, meshapi.KindGateway},
		{"gRPC proxyless", &corev3.Node{UserAgentName: "gRPC Go"}, meshapi.KindProxyless},
		{"Envoy", &corev3.Node{UserAgentName: "envoy"}, meshapi.KindEnvoy},
		{"unknown client", &corev3.Node{}, meshapi.KindEnvoy},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := kindOf(c.node); got != c.want {
				t.Errorf("kind %q, want %q", got, c.want)
			}
		})
	}
}
