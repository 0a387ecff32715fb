package xds

import (
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/wire"
)

// gatewayFromProto marks a mesh gateway: Node metadata role=gateway, or
// the gateway's user agent; and reads its listener addresses.
func gatewayFromProto(n *corev3.Node, out *model.Node) {
	f := n.GetMetadata().GetFields()
	role := strings.TrimSpace(f[wire.NodeRole].GetStringValue())
	out.Gateway = role == wire.RoleGateway || (role == "" && n.GetUserAgentName() == wire.GatewayUserAgent)
	if !out.Gateway {
		return
	}
	out.Proxyless = false
	out.HTTPSAddr = strings.TrimSpace(f[wire.NodeGatewayHTTPSAddr].GetStringValue())
	out.HTTPAddr = strings.TrimSpace(f[wire.NodeGatewayHTTPAddr].GetStringValue())
}
