package kubernetes

import (
	"cmp"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/meshvm/mesh/controlplane/model"
)

// Labels mesh reads and writes on Kubernetes objects.
const (
	// LabelManagedBy marks the Services and EndpointSlices mesh writes
	// (value ManagedBy); the source skips them, so an exported VM service
	// never comes back as a Kubernetes one.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	// LabelSliceManagedBy is the EndpointSlice controller label; mesh sets
	// it to ManagedBy on its slices so no controller adopts them.
	LabelSliceManagedBy = discoveryv1.LabelManagedBy
	// ManagedBy is the value of both managed-by labels on mesh's objects.
	ManagedBy = "mesh"
	// LabelZone and LabelRegion are the well-known Node topology labels.
	LabelZone   = corev1.LabelTopologyZone
	LabelRegion = corev1.LabelTopologyRegion
)

// Objects are what the informers hold, as the view is built from them.
type Objects struct {
	Services []*corev1.Service
	Slices   []*discoveryv1.EndpointSlice
	// Nodes by name; nil when Nodes are not watched.
	Nodes map[string]*corev1.Node
}

// Naming maps Kubernetes services onto mesh service names.
type Naming struct {
	// DefaultNamespace's services also get their bare name.
	DefaultNamespace string
}

// Names returns the mesh names of a Service's ports (same order as
// ports): the first port is the service itself, `orders.shop` (and
// `orders` in the default namespace); each further port is
// `<port>.orders.shop`. Kubernetes requires every port of a multi-port
// Service to be named, and namespaces and services have no dots, so the
// names cannot collide.
func (n Naming) Names(namespace, service string, ports []string) [][]string {
	base := service + "." + namespace
	out := make([][]string, len(ports))
	for i, p := range ports {
		switch {
		case i > 0:
			out[i] = []string{p + "." + base}
		case namespace == n.DefaultNamespace:
			out[i] = []string{base, service}
		default:
			out[i] = []string{base}
		}
	}
	return out
}

// BuildView turns Services and their EndpointSlices into instances, sorted
// by service and ID:
//   - every TCP port of a Service (not ExternalName) is a mesh service
//     named by Naming; its number on each endpoint is the EndpointSlice
//     port of the same name (named target ports resolved per slice);
//   - an endpoint that is ready is healthy; not ready but serving and
//     terminating, draining; anything else is left out;
//   - locality is the slice endpoint's zone, else the Node's zone label,
//     and the Node's region label;
//   - one address:port twice in a service (slices mid-handover) is one
//     instance, the ready one, then the lower ID.
func BuildView(objs Objects, naming Naming) []model.Instance {
	type key struct{ ns, name string }
	slicesOf := make(map[key][]*discoveryv1.EndpointSlice, len(objs.Services))
	for _, sl := range objs.Slices {
		svc := sl.Labels[discoveryv1.LabelServiceName]
		if svc == "" || sl.Labels[LabelSliceManagedBy] == ManagedBy {
			continue
		}
		if sl.AddressType != discoveryv1.AddressTypeIPv4 && sl.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		k := key{sl.Namespace, svc}
		slicesOf[k] = append(slicesOf[k], sl)
	}
	var out []model.Instance
	for _, svc := range objs.Services {
		if svc.Spec.Type == corev1.ServiceTypeExternalName || svc.Labels[LabelManagedBy] == ManagedBy {
			continue
		}
		var ports []corev1.ServicePort
		for _, p := range svc.Spec.Ports {
			if p.Protocol == "" || p.Protocol == corev1.ProtocolTCP {
				ports = append(ports, p)
			}
		}
		if len(ports) == 0 {
			continue
		}
		portNames := make([]string, len(ports))
		for i, p := range ports {
			portNames[i] = p.Name
		}
		names := naming.Names(svc.Namespace, svc.Name, portNames)
		identity := model.Identity(svc.Namespace, svc.Name)
		for i, sp := range ports {
			insts := endpointsOf(slicesOf[key{svc.Namespace, svc.Name}], sp.Name, objs.Nodes)
			for _, name := range names[i] {
				for _, in := range insts {
					in.Service = name
					in.Namespace = svc.Namespace
					in.Identity = identity
					out = append(out, in)
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b model.Instance) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.ID, b.ID))
	})
	return out
}

// endpointsOf returns the endpoints of one service port across its slices,
// one per address:port, sorted by ID; Service is left for the caller.
func endpointsOf(sls []*discoveryv1.EndpointSlice, portName string, nodes map[string]*corev1.Node) []model.Instance {
	byAddr := map[netip.AddrPort]int{}
	var out []model.Instance
	for _, sl := range sls {
		port := 0
		for _, p := range sl.Ports {
			if p.Port == nil || (p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP) {
				continue
			}
			if name := deref(p.Name); name == portName {
				port = int(*p.Port)
				break
			}
		}
		if port <= 0 || port > 65535 {
			continue
		}
		for _, ep := range sl.Endpoints {
			if len(ep.Addresses) == 0 {
				continue
			}
			ip, err := netip.ParseAddr(ep.Addresses[0])
			if err != nil {
				continue
			}
			ready := ep.Conditions.Ready == nil || *ep.Conditions.Ready
			serving := ready
			if ep.Conditions.Serving != nil {
				serving = *ep.Conditions.Serving
			}
			terminating := ep.Conditions.Terminating != nil && *ep.Conditions.Terminating
			draining := !ready && serving && terminating
			if !ready && !draining {
				continue
			}
			ap := netip.AddrPortFrom(ip.Unmap(), uint16(port))
			id := sl.Namespace + "/"
			if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" && ep.TargetRef.Name != "" {
				id += ep.TargetRef.Name + "/"
			}
			id += ap.String()
			in := model.Instance{
				ID:       id,
				Node:     deref(ep.NodeName),
				Address:  ap.Addr().String(),
				Port:     port,
				Check:    model.CheckPassing,
				Weight:   1,
				Source:   model.SourceKubernetes,
				Draining: draining,
				Locality: locality(ep, nodes),
			}
			if k, dup := byAddr[ap]; dup {
				if prev := &out[k]; (prev.Draining && !in.Draining) || (prev.Draining == in.Draining && in.ID < prev.ID) {
					*prev = in
				}
				continue
			}
			byAddr[ap] = len(out)
			out = append(out, in)
		}
	}
	slices.SortFunc(out, func(a, b model.Instance) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// locality is the endpoint's zone (else its Node's) and its Node's region.
func locality(ep discoveryv1.Endpoint, nodes map[string]*corev1.Node) model.Locality {
	var l model.Locality
	if n := nodes[deref(ep.NodeName)]; n != nil {
		l.Region, l.Zone = n.Labels[LabelRegion], n.Labels[LabelZone]
	}
	if z := deref(ep.Zone); z != "" {
		l.Zone = z
	}
	return l
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// equalViews reports whether two sorted instance lists are the same.
func equalViews(a, b []model.Instance) bool {
	return slices.EqualFunc(a, b, func(x, y model.Instance) bool {
		return x.Service == y.Service && x.ID == y.ID && x.Node == y.Node && x.Address == y.Address &&
			x.Port == y.Port && x.Check == y.Check && x.Weight == y.Weight && x.Source == y.Source &&
			x.Namespace == y.Namespace && x.Identity == y.Identity && x.Draining == y.Draining &&
			x.Locality == y.Locality && slices.Equal(x.Tags, y.Tags) && len(x.Meta) == 0 && len(y.Meta) == 0
	})
}
