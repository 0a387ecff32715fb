//go:build kube

package kubetest

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	consulapi "github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/xds"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"gopkg.in/yaml.v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/wire"
)

// TestKubeProxylessPodCallsBoth (issue 13, item 6): a gRPC proxyless
// client with the bootstrap docs/kubernetes.md gives pods (its server_uri
// pointed at this plane) calls a VM service from Consul, xds:///payments,
// a real gRPC server; for the Kubernetes service xds:///orders.shop a
// gRPC-like ADS client with the bootstrap's node gets the listener, route,
// cluster and endpoint gRPC resolves it with (the API server refuses
// loopback endpoints, and tests dial nothing else). The plane reads only
// Services with control.kubernetes.label_selector's label: an unlabelled
// one never reaches the model.
func TestKubeProxylessPodCallsBoth(t *testing.T) {
	vmHost := meshtest.LoopbackHost(132)
	vmPort := greeter(t, vmHost, "vm")
	freshService(t, "shop", "orders")
	freshService(t, "shop", "hidden")
	labelled := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "orders", Labels: map[string]string{"mesh.meshvm.io/expose": "true"}},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "grpc", Port: 9000}}}}
	if _, err := admin.CoreV1().Services("shop").Create(bg, labelled, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	createSlice(t, slice("shop", "orders", "orders-grpc", "grpc", 8443, endpoint("10.6.0.1", "z1", "", true)))
	createService(t, "shop", "hidden", corev1.ServicePort{Name: "grpc", Port: 9000})
	createSlice(t, slice("shop", "hidden", "hidden-grpc", "grpc", 8443, endpoint("10.6.0.2", "z1", "", true)))
	register(t, consulapi.AgentServiceRegistration{ID: "payments-vm-1", Name: "payments", Address: vmHost, Port: vmPort,
		Meta: map[string]string{"mesh_zone": "vm-a"}})

	p := startPlane(t, func(k *config.Kubernetes) {
		k.Namespaces = []string{"shop"}
		k.LabelSelector = "mesh.meshvm.io/expose=true"
	})
	meshtest.Eventually(t, 15*time.Second, func() error {
		if p.Model().Service("orders.shop") == nil || p.Model().Service("payments") == nil {
			return fmt.Errorf("orders.shop or payments not in the model yet")
		}
		return nil
	})
	if s := p.Model().Service("hidden.shop"); s != nil {
		t.Errorf("a Service without the selected label reached the model: %+v", s)
	}

	bootstrap := docsBootstrap(t, p.xdsAddr)
	resolver, err := xds.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		t.Fatalf("the bootstrap of docs/kubernetes.md: %v\n%s", err, bootstrap)
	}
	conn, err := grpc.NewClient("xds:///payments", grpc.WithResolvers(resolver), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	meshtest.Eventually(t, 30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "who-vm"})
		if err != nil {
			return fmt.Errorf("xds:///payments: %w", err)
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("xds:///payments: status %v", resp.GetStatus())
		}
		return nil
	})

	// What gRPC resolves xds:///orders.shop with, as the bootstrap's node.
	var boot struct {
		Node struct {
			ID       string `json:"id"`
			Locality struct {
				Zone string `json:"zone"`
			} `json:"locality"`
		} `json:"node"`
	}
	if err := json.Unmarshal([]byte(bootstrap), &boot); err != nil {
		t.Fatal(err)
	}
	plain, err := grpc.NewClient(p.xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	node := &corev3.Node{Id: boot.Node.ID, UserAgentName: "gRPC Go", Locality: &corev3.Locality{Zone: boot.Node.Locality.Zone}}
	lres, err := fetchXDS(plain, node, resourcev3.ListenerType, "orders.shop")
	if err != nil {
		t.Fatal(err)
	}
	l := &listenerv3.Listener{}
	if err := unmarshal(lres, "orders.shop", l); err != nil {
		t.Fatal(err)
	}
	if l.GetApiListener() == nil {
		t.Fatalf("listener orders.shop for a gRPC client has no api_listener: %v", l)
	}
	rres, err := fetchXDS(plain, node, resourcev3.RouteType, wire.ServiceRoute("orders.shop"))
	if err != nil {
		t.Fatal(err)
	}
	rc := &routev3.RouteConfiguration{}
	if err := unmarshal(rres, wire.ServiceRoute("orders.shop"), rc); err != nil {
		t.Fatal(err)
	}
	if got := routeClusters(rc); len(got) == 0 || got[len(got)-1] != "orders.shop" {
		t.Errorf("route configuration orders.shop routes to %v, want cluster orders.shop:\n%s", got, protojson.Format(rc))
	}
	cres, err := fetchXDS(plain, node, resourcev3.ClusterType)
	if err != nil {
		t.Fatal(err)
	}
	if err := unmarshal(cres, "orders.shop", &clusterv3.Cluster{}); err != nil {
		t.Error(err)
	}
	if err := unmarshal(cres, "hidden.shop", &clusterv3.Cluster{}); err == nil {
		t.Error("a gRPC client got a cluster for the unlabelled hidden.shop")
	}
	e := dialEDS(t, p.xdsAddr, "orders.shop")
	want(t, e, "orders.shop", "10.6.0.1:8443 HEALTHY /z1")
}

// docsBootstrap is the gRPC proxyless bootstrap of docs/kubernetes.md with
// its server_uri pointed at addr.
func docsBootstrap(t *testing.T, addr string) string {
	t.Helper()
	doc, err := os.ReadFile(meshtest.RepoRoot() + "/docs/kubernetes.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "gRPC proxyless pod")
	if ok {
		_, rest, ok = strings.Cut(rest, "```json\n")
	}
	block, _, closed := strings.Cut(rest, "```")
	const uri = "mesh-control.mesh-system.svc.cluster.local:18000"
	if !ok || !closed || !strings.Contains(block, uri) {
		t.Fatalf("docs/kubernetes.md has no gRPC proxyless bootstrap (a json block after \"gRPC proxyless pod\" with server_uri %s)", uri)
	}
	return strings.ReplaceAll(block, uri, addr)
}

// greeter serves gRPC health on host, reporting who-<name> as serving.
func greeter(t *testing.T, host, name string) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	h := health.NewServer()
	h.SetServingStatus("who-"+name, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(g, h)
	go func() { _ = g.Serve(l) }()
	t.Cleanup(g.Stop)
	return l.Addr().(*net.TCPAddr).Port
}

// the Envoy bootstrap's typed_extension_protocol_options name this type.
var _ = &httpv3.HttpProtocolOptions{}

// routeClusters are the clusters of rc's routes, in order.
func routeClusters(rc *routev3.RouteConfiguration) []string {
	var out []string
	for _, vh := range rc.GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			out = append(out, r.GetRoute().GetCluster())
		}
	}
	return out
}

// TestKubeEnvoyBootstrapDoc (issue 13, item 6): the Envoy bootstrap of
// docs/kubernetes.md is a valid Envoy v3 Bootstrap (strict field names,
// its typed options resolved) whose ADS cluster is mesh_control at
// mesh-control.mesh-system:18000, and its node gets orders.shop's cluster
// and its inbound listener from this plane.
func TestKubeEnvoyBootstrapDoc(t *testing.T) {
	freshService(t, "shop", "orders")
	createService(t, "shop", "orders", corev1.ServicePort{Name: "http", Port: 80})
	createSlice(t, slice("shop", "orders", "orders-envoy", "http", 8080, endpoint("10.8.0.1", "z1", "", true)))
	doc, err := os.ReadFile(meshtest.RepoRoot() + "/docs/kubernetes.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "Envoy sidecar (or gateway) bootstrap:")
	if ok {
		_, rest, ok = strings.Cut(rest, "```yaml\n")
	}
	block, _, closed := strings.Cut(rest, "```")
	if !ok || !closed {
		t.Fatal(`docs/kubernetes.md has no Envoy bootstrap (a yaml block after "Envoy sidecar (or gateway) bootstrap:")`)
	}
	var tree map[string]any
	if err := yaml.Unmarshal([]byte(block), &tree); err != nil {
		t.Fatalf("the Envoy bootstrap is not YAML: %v", err)
	}
	js, err := json.Marshal(tree)
	if err != nil {
		t.Fatal(err)
	}
	b := &bootstrapv3.Bootstrap{}
	if err := protojson.Unmarshal(js, b); err != nil {
		t.Fatalf("the Envoy bootstrap of docs/kubernetes.md is not an Envoy v3 Bootstrap: %v", err)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatalf("the Envoy bootstrap fails Envoy's validation rules: %v", err)
	}
	if g := b.GetDynamicResources().GetAdsConfig().GetGrpcServices(); len(g) != 1 || g[0].GetEnvoyGrpc().GetClusterName() != "mesh_control" {
		t.Errorf("ads_config grpc_services %v, want the mesh_control cluster", g)
	}
	var addr string
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() == "mesh_control" {
			sa := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
			addr = fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue())
		}
	}
	if addr != "mesh-control.mesh-system.svc.cluster.local:18000" {
		t.Errorf("mesh_control cluster at %q", addr)
	}

	p := startPlane(t, func(k *config.Kubernetes) { k.Namespaces = []string{"shop"} })
	plain, err := grpc.NewClient(p.xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	node := proto.Clone(b.GetNode()).(*corev3.Node)
	node.UserAgentName = "envoy"
	node.Metadata.Fields[wire.NodeAppPort] = structpb.NewNumberValue(8080)
	meshtest.Eventually(t, 15*time.Second, func() error {
		res, err := fetchXDS(plain, node, resourcev3.ClusterType)
		if err != nil {
			return err
		}
		return unmarshal(res, "orders.shop", &clusterv3.Cluster{})
	})
	res, err := fetchXDS(plain, node, resourcev3.ListenerType)
	if err != nil {
		t.Fatal(err)
	}
	if err := unmarshal(res, wire.InboundListener, &listenerv3.Listener{}); err != nil {
		t.Errorf("the bootstrap's node (service %s, app_port 8080): %v", node.GetMetadata().GetFields()[wire.NodeService].GetStringValue(), err)
	}
}
