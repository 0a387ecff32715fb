package translate

import (
	"net/netip"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshvm/mesh/wire"
)

// setVirtualIP writes the service's virtual IP into the Cluster's
// wire.VirtualIPNamespace metadata; a zero address writes nothing.
func setVirtualIP(c *clusterv3.Cluster, ip netip.Addr) {
	if !ip.IsValid() {
		return
	}
	if c.Metadata == nil {
		c.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{}}
	}
	if c.Metadata.FilterMetadata == nil {
		c.Metadata.FilterMetadata = map[string]*structpb.Struct{}
	}
	c.Metadata.FilterMetadata[wire.VirtualIPNamespace] = &structpb.Struct{Fields: map[string]*structpb.Value{
		wire.VirtualIPAddress: structpb.NewStringValue(ip.String()),
	}}
}
