package translate_test

import (
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/controlplane/translate"
)

// The app protocol the instances register (mesh_app_protocol) becomes the
// cluster's upstream protocol as Envoy reads it: explicit HTTP/1.1, or
// explicit HTTP/2 for http2 and grpc, or the downstream's protocol when
// instances disagree or say auto; tcp clusters carry no HTTP options.
// The registered value is also in the mesh.protocol metadata.
func TestClusterProtocolOptions(t *testing.T) {
	for _, tc := range []struct {
		name      string
		protocols []string
		wantMeta  string
		want      string // "http1", "http2", "downstream", "" (no options)
	}{
		{"http1", []string{"http1", "http1"}, "http1", "http1"},
		{"http2", []string{"http2"}, "http2", "http2"},
		{"grpc", []string{"grpc"}, "grpc", "http2"},
		{"tcp", []string{"tcp"}, "tcp", ""},
		{"auto", []string{"auto"}, "auto", "downstream"},
		{"not registered", []string{""}, "auto", "downstream"},
		{"instances disagree", []string{"http1", "http2"}, "auto", "downstream"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var insts []model.Instance
			for i, p := range tc.protocols {
				meta := map[string]string{"app_port": "8080"}
				if p != "" {
					meta[config.MetaAppProtocol] = p
				}
				insts = append(insts, model.Instance{Service: "svc", ID: "svc-" + string(rune('a'+i)), Node: "vm", Address: "10.0.0." + string(rune('1'+i)),
					Port: 15006, Check: model.CheckPassing, Meta: meta})
			}
			m := model.Merge([]model.View{{Instances: insts}}, model.MergeOptions{Policies: config.Policies{Default: config.DefaultPolicy()}})
			mesh, err := translate.Translate(&m, config.Policies{Default: config.DefaultPolicy()})
			if err != nil {
				t.Fatal(err)
			}
			c := mesh.Clusters["svc"].(*clusterv3.Cluster)
			if got := c.GetMetadata().GetFilterMetadata()[translate.ProtocolKey].GetFields()["app_protocol"].GetStringValue(); got != tc.wantMeta {
				t.Errorf("metadata app_protocol %q, want %q", got, tc.wantMeta)
			}
			a := c.GetTypedExtensionProtocolOptions()[translate.HTTPProtocolOptionsKey]
			got := ""
			if a != nil {
				var o httpv3.HttpProtocolOptions
				if err := a.UnmarshalTo(&o); err != nil {
					t.Fatal(err)
				}
				switch {
				case o.GetExplicitHttpConfig().GetHttpProtocolOptions() != nil:
					got = "http1"
				case o.GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil:
					got = "http2"
				case o.GetUseDownstreamProtocolConfig() != nil:
					got = "downstream"
				default:
					got = "other"
				}
			}
			if got != tc.want {
				t.Errorf("protocol options %q, want %q", got, tc.want)
			}
		})
	}
}

// A protocol change alone (an instance re-registered after its agent
// probed the app) rebuilds the cluster.
func TestClusterFollowsProtocolChange(t *testing.T) {
	inst := func(p string) model.Model {
		return model.Merge([]model.View{{Instances: []model.Instance{{Service: "svc", ID: "svc-1", Node: "vm", Address: "10.0.0.1",
			Port: 15006, Check: model.CheckPassing, Meta: map[string]string{config.MetaAppProtocol: p}}}}},
			model.MergeOptions{Policies: config.Policies{Default: config.DefaultPolicy()}})
	}
	tr := translate.NewTranslator()
	m1 := inst("auto")
	if _, err := tr.Translate(&m1, config.Policies{Default: config.DefaultPolicy()}); err != nil {
		t.Fatal(err)
	}
	m2 := inst("http1")
	mesh, err := tr.Translate(&m2, config.Policies{Default: config.DefaultPolicy()})
	if err != nil {
		t.Fatal(err)
	}
	c := mesh.Clusters["svc"].(*clusterv3.Cluster)
	if got := c.GetMetadata().GetFilterMetadata()[translate.ProtocolKey].GetFields()["app_protocol"].GetStringValue(); got != "http1" {
		t.Errorf("after the instance re-registered as http1 the cluster says %q", got)
	}
}
