package translate

import (
	"net/netip"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/wire"
)

func TestClusterVirtualIP(t *testing.T) {
	for _, tc := range []struct {
		name string
		vip  netip.Addr
		want string
	}{
		{"allocated", netip.MustParseAddr("240.1.2.3"), "240.1.2.3"},
		{"none", netip.Addr{}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Cluster(&model.Service{Name: "orders", Policy: config.DefaultPolicy(), VirtualIP: tc.vip})
			if err != nil {
				t.Fatal(err)
			}
			md := c.GetMetadata().GetFilterMetadata()[wire.VirtualIPNamespace]
			got := md.GetFields()[wire.VirtualIPAddress].GetStringValue()
			if got != tc.want || (tc.want == "") != (md == nil) {
				t.Fatalf("metadata %v, want address %q", md, tc.want)
			}
			if err := c.Validate(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestVirtualIPChangeRebuildsCluster: the translator's memory does not
// keep a cluster whose virtual IP changed.
func TestVirtualIPChangeRebuildsCluster(t *testing.T) {
	tr := NewTranslator()
	m := &model.Model{Services: []model.Service{{Name: "orders", Policy: config.DefaultPolicy(), VirtualIP: netip.MustParseAddr("240.0.0.1")}}}
	if _, err := tr.Translate(m, config.Policies{}); err != nil {
		t.Fatal(err)
	}
	m.Services[0].VirtualIP = netip.MustParseAddr("240.0.0.2")
	out, err := tr.Translate(m, config.Policies{})
	if err != nil {
		t.Fatal(err)
	}
	c, ok := out.Clusters["orders"].(*clusterv3.Cluster)
	if !ok {
		t.Fatalf("no cluster orders in %v", out.Clusters)
	}
	if got := c.GetMetadata().GetFilterMetadata()[wire.VirtualIPNamespace].GetFields()[wire.VirtualIPAddress].GetStringValue(); got != "240.0.0.2" {
		t.Fatalf("after the change the cluster says %q", got)
	}
}
