//go:build kube

package kubetest

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	consulapi "github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/meshtest"
)

var bg = context.Background()

func register(t *testing.T, r consulapi.AgentServiceRegistration) {
	t.Helper()
	if err := testConsul.Client.Agent().ServiceRegister(&r); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = testConsul.Client.Agent().ServiceDeregister(r.ID) })
}

func want(t *testing.T, e *eds, cluster string, expect ...string) {
	t.Helper()
	meshtest.Eventually(t, 15*time.Second, func() error {
		if got := e.endpoints(cluster); !slices.Equal(got, expect) {
			return fmt.Errorf("%s: %v, want %v", cluster, got, expect)
		}
		return nil
	})
}

func TestKubeServicesReachADS(t *testing.T) {
	ns(t, "shop")
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1", Labels: map[string]string{corev1.LabelTopologyRegion: "eu", corev1.LabelTopologyZone: "eu-a"}}}
	if _, err := admin.CoreV1().Nodes().Create(bg, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	createService(t, "shop", "orders", corev1.ServicePort{Name: "http", Port: 80})
	sl := createSlice(t, slice("shop", "orders", "orders-abc", "http", 8080,
		endpoint("10.1.0.1", "", "node-1", true), endpoint("10.1.0.2", "eu-b", "", true)))
	p := startPlane(t, func(k *config.Kubernetes) { k.DefaultNamespace = "shop" })
	e := dialEDS(t, p.xdsAddr, "orders.shop", "orders")
	want(t, e, "orders.shop", "10.1.0.1:8080 HEALTHY eu/eu-a", "10.1.0.2:8080 HEALTHY /eu-b")
	want(t, e, "orders", "10.1.0.1:8080 HEALTHY eu/eu-a", "10.1.0.2:8080 HEALTHY /eu-b")
	// A healthy API server is no error: not even the streaming list an
	// API server without the WatchList feature refuses (client-go falls
	// back to list and watch).
	if v := p.metric(t, `mesh_control_source_errors_total{source="kubernetes"}`); v > 0 {
		t.Errorf("mesh_control_source_errors_total{source=\"kubernetes\"} = %v with the API server up; want 0", v)
	}
	if strings.Contains(p.logs.String(), "kubernetes api failing") {
		t.Errorf("the control plane logged a failing API server while it was up")
	}
	if s := p.Model().Service("orders.shop"); s == nil || s.Endpoints[0].Identity != "ns/shop/svc/orders" || s.Endpoints[0].Namespace != "shop" {
		t.Fatalf("identity not recorded: %+v", s)
	}

	// Not ready: out of the routable set within 1 s.
	sl.Endpoints[1].Conditions.Ready = ptr.To(false)
	changed := time.Now()
	if _, err := admin.DiscoveryV1().EndpointSlices("shop").Update(bg, sl, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	want(t, e, "orders.shop", "10.1.0.1:8080 HEALTHY eu/eu-a")
	if took := time.Since(changed); took > time.Second {
		t.Errorf("a not-ready endpoint took %s to leave the ADS client's set; want < 1s", took)
	} else {
		t.Logf("not-ready endpoint gone from the ADS client in %s", took)
	}
	// Terminating but serving: draining.
	sl, _ = admin.DiscoveryV1().EndpointSlices("shop").Get(bg, sl.Name, metav1.GetOptions{})
	sl.Endpoints[1].Conditions = discoveryv1.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)}
	if _, err := admin.DiscoveryV1().EndpointSlices("shop").Update(bg, sl, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	want(t, e, "orders.shop", "10.1.0.1:8080 HEALTHY eu/eu-a", "10.1.0.2:8080 DRAINING /eu-b")

	// An ADS client's clusters, with locality in their load assignments
	// above.
	plain, err := grpc.NewClient(p.xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	cds := func() ([]*discovery.DiscoveryResponse, error) {
		return fetchXDS(plain, &corev3.Node{Id: "kubetest-cds", UserAgentName: "envoy"}, resourcev3.ClusterType)
	}
	res, err := cds()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"orders.shop", "orders"} {
		if err := unmarshal(res, c, &clusterv3.Cluster{}); err != nil {
			t.Errorf("CDS: %v", err)
		}
	}

	// Deleted: gone from the model and from what an ADS client gets.
	if err := admin.CoreV1().Services("shop").Delete(bg, "orders", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	meshtest.Eventually(t, 10*time.Second, func() error {
		if p.Model().Service("orders.shop") != nil || p.Model().Service("orders") != nil {
			return fmt.Errorf("orders still in the model")
		}
		return nil
	})
	meshtest.Eventually(t, 10*time.Second, func() error {
		res, err := cds()
		if err != nil {
			return err
		}
		for _, c := range []string{"orders.shop", "orders"} {
			if unmarshal(res, c, &clusterv3.Cluster{}) == nil {
				return fmt.Errorf("CDS still has cluster %s after the Service was deleted", c)
			}
		}
		return nil
	})
}

func TestKubeLeastPrivilege(t *testing.T) {
	rc, err := clientcmd.BuildConfigFromFlags("", saKubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	sa, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sa.CoreV1().Services("").List(bg, metav1.ListOptions{}); err != nil {
		t.Fatalf("the service account cannot list services: %v", err)
	}
	for what, call := range map[string]func() error{
		"list secrets": func() error { _, err := sa.CoreV1().Secrets("").List(bg, metav1.ListOptions{}); return err },
		"get a service": func() error {
			_, err := sa.CoreV1().Services("default").Get(bg, "kubernetes", metav1.GetOptions{})
			return err
		},
		"create a service outside the export namespace": func() error {
			_, err := sa.CoreV1().Services("default").Create(bg, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "x"},
				Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}}, metav1.CreateOptions{})
			return err
		},
		"list pods": func() error { _, err := sa.CoreV1().Pods("").List(bg, metav1.ListOptions{}); return err },
	} {
		if err := call(); !apierrors.IsForbidden(err) {
			t.Errorf("%s: %v; want forbidden", what, err)
		}
	}
}

func TestKubeMergesWithConsul(t *testing.T) {
	ns(t, "pay")
	register(t, consulapi.AgentServiceRegistration{ID: "billing-vm-1", Name: "billing", Address: "127.0.0.41", Port: 15006,
		Meta: map[string]string{"mesh_region": "dc1", "mesh_zone": "vm-a"}})
	register(t, consulapi.AgentServiceRegistration{ID: "billing-vm-2", Name: "billing", Address: "10.3.0.9", Port: 8080})
	createService(t, "pay", "billing", corev1.ServicePort{Port: 80})
	createSlice(t, slice("pay", "billing", "billing-a", "", 8080,
		endpoint("10.3.0.1", "k8s-a", "", true), endpoint("10.3.0.9", "k8s-b", "", true)))
	p := startPlane(t, func(k *config.Kubernetes) { k.DefaultNamespace = "pay"; k.Namespaces = []string{"pay"} })
	e := dialEDS(t, p.xdsAddr, "billing", "billing.pay")
	// 10.3.0.9:8080 is in both: Consul's is kept, and the conflict reported.
	want(t, e, "billing", "10.3.0.1:8080 HEALTHY /k8s-a", "10.3.0.9:8080 HEALTHY /", "127.0.0.41:15006 HEALTHY dc1/vm-a")
	want(t, e, "billing.pay", "10.3.0.1:8080 HEALTHY /k8s-a", "10.3.0.9:8080 HEALTHY /k8s-b")
	if v := p.metric(t, "mesh_control_endpoint_conflicts"); v != 1 {
		t.Errorf("mesh_control_endpoint_conflicts = %v; want 1", v)
	}
	if !strings.Contains(p.logs.String(), "two endpoints of a service share an address") {
		t.Error("the conflict was not logged")
	}
}

func TestKubeExportsConsulServices(t *testing.T) {
	vms := "mesh-vms"
	foreign := func(name string) *corev1.Service {
		s, err := admin.CoreV1().Services(vms).Create(bg, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"team": "x"}},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 1234}}}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	legacy, taken := foreign("legacy"), foreign("taken")
	register(t, consulapi.AgentServiceRegistration{ID: "inventory-1", Name: "inventory", Address: "192.0.2.10", Port: 15006,
		Meta: map[string]string{"mesh_zone": "vm-a"}})
	register(t, consulapi.AgentServiceRegistration{ID: "taken-1", Name: "taken", Address: "192.0.2.20", Port: 15006})
	p := startPlane(t, func(k *config.Kubernetes) { k.ExportNamespace = vms })

	slicesOf := func() ([]string, error) {
		l, err := admin.DiscoveryV1().EndpointSlices(vms).List(bg, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=inventory"})
		if err != nil {
			return nil, err
		}
		var out []string
		for _, sl := range l.Items {
			for _, ep := range sl.Endpoints {
				out = append(out, fmt.Sprintf("%s:%d ready=%v zone=%s", ep.Addresses[0], *sl.Ports[0].Port, *ep.Conditions.Ready, ptr.Deref(ep.Zone, "")))
			}
		}
		sortStrings(out)
		return out, nil
	}
	expect := func(w ...string) {
		t.Helper()
		meshtest.Eventually(t, 15*time.Second, func() error {
			got, err := slicesOf()
			if err == nil && !slices.Equal(got, w) {
				err = fmt.Errorf("inventory slices %v, want %v", got, w)
			}
			return err
		})
	}
	expect("192.0.2.10:15006 ready=true zone=vm-a")
	s, err := admin.CoreV1().Services(vms).Get(bg, "inventory", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s.Labels["app.kubernetes.io/managed-by"] != "mesh" || len(s.Spec.Selector) != 0 || s.Spec.Ports[0].Port != 15006 {
		t.Fatalf("exported service %+v", s)
	}
	// Follows Consul.
	register(t, consulapi.AgentServiceRegistration{ID: "inventory-2", Name: "inventory", Address: "192.0.2.11", Port: 15006,
		Check: &consulapi.AgentServiceCheck{CheckID: "ttl-inventory-2", TTL: "10m", Status: "critical"}})
	expect("192.0.2.10:15006 ready=true zone=vm-a", "192.0.2.11:15006 ready=false zone=")
	// Others' objects are never touched.
	for _, f := range []*corev1.Service{legacy, taken} {
		now, err := admin.CoreV1().Services(vms).Get(bg, f.Name, metav1.GetOptions{})
		if err != nil || now.ResourceVersion != f.ResourceVersion {
			t.Errorf("service %s was touched: %v", f.Name, err)
		}
	}
	if l, _ := admin.DiscoveryV1().EndpointSlices(vms).List(bg, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=taken"}); len(l.Items) != 0 {
		t.Errorf("slices written for a service mesh does not own: %d", len(l.Items))
	}
	meshtest.Eventually(t, 10*time.Second, func() error {
		if v := p.metric(t, "mesh_control_kubernetes_export_conflicts"); v != 1 {
			return fmt.Errorf("mesh_control_kubernetes_export_conflicts = %v; want 1", v)
		}
		return nil
	})
	// Gone from Consul: removed.
	for _, id := range []string{"inventory-1", "inventory-2"} {
		if err := testConsul.Client.Agent().ServiceDeregister(id); err != nil {
			t.Fatal(err)
		}
	}
	meshtest.Eventually(t, 15*time.Second, func() error {
		if _, err := admin.CoreV1().Services(vms).Get(bg, "inventory", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("inventory still exported: %v", err)
		}
		got, err := slicesOf()
		if err == nil && len(got) > 0 {
			err = fmt.Errorf("slices left: %v", got)
		}
		return err
	})
	for _, name := range []string{"legacy", "taken"} {
		if _, err := admin.CoreV1().Services(vms).Get(bg, name, metav1.GetOptions{}); err != nil {
			t.Errorf("service %s: %v", name, err)
		}
	}
}

func TestKubeAPIServerOutage(t *testing.T) {
	ns(t, "outage")
	createService(t, "outage", "web", corev1.ServicePort{Port: 80})
	sl := createSlice(t, slice("outage", "web", "web-a", "", 8080, endpoint("10.4.0.1", "z1", "", true)))
	p := startPlane(t, func(k *config.Kubernetes) { k.Namespaces = []string{"outage"} })
	e := dialEDS(t, p.xdsAddr, "web.outage")
	want(t, e, "web.outage", "10.4.0.1:8080 HEALTHY /z1")
	errsBefore := p.metric(t, `mesh_control_source_errors_total{source="kubernetes"}`)

	kube.StopAPIServer()
	restarted := false
	defer func() {
		if !restarted {
			if err := kube.StartAPIServer(); err != nil {
				t.Errorf("restart the api server: %v", err)
			}
		}
	}()
	meshtest.Eventually(t, 30*time.Second, func() error {
		if v := p.metric(t, `mesh_control_source_errors_total{source="kubernetes"}`); v <= errsBefore {
			return fmt.Errorf("kubernetes source errors %v, not counting the outage", v)
		}
		return nil
	})
	if !strings.Contains(p.logs.String(), "kubernetes api failing") {
		t.Error("the outage was not logged")
	}
	if s := p.Model().Service("web.outage"); s == nil || len(s.Endpoints) != 1 {
		t.Fatalf("the last view was not kept: %+v", s)
	}
	if got := e.endpoints("web.outage"); len(got) != 1 {
		t.Fatalf("the ADS client lost the endpoint: %v", got)
	}
	pushes := e.pushCount()

	if err := kube.StartAPIServer(); err != nil {
		t.Fatal(err)
	}
	restarted = true
	meshtest.Eventually(t, 60*time.Second, func() error {
		if !strings.Contains(p.logs.String(), "kubernetes api reachable again") {
			return fmt.Errorf("no resync yet")
		}
		return nil
	})
	time.Sleep(time.Second)
	if n := e.pushCount(); n != pushes {
		t.Errorf("%d pushes after the API server came back with nothing changed", n-pushes)
	}
	sl.Endpoints = append(sl.Endpoints, endpoint("10.4.0.2", "z2", "", true))
	if _, err := admin.DiscoveryV1().EndpointSlices("outage").Update(bg, sl, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	want(t, e, "web.outage", "10.4.0.1:8080 HEALTHY /z1", "10.4.0.2:8080 HEALTHY /z2")
}

// TestKubeScale: 2,000 Services with 10 endpoints each; one endpoint
// change reaches an ADS client in < 1 s. It logs the control plane's heap
// for them (docs/benchmarks.md).
func TestKubeScale(t *testing.T) {
	const services, per = 2000, 10
	ns(t, "scale")
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, services)
	work := make(chan int)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				name := fmt.Sprintf("svc-%04d", i)
				s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "scale", Name: name},
					Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}
				if _, err := admin.CoreV1().Services("scale").Create(bg, s, metav1.CreateOptions{}); err != nil {
					errs <- err
					continue
				}
				var eps []discoveryv1.Endpoint
				for j := range per {
					eps = append(eps, endpoint(fmt.Sprintf("10.%d.%d.%d", 100+i/250, i%250, j+1), fmt.Sprintf("z%d", j%3), "", true))
				}
				if _, err := admin.DiscoveryV1().EndpointSlices("scale").Create(bg, slice("scale", name, name+"-a", "http", 8080, eps...), metav1.CreateOptions{}); err != nil {
					errs <- err
				}
			}
		}()
	}
	for i := range services {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("created %d services and endpointslices in %s", services, time.Since(start).Round(time.Millisecond))

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start = time.Now()
	p := startPlane(t, func(k *config.Kubernetes) { k.Namespaces = []string{"scale"} })
	meshtest.Eventually(t, 120*time.Second, func() error {
		if n, eps := p.Model().Counts(); n < services || eps < services*per {
			return fmt.Errorf("%d services, %d endpoints in the model", n, eps)
		}
		return nil
	})
	t.Logf("first model with %d services x %d endpoints in %s", services, per, time.Since(start).Round(time.Millisecond))
	runtime.GC()
	runtime.ReadMemStats(&after)
	t.Logf("control plane heap for them: %.1f MiB (heap in use %d -> %d MiB)",
		float64(after.HeapInuse-before.HeapInuse)/(1<<20), before.HeapInuse>>20, after.HeapInuse>>20)

	e := dialEDS(t, p.xdsAddr, "svc-1234.scale")
	meshtest.Eventually(t, 30*time.Second, func() error {
		if got := e.endpoints("svc-1234.scale"); len(got) != per {
			return fmt.Errorf("svc-1234.scale: %d endpoints", len(got))
		}
		return nil
	})
	sl, err := admin.DiscoveryV1().EndpointSlices("scale").Get(bg, "svc-1234-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sl.Endpoints[0].Conditions.Ready = ptr.To(false)
	for len(e.updated) > 0 {
		<-e.updated
	}
	changed := time.Now()
	if _, err := admin.DiscoveryV1().EndpointSlices("scale").Update(bg, sl, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	meshtest.Eventually(t, 10*time.Second, func() error {
		if got := e.endpoints("svc-1234.scale"); len(got) != per-1 {
			return fmt.Errorf("svc-1234.scale: %d endpoints", len(got))
		}
		return nil
	})
	took := time.Since(changed)
	t.Logf("one endpoint change reached the ADS client in %s (2,000 services x 10 endpoints)", took)
	if took > time.Second {
		t.Errorf("one endpoint change took %s to reach the ADS client; want < 1s", took)
	}
}
