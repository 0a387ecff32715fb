package xdsconf_test

import (
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshvm/mesh/dataplane/xdsconf"
	"github.com/meshvm/mesh/wire"
	"github.com/meshvm/mesh/wire/wiretest"
)

// The control plane's mTLS resources become the table's modes and
// upstream identities.
func TestMTLSFromGolden(t *testing.T) {
	for _, tc := range []struct{ golden, mode string }{
		{wiretest.AgentMTLSStrict, wire.MTLSStrict},
		{wiretest.AgentMTLSPermissive, wire.MTLSPermissive},
		{wiretest.AgentPayments, ""},
	} {
		tab, err := xdsconf.Translate(wiretest.Load(t, tc.golden))
		if err != nil {
			t.Fatalf("%s: %v", tc.golden, err)
		}
		if tab.Inbound.MTLSMode != tc.mode {
			t.Errorf("%s: inbound mode %q, want %q", tc.golden, tab.Inbound.MTLSMode, tc.mode)
		}
		if tc.mode == "" {
			for name, s := range tab.Services {
				if s.MTLSIdentity != "" {
					t.Errorf("%s: %s has identity %s without mTLS", tc.golden, name, s.MTLSIdentity)
				}
			}
			continue
		}
		for name, want := range map[string]string{
			"orders":   "spiffe://mesh.local/ns/default/svc/orders",
			"payments": "spiffe://mesh.local/ns/default/svc/payments",
			"search":   "",
		} {
			if got := tab.Services[name].MTLSIdentity; got != want {
				t.Errorf("%s: %s identity %q, want %q", tc.golden, name, got, want)
			}
		}
		if m := tab.Services["orders"].MTLSMode; m != wire.MTLSStrict {
			t.Errorf("%s: orders mode %q, want strict", tc.golden, m)
		}
	}
}

// A TLS context the agent cannot honour is refused with its reason.
func TestMTLSRefused(t *testing.T) {
	// An UpstreamTlsContext without a SAN to verify the peer against.
	res := wiretest.Load(t, wiretest.AgentMTLSStrict)
	c := proto.Clone(res.Clusters["orders"]).(*clusterv3.Cluster)
	empty, _ := anypb.New(&tlsv3.UpstreamTlsContext{})
	c.TransportSocket.ConfigType = &corev3.TransportSocket_TypedConfig{TypedConfig: empty}
	res.Clusters["orders"] = c
	if _, err := xdsconf.Translate(res); err == nil || !strings.Contains(err.Error(), "match_typed_subject_alt_names") {
		t.Fatalf("UpstreamTlsContext without a SAN: %v", err)
	}
	// A listener whose metadata says strict but has a plaintext chain.
	res = wiretest.Load(t, wiretest.AgentMTLSStrict)
	l := proto.Clone(res.Listeners[wire.InboundListener]).(*listenerv3.Listener)
	l.FilterChains = append(l.FilterChains, proto.Clone(l.FilterChains[0]).(*listenerv3.FilterChain))
	l.FilterChains[1].TransportSocket = nil
	res.Listeners[wire.InboundListener] = l
	_, err := xdsconf.Translate(res)
	if err == nil || !strings.Contains(err.Error(), "filter chains say") {
		t.Fatalf("listener whose metadata says strict with a plaintext chain: %v", err)
	}
}
