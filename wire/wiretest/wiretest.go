// Package wiretest reads and writes the golden resources in wire/testdata:
// translations by the control plane of a realistic model and of a tuned
// one, for a few kinds of node. controlplane/translate writes them (go test
// ./controlplane/translate -update) and checks its output against them;
// the agent's tests read them as what a control plane sends. The format
// is JSON: {"clusters"|"endpoints"|"listeners"|"routes": {name: resource
// as protobuf JSON with proto field names}}.
package wiretest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	// Typed configs the golden resources carry, so their Any values resolve.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/random/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/round_robin/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/meshvm/mesh/xdsclient"
)

// The golden node kinds (file names without .golden.json).
const (
	// AgentPayments is an agent fronting payments (app port 9090), whose
	// policy sets a rate limit.
	AgentPayments = "agent-payments"
	// AgentClientOnly is an agent that fronts no service.
	AgentClientOnly = "agent-client-only"
	// GRPCProxyless is a gRPC proxyless client.
	GRPCProxyless = "grpc-proxyless"
	// AgentTuned is an agent fronting pay (app port 8080) in a second
	// model whose policies set every knob to a value that is no default:
	// orders (least_request, locality aware, every breaker, retry and
	// outlier knob) and pay (random, no error breaker, a rate limit).
	AgentTuned = "agent-tuned"
	// AgentMTLSStrict is an agent fronting orders, strict mTLS
	// (control.services.orders.mtls_mode), in a model where orders and
	// payments agents register mesh_mtls and one of search's does not:
	// its inbound Listener has one TLS filter chain; orders' and
	// payments' Clusters carry an UpstreamTlsContext, search's none.
	AgentMTLSStrict = "agent-mtls-strict"
	// AgentMTLSPermissive is an agent fronting payments in the same
	// model, permissive (the default mode): TLS and raw_buffer chains.
	AgentMTLSPermissive = "agent-mtls-permissive"
	// AgentAuthz is an agent fronting orders (an HTTP app) whose
	// control.authorization entry has deny and allow rules by caller,
	// method, path and header under default deny: RBAC filters DENY then
	// ALLOW on its inbound listener.
	AgentAuthz = "agent-authz"
	// AgentAuthzTCP is an agent fronting cache (a tcp app) with L4 rules:
	// its inbound listener is a TCP proxy after RBAC network filters.
	AgentAuthzTCP = "agent-authz-tcp"
	// AgentTraffic is an agent fronting no service in a model with
	// traffic management (controlplane/translate/traffic_test.go):
	// orders has subsets v1 (2 instances, the default subset) and v2
	// (1), is ring-hashed on the header x-user, and has routes in order:
	// testers (header x-canary: 1 → orders/v2), canary (path_prefix /api:
	// 90 orders/v1, 10 orders/v2, 5% mirrored to orders/v2, timeout 2s,
	// 1 retry on 5xx), fault (header x-fault present: 1s delay to 10%,
	// abort 503 to 5%, only with x-fault), grpc-fault (path_prefix
	// /grpc.health.v1.Health/: abort grpc_status 14 to 50%), legacy
	// (path /old: redirect to /new, 302), health (path /mesh-health:
	// direct response 200 "ok"), pay (path_regex ^/pay/(.*)$, POST, query
	// dry_run: to payments with a regex rewrite to /\1 and header
	// changes), then the catch-all to orders/v1. payments is Maglev on
	// source_ip; search has a subset "canary" (tag canary) with a policy
	// override (timeout 1s, least_request).
	AgentTraffic = "agent-traffic"
	// GRPCTraffic is a gRPC proxyless client in the same model: orders'
	// route configuration "orders" has the same routes (gRPC's forms),
	// and payments' cluster is RING_HASH (gRPC has no Maglev).
	GRPCTraffic = "grpc-traffic"
)

// Resources are a node's resources by type and name.
type Resources struct {
	Clusters, Endpoints, Listeners, Routes map[string]proto.Message
}

// Path is the golden file of a node kind.
func Path(name string) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "testdata", name+".golden.json")
}

// Encode writes r in the golden format: stable bytes for equal resources.
func Encode(r Resources) ([]byte, error) {
	out := map[string]map[string]json.RawMessage{}
	for kind, set := range map[string]map[string]proto.Message{"clusters": r.Clusters, "endpoints": r.Endpoints, "listeners": r.Listeners, "routes": r.Routes} {
		out[kind] = map[string]json.RawMessage{}
		for name, m := range set {
			b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
			if err != nil {
				return nil, fmt.Errorf("encode %s %q: %w", kind, name, err)
			}
			var v any
			if err := json.Unmarshal(b, &v); err != nil {
				return nil, fmt.Errorf("encode %s %q: %w", kind, name, err)
			}
			// Re-encode for a stable layout (protojson randomises spaces).
			b, _ = json.Marshal(v)
			out[kind][name] = b
		}
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// Decode reads the golden format into what an agent's xDS client holds.
// Every resource type gets version "golden".
func Decode(data []byte) (xdsclient.Resources, error) {
	var in map[string]map[string]json.RawMessage
	if err := json.Unmarshal(data, &in); err != nil {
		return xdsclient.Resources{}, fmt.Errorf("decode golden resources: %w", err)
	}
	r := xdsclient.Resources{
		Listeners: map[string]*listenerv3.Listener{}, Routes: map[string]*routev3.RouteConfiguration{},
		Clusters: map[string]*clusterv3.Cluster{}, Endpoints: map[string]*endpointv3.ClusterLoadAssignment{},
		Versions: map[string]string{
			resource.ClusterType: "golden", resource.EndpointType: "golden",
			resource.ListenerType: "golden", resource.RouteType: "golden",
		},
	}
	for kind, set := range in {
		for name, raw := range set {
			var m proto.Message
			switch kind {
			case "clusters":
				c := &clusterv3.Cluster{}
				r.Clusters[name], m = c, c
			case "endpoints":
				e := &endpointv3.ClusterLoadAssignment{}
				r.Endpoints[name], m = e, e
			case "listeners":
				l := &listenerv3.Listener{}
				r.Listeners[name], m = l, l
			case "routes":
				rc := &routev3.RouteConfiguration{}
				r.Routes[name], m = rc, rc
			default:
				return xdsclient.Resources{}, fmt.Errorf("decode golden resources: unknown kind %q", kind)
			}
			if err := protojson.Unmarshal(raw, m); err != nil {
				return xdsclient.Resources{}, fmt.Errorf("decode golden %s %q: %w", kind, name, err)
			}
		}
	}
	return r, nil
}

// Load reads the golden resources of a node kind; every call returns
// fresh messages, which the caller may change.
func Load(t testing.TB, name string) xdsclient.Resources {
	t.Helper()
	data, err := os.ReadFile(Path(name))
	if err != nil {
		t.Fatalf("%v (written by go test ./controlplane/translate -update)", err)
	}
	r, err := Decode(data)
	if err != nil {
		t.Fatalf("%s: %v", Path(name), err)
	}
	return r
}

// Secrets is the golden file of a node's SDS secrets (EncodeSecrets).
const Secrets = "secrets"

// EncodeSecrets writes SDS secrets in the golden format ({"secrets":
// {name: Secret}}).
func EncodeSecrets(set map[string]proto.Message) ([]byte, error) {
	out := map[string]map[string]json.RawMessage{"secrets": {}}
	for name, m := range set {
		b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
		if err != nil {
			return nil, fmt.Errorf("encode secret %q: %w", name, err)
		}
		var v any
		if err := json.Unmarshal(b, &v); err != nil {
			return nil, fmt.Errorf("encode secret %q: %w", name, err)
		}
		b, _ = json.Marshal(v)
		out["secrets"][name] = b
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// LoadSecrets reads the golden SDS secrets.
func LoadSecrets(t testing.TB) map[string]*tlsv3.Secret {
	t.Helper()
	data, err := os.ReadFile(Path(Secrets))
	if err != nil {
		t.Fatalf("%v (written by go test ./controlplane/translate -update)", err)
	}
	var in map[string]map[string]json.RawMessage
	if err := json.Unmarshal(data, &in); err != nil {
		t.Fatalf("decode golden secrets: %v", err)
	}
	out := map[string]*tlsv3.Secret{}
	for name, raw := range in["secrets"] {
		s := &tlsv3.Secret{}
		if err := protojson.Unmarshal(raw, s); err != nil {
			t.Fatalf("decode golden secret %q: %v", name, err)
		}
		out[name] = s
	}
	return out
}
