//go:build kube

package kubetest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane"
	"github.com/meshvm/mesh/controlplane/source/consul"
	ksource "github.com/meshvm/mesh/controlplane/source/kubernetes"
	"github.com/meshvm/mesh/meshtest"
)

var (
	testConsul *meshtest.Consul
	kube       *meshtest.Kube
	admin      kubernetes.Interface
	// saKubeconfig authenticates as the mesh-control service account of
	// packaging/kubernetes/rbac.yaml: what every control plane here runs as.
	saKubeconfig string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	if testConsul, err = meshtest.StartConsul(); err != nil {
		fmt.Fprintln(os.Stderr, "these tests need a real Consul:", err)
		return 1
	}
	defer testConsul.Stop()
	start := time.Now()
	if kube, err = meshtest.StartKube(); err != nil {
		fmt.Fprintln(os.Stderr, "these tests need a real kube-apiserver and etcd:", err)
		return 1
	}
	defer kube.Stop()
	fmt.Fprintf(os.Stderr, "kube-apiserver ready in %s\n", time.Since(start).Round(time.Millisecond))
	dir, _ := os.MkdirTemp("", "mesh-kubetest-")
	defer os.RemoveAll(dir)
	if err := setup(dir); err != nil {
		fmt.Fprintln(os.Stderr, "kube setup:", err)
		return 1
	}
	return m.Run()
}

// setup applies the shipped RBAC manifest as admin and writes a kubeconfig
// with a token of its service account.
func setup(dir string) error {
	ctx := context.Background()
	path, err := kube.Kubeconfig(dir, kube.AdminToken)
	if err != nil {
		return err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return err
	}
	rc.QPS, rc.Burst = 500, 1000
	if admin, err = kubernetes.NewForConfig(rc); err != nil {
		return err
	}
	manifest, err := os.ReadFile(meshtest.RepoRoot() + "/packaging/kubernetes/rbac.yaml")
	if err != nil {
		return err
	}
	for _, doc := range strings.Split(string(manifest), "\n---\n") {
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(doc), nil, nil)
		if err != nil {
			return fmt.Errorf("rbac.yaml: %w", err)
		}
		switch o := obj.(type) {
		case *corev1.Namespace:
			_, err = admin.CoreV1().Namespaces().Create(ctx, o, metav1.CreateOptions{})
		case *corev1.ServiceAccount:
			_, err = admin.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRole:
			_, err = admin.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRoleBinding:
			_, err = admin.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.RoleBinding:
			_, err = admin.RbacV1().RoleBindings(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		default:
			err = fmt.Errorf("rbac.yaml: unexpected %T", obj)
		}
		if err != nil {
			return err
		}
	}
	tok, err := admin.CoreV1().ServiceAccounts("mesh-system").CreateToken(ctx, "mesh-control",
		&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: ptr.To(int64(3600))}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("service account token: %w", err)
	}
	saDir := dir + "/sa"
	if err := os.MkdirAll(saDir, 0o700); err != nil {
		return err
	}
	saKubeconfig, err = kube.Kubeconfig(saDir, tok.Status.Token)
	return err
}

// plane is an in-process `mesh control` reading Kubernetes as the
// mesh-control service account.
type plane struct {
	*controlplane.Control
	xdsAddr, adminAddr string
	// caDir holds the plane's CA (bundle.crt; ca.Open for tokens).
	caDir string
	logs  *meshtest.SyncBuffer
}

func startPlane(t *testing.T, edit func(*config.Kubernetes)) *plane {
	t.Helper()
	cfg := config.Default()
	return startPlaneFrom(t, &cfg, edit)
}

// startPlaneFrom is startPlane from cfg (e.g. loaded from YAML): the
// addresses, Consul, the CA's directory (a fresh one unless cfg names
// one) and the kubeconfig are the test's.
func startPlaneFrom(t *testing.T, cfg *config.Config, edit func(*config.Kubernetes)) *plane {
	t.Helper()
	if cfg.Control.CA.Dir == config.Default().Control.CA.Dir {
		cfg.Control.CA.Dir = t.TempDir() + "/ca"
	}
	cfg.Consul.Addr = testConsul.Addr
	cfg.Control.XDSAddr = "127.0.0.1:" + strconv.Itoa(meshtest.FreePort("127.0.0.1"))
	cfg.Control.AdminAddr = "127.0.0.1:" + strconv.Itoa(meshtest.FreePort("127.0.0.1"))
	cfg.Control.Debounce = 20 * time.Millisecond
	cfg.Control.Kubernetes.Kubeconfig = saKubeconfig
	if edit != nil {
		edit(&cfg.Control.Kubernetes)
	}
	if err := cfg.Validate(config.RoleControl); err != nil {
		t.Fatal(err)
	}
	logs := &meshtest.SyncBuffer{}
	log := zerolog.New(io.MultiWriter(zerolog.NewTestWriter(t), logs)).Level(zerolog.InfoLevel)
	c, err := controlplane.New(*cfg, log, controlplane.Options{
		Consul:     consul.Options{Wait: 5 * time.Second, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond},
		FirstWait:  10 * time.Second,
		Kubernetes: ksource.Options{Probe: 500 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("control plane: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("control plane did not stop in 15s")
		}
	})
	p := &plane{Control: c, xdsAddr: cfg.Control.XDSAddr, adminAddr: cfg.Control.AdminAddr, caDir: cfg.Control.CA.Dir, logs: logs}
	meshtest.Eventually(t, 30*time.Second, func() error {
		if !c.Ready() {
			return fmt.Errorf("not ready")
		}
		return nil
	})
	return p
}

// metric returns the value of the first /metrics line starting with name.
func (p *plane) metric(t *testing.T, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + p.adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, name+" ") {
			v, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(line, name)), 64)
			return v
		}
	}
	return -1
}

// eds is an ADS client subscribed to the load assignments of some
// clusters; it ACKs everything and keeps the latest of each.
type eds struct {
	mu      sync.Mutex
	latest  map[string]*endpointv3.ClusterLoadAssignment
	updated chan string
	pushes  int
}

func dialEDS(t *testing.T, addr string, clusters ...string) *eds {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); conn.Close() })
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: "kubetest-" + t.Name(), UserAgentName: "mesh-test"}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType, ResourceNames: clusters}); err != nil {
		t.Fatal(err)
	}
	e := &eds{latest: map[string]*endpointv3.ClusterLoadAssignment{}, updated: make(chan string, 10000)}
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				return
			}
			e.mu.Lock()
			e.pushes++
			for _, a := range r.GetResources() {
				cla := &endpointv3.ClusterLoadAssignment{}
				if a.UnmarshalTo(cla) == nil {
					e.latest[cla.GetClusterName()] = cla
					select {
					case e.updated <- cla.GetClusterName():
					default:
					}
				}
			}
			e.mu.Unlock()
			_ = stream.Send(&discovery.DiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResourceNames: clusters, VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()})
		}
	}()
	return e
}

// endpoints returns "ip:port health region/zone" for a cluster, sorted.
func (e *eds) endpoints(cluster string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, l := range e.latest[cluster].GetEndpoints() {
		for _, ep := range l.GetLbEndpoints() {
			sa := ep.GetEndpoint().GetAddress().GetSocketAddress()
			out = append(out, fmt.Sprintf("%s:%d %s %s/%s", sa.GetAddress(), sa.GetPortValue(), ep.GetHealthStatus(),
				l.GetLocality().GetRegion(), l.GetLocality().GetZone()))
		}
	}
	sortStrings(out)
	return out
}

func (e *eds) pushCount() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.pushes
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// objects for the tests

// ns creates a namespace, or finds it made by an earlier test.
func ns(t *testing.T, name string) {
	t.Helper()
	_, err := admin.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

func createService(t *testing.T, namespace, name string, ports ...corev1.ServicePort) {
	t.Helper()
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}, Spec: corev1.ServiceSpec{Ports: ports}}
	if _, err := admin.CoreV1().Services(namespace).Create(context.Background(), s, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func endpoint(ip, zone, node string, ready bool) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready)}}
	if zone != "" {
		e.Zone = ptr.To(zone)
	}
	if node != "" {
		e.NodeName = ptr.To(node)
	}
	return e
}

func slice(namespace, service, name, port string, num int32, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To(port), Port: ptr.To(num), Protocol: ptr.To(corev1.ProtocolTCP)}},
		Endpoints:   eps,
	}
}

func createSlice(t *testing.T, sl *discoveryv1.EndpointSlice) *discoveryv1.EndpointSlice {
	t.Helper()
	out, err := admin.DiscoveryV1().EndpointSlices(sl.Namespace).Create(context.Background(), sl, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
