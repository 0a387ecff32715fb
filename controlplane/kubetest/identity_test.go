//go:build kube

package kubetest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/ca"
	"github.com/meshvm/mesh/identity"
	"github.com/meshvm/mesh/wire"
)

// TestKubeServiceIdentityPolicyAndAuthz (issue 13, item 5): a Kubernetes
// service outside the default namespace, orders in shop, is the mesh
// service orders.shop with the SPIFFE ID spiffe://mesh.local/ns/shop/svc/orders:
// its own governance policy (policies.services.orders.shop in YAML, not
// orders') reaches what an ADS client receives for it, an authorization
// entry for orders.shop is pushed as RBAC to a mesh-aware proxy fronting
// it, and a join token for orders.shop gets a certificate for that ID
// from mesh control's CA, which then gets config as a node of orders.shop
// (and not of orders).
func TestKubeServiceIdentityPolicyAndAuthz(t *testing.T) {
	freshService(t, "shop", "orders")
	createService(t, "shop", "orders", corev1.ServicePort{Name: "http", Port: 80})
	createSlice(t, slice("shop", "orders", "orders-id", "http", 8080, endpoint("10.5.0.1", "z1", "", true)))

	file := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(file, []byte(`
policies:
  services:
    orders.shop:
      timeout: 3s
      connect_timeout: 1500ms
      circuit_breaker: {max_connections: 7}
    orders:
      timeout: 9s
      circuit_breaker: {max_connections: 99}
control:
  authorization:
    - service: orders.shop
      default: deny
      rules:
        - {name: from-web, action: allow, from: [web.shop, checkout]}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(config.Options{File: file})
	if err != nil {
		t.Fatal(err)
	}
	p := startPlaneFrom(t, cfg, func(k *config.Kubernetes) { k.Namespaces = []string{"shop"} })
	e := dialEDS(t, p.xdsAddr, "orders.shop")
	want(t, e, "orders.shop", "10.5.0.1:8080 HEALTHY /z1")

	// What a mesh-aware proxy in an orders pod receives (plain text:
	// control.xds.auth optional).
	plain, err := grpc.NewClient(p.xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	pod := podNode("orders-5d8f-abc", "orders.shop")
	res, err := fetchXDS(plain, pod, resourcev3.ClusterType)
	if err != nil {
		t.Fatal(err)
	}
	c := &clusterv3.Cluster{}
	if err := unmarshal(res, "orders.shop", c); err != nil {
		t.Fatal(err)
	}
	if got := c.GetConnectTimeout().AsDuration(); got != 1500*time.Millisecond {
		t.Errorf("cluster orders.shop: connect_timeout %s, want 1.5s (policies.services.orders.shop)", got)
	}
	if th := c.GetCircuitBreakers().GetThresholds(); len(th) == 0 || th[0].GetMaxConnections().GetValue() != 7 {
		t.Errorf("cluster orders.shop: circuit breaker thresholds %v, want max_connections 7", th)
	}
	res, err = fetchXDS(plain, pod, resourcev3.RouteType, wire.ServiceRoute("orders.shop"))
	if err != nil {
		t.Fatal(err)
	}
	rc := &routev3.RouteConfiguration{}
	if err := unmarshal(res, wire.ServiceRoute("orders.shop"), rc); err != nil {
		t.Fatal(err)
	}
	var timeouts []time.Duration
	for _, vh := range rc.GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			timeouts = append(timeouts, r.GetRoute().GetTimeout().AsDuration())
		}
	}
	if len(timeouts) == 0 || timeouts[len(timeouts)-1] != 3*time.Second {
		t.Errorf("route configuration orders.shop: route timeouts %v, want its own 3s last:\n%s", timeouts, protojson.Format(rc))
	}
	res, err = fetchXDS(plain, pod, resourcev3.ListenerType)
	if err != nil {
		t.Fatal(err)
	}
	l := &listenerv3.Listener{}
	if err := unmarshal(res, wire.InboundListener, l); err != nil {
		t.Fatal(err)
	}
	lj := protojson.Format(l)
	for _, w := range []string{wire.RBACFilter, `"from-web"`, `"spiffe://mesh.local/ns/shop/svc/web"`, `"spiffe://mesh.local/ns/default/svc/checkout"`} {
		if !strings.Contains(lj, w) {
			t.Errorf("inbound listener of an orders.shop node lacks %s:\n%s", w, lj)
		}
	}
	if strings.Contains(lj, `"default"`) {
		t.Errorf("default: deny, yet the inbound RBAC has a catch-all default rule:\n%s", lj)
	}

	// Its identity from mesh control's CA.
	tools, err := ca.Open(ca.Config{Dir: p.caDir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := tools.MintToken([]string{"orders.shop"}, "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := signCSR(tlsTo(t, p, nil, tok), "orders.shop")
	if err != nil {
		t.Fatalf("a join token for orders.shop asking for its certificate: %v", err)
	}
	if got := cert.Leaf.URIs[0].String(); got != "spiffe://mesh.local/ns/shop/svc/orders" {
		t.Errorf("issued %s for orders.shop, want spiffe://mesh.local/ns/shop/svc/orders", got)
	}
	if _, err := signCSR(tlsTo(t, p, nil, tok), "orders"); status.Code(err) != codes.PermissionDenied {
		t.Errorf("the orders.shop token asking for orders (ns/default): %v; want PermissionDenied", err)
	}
	bare, _, err := tools.MintToken([]string{"orders"}, "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := signCSR(tlsTo(t, p, nil, bare), "orders.shop"); status.Code(err) != codes.PermissionDenied {
		t.Errorf("a token for orders (ns/default) asking for orders.shop: %v; want PermissionDenied", err)
	}
	// The certificate gets config as a node of orders.shop, renews
	// itself, and is not orders.
	withCert := tlsTo(t, p, &cert, "")
	if res, err := fetchXDS(withCert, pod, resourcev3.ClusterType); err != nil || len(res) == 0 {
		t.Errorf("the orders.shop certificate as an orders.shop node: %v (%d clusters)", err, len(res))
	}
	if _, err := signCSR(withCert, "orders.shop"); err != nil {
		t.Errorf("renewing the orders.shop certificate with itself: %v", err)
	}
	if _, err := fetchXDS(withCert, podNode("orders-vm-1", "orders"), resourcev3.ClusterType); status.Code(err) != codes.PermissionDenied {
		t.Errorf("the orders.shop certificate as a node of orders: %v; want PermissionDenied", err)
	}
}

// freshService removes a Service and its EndpointSlices left by another
// test (the API server has no garbage collector here) and again at the
// end, creating the namespace if needed.
func freshService(t *testing.T, namespace, name string) {
	t.Helper()
	ns(t, namespace)
	clean := func() {
		if err := admin.CoreV1().Services(namespace).Delete(bg, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
		if err := admin.DiscoveryV1().EndpointSlices(namespace).DeleteCollection(bg, metav1.DeleteOptions{},
			metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + name}); err != nil {
			t.Fatal(err)
		}
	}
	clean()
	t.Cleanup(clean)
}

// podNode is the xDS node of a mesh-aware proxy (Envoy) in a pod of
// service, fronting its app on 8080.
func podNode(id, service string) *corev3.Node {
	md, _ := structpb.NewStruct(map[string]any{wire.NodeService: service, wire.NodeAppPort: 8080})
	return &corev3.Node{Id: id, Metadata: md, UserAgentName: "envoy"}
}

// fetchXDS opens an ADS stream over conn as node and returns the first
// response's resources of typeURL (names: all when empty).
func fetchXDS(conn *grpc.ClientConn, node *corev3.Node, typeURL string, names ...string) ([]*discovery.DiscoveryResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	// A refused stream's Send may see io.EOF: its status comes with Recv.
	_ = s.Send(&discovery.DiscoveryRequest{TypeUrl: typeURL, Node: node, ResourceNames: names})
	r, err := s.Recv()
	if err != nil {
		return nil, err
	}
	return []*discovery.DiscoveryResponse{r}, nil
}

// unmarshal finds the resource called name in responses into m.
func unmarshal(responses []*discovery.DiscoveryResponse, name string, m proto.Message) error {
	var names []string
	for _, r := range responses {
		for _, a := range r.GetResources() {
			if err := a.UnmarshalTo(m); err != nil {
				return err
			}
			n := ""
			switch v := m.(type) {
			case *clusterv3.Cluster:
				n = v.GetName()
			case *listenerv3.Listener:
				n = v.GetName()
			case *routev3.RouteConfiguration:
				n = v.GetName()
			}
			if n == name {
				return nil
			}
			names = append(names, n)
		}
	}
	return fmt.Errorf("no %s among %v", name, names)
}

// tlsTo dials the plane's xDS port over TLS (verifying it against its
// CA's bundle), presenting cert and token when given.
func tlsTo(t *testing.T, p *plane, cert *tls.Certificate, token string) *grpc.ClientConn {
	t.Helper()
	bundle, err := os.ReadFile(filepath.Join(p.caDir, "bundle.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(bundle)
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(cfg))}
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(token)))
	}
	conn, err := grpc.NewClient(p.xdsAddr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{wire.AuthorizationMetadata: "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return true }

// signCSR asks mesh control's CA over conn for a certificate of the mesh
// service name service (identity.ForService in the default namespace).
func signCSR(conn *grpc.ClientConn, service string) (tls.Certificate, error) {
	key, err := identity.NewKey()
	if err != nil {
		return tls.Certificate{}, err
	}
	id, err := identity.ForService(identity.DefaultTrustDomain, identity.DefaultNamespace, service)
	if err != nil {
		return tls.Certificate{}, err
	}
	csr, err := identity.NewCSR(key, id)
	if err != nil {
		return tls.Certificate{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out := &structpb.Struct{}
	if err := conn.Invoke(ctx, wire.CertificateSignMethod, wrapperspb.Bytes(csr), out); err != nil {
		return tls.Certificate{}, err
	}
	keyPEM, err := identity.EncodeKey(key)
	if err != nil {
		return tls.Certificate{}, err
	}
	pair, err := tls.X509KeyPair([]byte(out.GetFields()[wire.CertChainField].GetStringValue()), keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("issued chain: %w", err)
	}
	pair.Leaf, err = x509.ParseCertificate(pair.Certificate[0])
	return pair, err
}
