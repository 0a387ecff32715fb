package xdsconf

import (
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshvm/mesh/wire"
)

func TestClusterVirtualIP(t *testing.T) {
	with := func(v string) *clusterv3.Cluster {
		return &clusterv3.Cluster{Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
			wire.VirtualIPNamespace: {Fields: map[string]*structpb.Value{wire.VirtualIPAddress: structpb.NewStringValue(v)}}}}}
	}
	for _, tc := range []struct {
		name    string
		c       *clusterv3.Cluster
		want    string
		wantErr bool
	}{
		{"set", with("240.9.8.7"), "240.9.8.7", false},
		{"absent", &clusterv3.Cluster{}, "invalid IP", false},
		{"not an address", with("orders"), "", true},
		{"ipv6", with("fd00::1"), "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ip, err := clusterVirtualIP(tc.c)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v", err)
			}
			if !tc.wantErr && ip.String() != tc.want {
				t.Fatalf("got %s, want %s", ip, tc.want)
			}
		})
	}
}

func TestCopyAppPort(t *testing.T) {
	md := &structpb.Struct{Fields: map[string]*structpb.Value{
		wire.EndpointMeta: structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
			wire.MetaAppPort: structpb.NewStringValue("8080")}})}}
	got := map[string]string{}
	copyAppPort(got, md)
	if got[wire.MetaAppPort] != "8080" {
		t.Fatalf("got %v", got)
	}
	none := map[string]string{}
	copyAppPort(none, &structpb.Struct{})
	if len(none) != 0 {
		t.Fatalf("got %v from no meta", none)
	}
}
