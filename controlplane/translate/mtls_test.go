package translate_test

import (
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/controlplane/translate"
	"github.com/meshvm/mesh/wire"
)

// withMTLS is the realistic model where every orders and payments agent
// registers mesh_mtls and one of search's does not.
func withMTLS() model.Model {
	m := realistic()
	for i := range m.Services {
		s := &m.Services[i]
		for j := range s.Endpoints {
			ep := &s.Endpoints[j]
			if s.Name == "search" && j > 0 {
				continue
			}
			meta := map[string]string{}
			for k, v := range ep.Metadata.Meta {
				meta[k] = v
			}
			meta[wire.MetaMTLS] = "permissive"
			ep.Metadata.Meta = meta
		}
	}
	return m
}

func goldenMTLS() translate.MTLS {
	cfg := config.Default().Control
	cfg.Services = map[string]config.ServiceSettings{"orders": {MTLSMode: wire.MTLSStrict}}
	return translate.MTLSFromConfig(cfg)
}

func upstreamTLS(t *testing.T, c *clusterv3.Cluster) *tlsv3.UpstreamTlsContext {
	t.Helper()
	if c.GetTransportSocket() == nil {
		return nil
	}
	u := &tlsv3.UpstreamTlsContext{}
	if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(u); err != nil {
		t.Fatal(err)
	}
	return u
}

// TestMTLSTranslation: clusters of services whose agents all take mTLS
// verify the service's SPIFFE ID with the SDS secrets; the inbound
// listener is strict or permissive per service; with no mTLS policy
// change nothing else.
func TestMTLSTranslation(t *testing.T) {
	m := withMTLS()
	tr := translate.NewTranslator()
	tr.MTLS = goldenMTLS()
	mesh, err := tr.Translate(&m, policies())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, id string
	}{
		{"orders", "spiffe://mesh.local/ns/default/svc/orders"},
		{"payments", "spiffe://mesh.local/ns/default/svc/payments"},
		{"search", ""},
	} {
		u := upstreamTLS(t, mesh.Clusters[tc.name].(*clusterv3.Cluster))
		if tc.id == "" {
			if u != nil {
				t.Errorf("%s: a transport socket though one agent takes no mTLS", tc.name)
			}
			continue
		}
		if u == nil {
			t.Fatalf("%s: no UpstreamTlsContext", tc.name)
		}
		cv := u.GetCommonTlsContext().GetCombinedValidationContext()
		san := cv.GetDefaultValidationContext().GetMatchTypedSubjectAltNames()
		if len(san) != 1 || san[0].GetSanType() != tlsv3.SubjectAltNameMatcher_URI || san[0].GetMatcher().GetExact() != tc.id {
			t.Errorf("%s: SAN matchers %v, want URI %s", tc.name, san, tc.id)
		}
		if cv.GetValidationContextSdsSecretConfig().GetName() != wire.SecretTrustBundle ||
			u.GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs()[0].GetName() != wire.SecretWorkloadCert {
			t.Errorf("%s: SDS secrets %v", tc.name, u.GetCommonTlsContext())
		}
	}
	for _, tc := range []struct {
		node   model.Node
		chains []string
	}{
		{model.Node{ID: "vm-1", Service: "orders", AppPort: 8080}, []string{"tls"}},
		{model.Node{ID: "vm-3", Service: "payments", AppPort: 9090}, []string{"tls", "raw_buffer"}},
		{model.Node{ID: "vm-6", Service: "search", AppPort: 8080}, []string{""}}, // registered without mTLS
	} {
		l := nodeResources(t, mesh, tc.node).Listeners[wire.InboundListener].(*listenerv3.Listener)
		var got []string
		for _, fc := range l.GetFilterChains() {
			got = append(got, fc.GetFilterChainMatch().GetTransportProtocol())
			if fc.GetFilterChainMatch().GetTransportProtocol() == "tls" {
				d := &tlsv3.DownstreamTlsContext{}
				if err := fc.GetTransportSocket().GetTypedConfig().UnmarshalTo(d); err != nil || !d.GetRequireClientCertificate().GetValue() {
					t.Errorf("%s: tls chain without a required client certificate (%v)", tc.node.Service, err)
				}
			}
		}
		if len(got) != len(tc.chains) || got[0] != tc.chains[0] || len(got) > 1 && got[1] != tc.chains[1] {
			t.Errorf("%s: filter chains %q, want %q", tc.node.Service, got, tc.chains)
		}
	}
	// The default policy is permissive: orders' node is then permissive.
	tr.MTLS = translate.MTLSFromConfig(config.Default().Control)
	mesh, err = tr.Translate(&m, policies())
	if err != nil {
		t.Fatal(err)
	}
	l := nodeResources(t, mesh, model.Node{ID: "vm-1", Service: "orders", AppPort: 8080}).Listeners[wire.InboundListener].(*listenerv3.Listener)
	if len(l.GetFilterChains()) != 2 {
		t.Fatalf("default mode: %d filter chains, want 2 (permissive)", len(l.GetFilterChains()))
	}
}

// gRPC proxyless clients get mTLS clusters in gRPC's form: certificate
// provider instances, never SDS secrets (which gRPC refuses, NACKing the
// cluster), and the SPIFFE ID in match_subject_alt_names.
func TestMTLSProxylessClusters(t *testing.T) {
	m := withMTLS()
	tr := translate.NewTranslator()
	tr.MTLS = goldenMTLS()
	mesh, err := tr.Translate(&m, policies())
	if err != nil {
		t.Fatal(err)
	}
	res := nodeResources(t, mesh, model.Node{ID: "grpc-1", Proxyless: true})
	u := upstreamTLS(t, res.Clusters["orders"].(*clusterv3.Cluster))
	c := u.GetCommonTlsContext()
	if u == nil || c.GetTlsCertificateSdsSecretConfigs() != nil || c.GetTlsCertificateProviderInstance().GetInstanceName() != wire.SecretWorkloadCert ||
		c.GetValidationContext().GetCaCertificateProviderInstance().GetInstanceName() != wire.SecretTrustBundle ||
		c.GetValidationContext().GetMatchSubjectAltNames()[0].GetExact() != "spiffe://mesh.local/ns/default/svc/orders" {
		t.Fatalf("proxyless orders cluster: %v", u)
	}
	if res.Clusters["search"] != mesh.Clusters["search"] {
		t.Error("a plaintext cluster was copied for proxyless clients")
	}
	// Agents keep the SDS form.
	if upstreamTLS(t, mesh.Clusters["orders"].(*clusterv3.Cluster)).GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs() == nil {
		t.Error("agents' orders cluster lost its SDS secret")
	}
}
