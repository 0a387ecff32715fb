package kubeexport

import (
	"cmp"
	"fmt"
	"net/netip"
	"regexp"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/controlplane/source/kubernetes"
)

// PortName is the name of the one port of an exported Service and of its
// EndpointSlices' ports (kube-proxy matches them by name).
const PortName = "mesh"

// AnnotationSource says where an exported object comes from.
const AnnotationSource = "mesh.meshvm.io/source"

// maxPerSlice is the endpoints per EndpointSlice, the EndpointSlice
// controller's default.
const maxPerSlice = 100

// dns1035 is what a Service name must be.
var dns1035 = regexp.MustCompile(`^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$`)

// exported is one mesh service as Kubernetes objects.
type exported struct {
	service *corev1.Service
	slices  []*discoveryv1.EndpointSlice
}

// Desired returns the Services and EndpointSlices for the registry
// (Consul) endpoints of each service in m, by Service name, in namespace
// ns; the names that cannot be Service names are returned apart. Services
// with no registry endpoint are not exported: a Kubernetes service is
// never written back. The Service's port is its endpoints' most common
// port (the lowest on a tie); endpoints on other ports go in slices of
// their own, which kube-proxy maps by port name.
func Desired(m *model.Model, ns string) (map[string]exported, []string) {
	out := map[string]exported{}
	var invalid []string
	for i := range m.Services {
		s := &m.Services[i]
		var eps []model.Endpoint
		for _, ep := range s.Endpoints {
			if ep.Source != "" {
				continue
			}
			if _, err := netip.ParseAddr(ep.Address); err == nil {
				eps = append(eps, ep)
			}
		}
		if len(eps) == 0 {
			continue
		}
		if !dns1035.MatchString(s.Name) {
			invalid = append(invalid, s.Name)
			continue
		}
		out[s.Name] = exported{service: service(ns, s.Name, mainPort(eps)), slices: endpointSlices(ns, s.Name, eps)}
	}
	return out, invalid
}

func mainPort(eps []model.Endpoint) int {
	n := map[int]int{}
	for _, ep := range eps {
		n[ep.Port]++
	}
	best := 0
	for p, c := range n {
		if c > n[best] || (c == n[best] && p < best) {
			best = p
		}
	}
	return best
}

func ownLabels(extra map[string]string) map[string]string {
	l := map[string]string{kubernetes.LabelManagedBy: kubernetes.ManagedBy}
	for k, v := range extra {
		l[k] = v
	}
	return l
}

func service(ns, name string, port int) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: ns,
			Labels:      ownLabels(nil),
			Annotations: map[string]string{AnnotationSource: "consul"},
		},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP,
			Ports: []corev1.ServicePort{{
				Name: PortName, Protocol: corev1.ProtocolTCP,
				Port: int32(port), TargetPort: intstr.FromInt32(int32(port)),
			}},
		},
	}
}

// endpointSlices groups eps by address family and port, at most
// maxPerSlice to a slice, with stable names: <service>-<family>-<port>-<n>.
func endpointSlices(ns, name string, eps []model.Endpoint) []*discoveryv1.EndpointSlice {
	type group struct {
		family discoveryv1.AddressType
		port   int
	}
	groups := map[group][]model.Endpoint{}
	for _, ep := range eps {
		fam := discoveryv1.AddressTypeIPv4
		if ip, _ := netip.ParseAddr(ep.Address); ip.Unmap().Is6() {
			fam = discoveryv1.AddressTypeIPv6
		}
		g := group{fam, ep.Port}
		groups[g] = append(groups[g], ep)
	}
	keys := make([]group, 0, len(groups))
	for g := range groups {
		keys = append(keys, g)
	}
	slices.SortFunc(keys, func(a, b group) int { return cmp.Or(cmp.Compare(a.family, b.family), cmp.Compare(a.port, b.port)) })
	var out []*discoveryv1.EndpointSlice
	for _, g := range keys {
		list := groups[g]
		slices.SortFunc(list, func(a, b model.Endpoint) int { return cmp.Compare(a.Address, b.Address) })
		fam := "v4"
		if g.family == discoveryv1.AddressTypeIPv6 {
			fam = "v6"
		}
		for n := 0; n*maxPerSlice < len(list); n++ {
			chunk := list[n*maxPerSlice : min((n+1)*maxPerSlice, len(list))]
			sl := &discoveryv1.EndpointSlice{
				ObjectMeta: metav1.ObjectMeta{
					Name: fmt.Sprintf("%s-%s-%d-%d", name, fam, g.port, n), Namespace: ns,
					Labels: ownLabels(map[string]string{
						discoveryv1.LabelServiceName:   name,
						kubernetes.LabelSliceManagedBy: kubernetes.ManagedBy,
					}),
					Annotations: map[string]string{AnnotationSource: "consul"},
				},
				AddressType: g.family,
				Ports: []discoveryv1.EndpointPort{{
					Name: ptr.To(PortName), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(int32(g.port)),
				}},
			}
			for _, ep := range chunk {
				ip, _ := netip.ParseAddr(ep.Address)
				e := discoveryv1.Endpoint{
					Addresses: []string{ip.Unmap().String()},
					Conditions: discoveryv1.EndpointConditions{
						Ready:       ptr.To(ep.Health == model.Healthy),
						Serving:     ptr.To(ep.Health != model.Unhealthy),
						Terminating: ptr.To(ep.Health == model.Draining),
					},
				}
				if ep.Locality.Zone != "" {
					e.Zone = ptr.To(ep.Locality.Zone)
				}
				sl.Endpoints = append(sl.Endpoints, e)
			}
			out = append(out, sl)
		}
	}
	return out
}
