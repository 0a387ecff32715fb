package wire_test

import (
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/meshvm/mesh/wire"
	"github.com/meshvm/mesh/wire/wiretest"
	"github.com/meshvm/mesh/xdsclient"
)

func names[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// js is m as compact protobuf JSON (camelCase names).
func js(t *testing.T, m proto.Message) string {
	t.Helper()
	b, err := protojson.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	// protojson may add spaces; the checks look for compact pairs.
	return strings.NewReplacer(`": `, `":`, `, "`, `,"`).Replace(string(b))
}

func resources(r xdsclient.Resources) wiretest.Resources {
	out := wiretest.Resources{Clusters: map[string]proto.Message{}, Endpoints: map[string]proto.Message{}, Listeners: map[string]proto.Message{}, Routes: map[string]proto.Message{}}
	for k, v := range r.Clusters {
		out.Clusters[k] = v
	}
	for k, v := range r.Endpoints {
		out.Endpoints[k] = v
	}
	for k, v := range r.Listeners {
		out.Listeners[k] = v
	}
	for k, v := range r.Routes {
		out.Routes[k] = v
	}
	return out
}

// TestGoldenAgentResourcesUseTheContract: what the control plane sends an
// agent (the golden resources) is named and keyed as this package says.
func TestGoldenAgentResourcesUseTheContract(t *testing.T) {
	r := wiretest.Load(t, wiretest.AgentPayments)
	if got, want := names(r.Listeners), slices.Sorted(slices.Values(wire.AgentListeners())); !slices.Equal(got, want) {
		t.Errorf("listeners %v, want %v", got, want)
	}
	// The outbound route configuration, and one per service for agents
	// subscribed service by service.
	if got, want := names(r.Routes), []string{wire.OutboundRoute, wire.ServiceRoute("orders"), wire.ServiceRoute("payments"), wire.ServiceRoute("search")}; !slices.Equal(got, want) {
		t.Errorf("route configurations %v, want %v", got, want)
	}
	if _, ok := r.Clusters[wire.LocalAppCluster]; !ok {
		t.Errorf("clusters %v lack %s", names(r.Clusters), wire.LocalAppCluster)
	}
	for _, tc := range []struct {
		name string
		json string
		want []string
	}{
		{"outbound listener", js(t, r.Listeners[wire.OutboundListener]), []string{wire.HTTPConnectionManager, wire.RouterFilter, `"routeConfigName":"` + wire.OutboundRoute + `"`}},
		{"inbound listener", js(t, r.Listeners[wire.InboundListener]), []string{wire.HTTPConnectionManager, wire.LocalRateLimitFilter, wire.RouterFilter,
			`"cluster":"` + wire.LocalAppCluster + `"`, `"key":"` + wire.ReasonHeader + `","value":"` + wire.ReasonRateLimited + `"`}},
		{"error breaker metadata", js(t, r.Clusters["payments"].GetMetadata()), []string{`"` + wire.GovernanceNamespace + `"`,
			`"` + wire.GovErrorPercentThreshold + `":25`, `"` + wire.GovRequestVolumeThreshold + `":20`, `"` + wire.GovSleepWindow + `":"5s"`}},
		{"random load balancer", js(t, r.Clusters["search"].GetLoadBalancingPolicy()), []string{wire.LBRandom, wire.LBRoundRobin}},
		{"retry predicate", js(t, r.Routes[wire.OutboundRoute]), []string{wire.PreviousHostsPredicate}},
		{"endpoint metadata", js(t, r.Endpoints["orders"]), []string{`"` + wire.EndpointNamespace + `":{`, `"` + wire.EndpointID + `":"orders-1"`,
			`"` + wire.EndpointNode + `":"vm-1"`, `"` + wire.EndpointMeta + `":{"` + wire.MetaAppPort + `":"8080"`, `"` + wire.EndpointHostTags + `":["pci"]`,
			`"` + wire.EndpointLabels + `":{"rack":"r1"}`, `"` + wire.EndpointTenant + `":"shop"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, w := range tc.want {
				if !strings.Contains(tc.json, w) {
					t.Errorf("no %s in %s", w, tc.json)
				}
			}
		})
	}
	if c := r.Clusters["orders"]; c.GetType() != clusterv3.Cluster_EDS {
		t.Errorf("service cluster type %s, want EDS", c.GetType())
	}
}

// TestGoldenProxylessResources: a gRPC proxyless client gets a listener and
// a route configuration named after each service, none of the agent's.
func TestGoldenProxylessResources(t *testing.T) {
	r := wiretest.Load(t, wiretest.GRPCProxyless)
	want := []string{"orders", "payments", "search"}
	if got := names(r.Listeners); !slices.Equal(got, want) {
		t.Errorf("listeners %v, want %v", got, want)
	}
	if got := names(r.Routes); !slices.Equal(got, want) {
		t.Errorf("route configurations %v, want %v", got, want)
	}
	if _, ok := r.Clusters[wire.LocalAppCluster]; ok {
		t.Error("a proxyless client got the local app cluster")
	}
}

// TestGoldenRoundTrip: the golden format decodes to what it was encoded
// from.
func TestGoldenRoundTrip(t *testing.T) {
	for _, name := range []string{wiretest.AgentPayments, wiretest.AgentClientOnly, wiretest.GRPCProxyless, wiretest.AgentTuned,
		wiretest.AgentMTLSStrict, wiretest.AgentMTLSPermissive, wiretest.Gateway, wiretest.AgentAuthz, wiretest.AgentAuthzTCP} {
		t.Run(name, func(t *testing.T) {
			r := wiretest.Load(t, name)
			b, err := wiretest.Encode(resources(r))
			if err != nil {
				t.Fatal(err)
			}
			again, err := wiretest.Decode(b)
			if err != nil {
				t.Fatal(err)
			}
			b2, _ := wiretest.Encode(resources(again))
			if string(b) != string(b2) {
				t.Error("encode(decode(encode(x))) differs from encode(x)")
			}
		})
	}
}

func TestParseAppProtocol(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want wire.AppProtocol
		err  bool
	}{
		{"", wire.ProtocolAuto, false},
		{"auto", wire.ProtocolAuto, false},
		{" HTTP1 ", wire.ProtocolHTTP1, false},
		{"http2", wire.ProtocolHTTP2, false},
		{"grpc", wire.ProtocolGRPC, false},
		{"tcp", wire.ProtocolTCP, false},
		{"h2c", "", true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := wire.ParseAppProtocol(tc.in)
			if (err != nil) != tc.err || got != tc.want {
				t.Errorf("ParseAppProtocol(%q) = %q, %v; want %q, error %v", tc.in, got, err, tc.want, tc.err)
			}
			if err != nil && !strings.Contains(err.Error(), tc.in) {
				t.Errorf("error %q does not name the input", err)
			}
		})
	}
	if wire.ProtocolTCP.HTTP() || !wire.ProtocolGRPC.HTTP() {
		t.Error("HTTP(): only tcp is not carried over HTTP")
	}
}

// TestGoldenSecretsUseTheContract: the SDS secrets the control plane sends
// are named as this package says, and the workload certificate carries
// the chain but never a private key.
func TestGoldenSecretsUseTheContract(t *testing.T) {
	s := wiretest.LoadSecrets(t)
	if got, want := names(s), []string{wire.SecretTrustBundle, wire.SecretWorkloadCert}; !slices.Equal(got, want) {
		t.Fatalf("secrets %v, want %v", got, want)
	}
	if len(s[wire.SecretTrustBundle].GetValidationContext().GetTrustedCa().GetInlineBytes()) == 0 {
		t.Error("the trust bundle secret carries no roots")
	}
	tc := s[wire.SecretWorkloadCert].GetTlsCertificate()
	if len(tc.GetCertificateChain().GetInlineBytes()) == 0 {
		t.Error("the workload secret carries no chain")
	}
	if tc.GetPrivateKey() != nil || tc.GetPrivateKeyProvider() != nil {
		t.Error("the workload secret carries a private key: it must never leave the node")
	}
}
