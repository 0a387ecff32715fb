package xdsconf

import (
	"fmt"
	"net/netip"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshvm/mesh/wire"
)

// clusterVirtualIP reads the service's virtual IP from the Cluster's
// wire.VirtualIPNamespace metadata: zero when absent, an error when it is
// not an IPv4 address.
func clusterVirtualIP(c *clusterv3.Cluster) (netip.Addr, error) {
	md := c.GetMetadata().GetFilterMetadata()[wire.VirtualIPNamespace]
	if md == nil {
		return netip.Addr{}, nil
	}
	s := md.GetFields()[wire.VirtualIPAddress].GetStringValue()
	ip, err := netip.ParseAddr(s)
	if err != nil || !ip.Is4() {
		return netip.Addr{}, fmt.Errorf("metadata %s.%s: %q is not an IPv4 address", wire.VirtualIPNamespace, wire.VirtualIPAddress, s)
	}
	return ip, nil
}

// copyAppPort copies the instance's app port from the endpoint's Consul
// meta (metadata mesh.meta.app_port) into its metadata, where
// Consul-direct discovery has it too: transparent interception maps a
// connection to an instance's app port onto its service.
func copyAppPort(dst map[string]string, md *structpb.Struct) {
	if p := md.GetFields()[wire.EndpointMeta].GetStructValue().GetFields()[wire.MetaAppPort].GetStringValue(); p != "" {
		dst[wire.MetaAppPort] = p
	}
}
