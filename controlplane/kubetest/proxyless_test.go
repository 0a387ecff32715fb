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

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	consulapi "github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/xds"
	"google.golang.org/protobuf/encoding/protojson"
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
