package kubernetes

import (
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/meshvm/mesh/controlplane/model"
)

func svc(ns, name string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.ServiceSpec{Ports: ports}}
}

type ep struct {
	ip                          string
	ready, serving, terminating *bool
	zone, node                  string
	pod                         string
}

func slice(ns, svcName, name string, ports map[string]int32, eps ...ep) *discoveryv1.EndpointSlice {
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svcName}},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	if strings.Contains(eps[0].ip, ":") {
		sl.AddressType = discoveryv1.AddressTypeIPv6
	}
	for n, p := range ports {
		sl.Ports = append(sl.Ports, discoveryv1.EndpointPort{Name: ptr.To(n), Port: ptr.To(p), Protocol: ptr.To(corev1.ProtocolTCP)})
	}
	for _, e := range eps {
		d := discoveryv1.Endpoint{Addresses: []string{e.ip}, Conditions: discoveryv1.EndpointConditions{Ready: e.ready, Serving: e.serving, Terminating: e.terminating}}
		if e.zone != "" {
			d.Zone = ptr.To(e.zone)
		}
		if e.node != "" {
			d.NodeName = ptr.To(e.node)
		}
		if e.pod != "" {
			d.TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: e.pod}
		}
		sl.Endpoints = append(sl.Endpoints, d)
	}
	return sl
}

// summary is one line per instance: service address:port health zone/region.
func summary(insts []model.Instance) []string {
	var out []string
	for _, in := range insts {
		h := "healthy"
		if in.Draining {
			h = "draining"
		}
		out = append(out, fmt.Sprintf("%s %s:%d %s %s/%s %s", in.Service, in.Address, in.Port, h, in.Locality.Region, in.Locality.Zone, in.Identity))
	}
	return out
}

func TestBuildViewConditionsLocalityAndNaming(t *testing.T) {
	objs := Objects{
		Services: []*corev1.Service{
			svc("shop", "orders", corev1.ServicePort{Name: "http", Port: 80}),
			svc("web", "front", corev1.ServicePort{Port: 80}),
		},
		Slices: []*discoveryv1.EndpointSlice{
			slice("shop", "orders", "orders-a", map[string]int32{"http": 8080},
				ep{ip: "10.0.0.1", zone: "z1", node: "n1", pod: "orders-1"},
				ep{ip: "10.0.0.2", ready: ptr.To(false), serving: ptr.To(true), terminating: ptr.To(true), node: "n2"},
				ep{ip: "10.0.0.3", ready: ptr.To(false)},
				ep{ip: "10.0.0.4", ready: ptr.To(false), serving: ptr.To(true), terminating: ptr.To(false)}),
			// the named target port resolves to another number on these pods
			slice("shop", "orders", "orders-b", map[string]int32{"http": 9090}, ep{ip: "10.0.1.1", node: "n1"}),
			slice("web", "front", "front-a", map[string]int32{"": 8000}, ep{ip: "fd00::1"}),
		},
		Nodes: map[string]*corev1.Node{
			"n1": {ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{LabelRegion: "eu", LabelZone: "eu-a"}}},
			"n2": {ObjectMeta: metav1.ObjectMeta{Name: "n2", Labels: map[string]string{LabelRegion: "eu", LabelZone: "eu-b"}}},
		},
	}
	got := summary(BuildView(objs, Naming{DefaultNamespace: "shop"}))
	want := []string{
		"front.web fd00::1:8000 healthy / ns/web/svc/front",
		"orders 10.0.0.2:8080 draining eu/eu-b ns/shop/svc/orders",
		"orders 10.0.1.1:9090 healthy eu/eu-a ns/shop/svc/orders",
		"orders 10.0.0.1:8080 healthy eu/z1 ns/shop/svc/orders",
		"orders.shop 10.0.0.2:8080 draining eu/eu-b ns/shop/svc/orders",
		"orders.shop 10.0.1.1:9090 healthy eu/eu-a ns/shop/svc/orders",
		"orders.shop 10.0.0.1:8080 healthy eu/z1 ns/shop/svc/orders",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("view:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestBuildViewPortsAndSkips(t *testing.T) {
	ext := svc("shop", "ext", corev1.ServicePort{Port: 80})
	ext.Spec.Type = corev1.ServiceTypeExternalName
	ours := svc("mesh-vms", "payments", corev1.ServicePort{Name: "mesh", Port: 80})
	ours.Labels = map[string]string{LabelManagedBy: ManagedBy}
	dns := svc("shop", "dns", corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP})
	objs := Objects{
		Services: []*corev1.Service{
			svc("shop", "api", corev1.ServicePort{Name: "http", Port: 80}, corev1.ServicePort{Name: "grpc", Port: 9000}),
			ext, ours, dns,
		},
		Slices: []*discoveryv1.EndpointSlice{
			slice("shop", "api", "api-a", map[string]int32{"http": 8080, "grpc": 9090}, ep{ip: "10.0.0.1"}),
			// the same pod in a second slice (controller handover): once
			slice("shop", "api", "api-b", map[string]int32{"http": 8080, "grpc": 9090}, ep{ip: "10.0.0.1"}),
			slice("mesh-vms", "payments", "payments-v4-80-0", map[string]int32{"mesh": 80}, ep{ip: "192.0.2.1"}),
			slice("shop", "dns", "dns-a", map[string]int32{"dns": 53}, ep{ip: "10.0.0.9"}),
		},
	}
	got := summary(BuildView(objs, Naming{}))
	want := []string{
		"api.shop 10.0.0.1:8080 healthy / ns/shop/svc/api",
		"grpc.api.shop 10.0.0.1:9090 healthy / ns/shop/svc/api",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("view:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestEqualViews(t *testing.T) {
	objs := Objects{
		Services: []*corev1.Service{svc("shop", "orders", corev1.ServicePort{Port: 80})},
		Slices:   []*discoveryv1.EndpointSlice{slice("shop", "orders", "a", map[string]int32{"": 80}, ep{ip: "10.0.0.1"})},
	}
	a, b := BuildView(objs, Naming{}), BuildView(objs, Naming{})
	if !equalViews(a, b) {
		t.Fatal("the same objects gave different views")
	}
	objs.Slices[0].Endpoints[0].Conditions.Ready = ptr.To(false)
	objs.Slices[0].Endpoints[0].Conditions.Serving = ptr.To(true)
	objs.Slices[0].Endpoints[0].Conditions.Terminating = ptr.To(true)
	if equalViews(a, BuildView(objs, Naming{})) {
		t.Fatal("a draining endpoint left the view equal")
	}
}
