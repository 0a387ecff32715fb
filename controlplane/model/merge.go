package model

import (
	"cmp"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/wire"
)

// MergeOptions are the parts of the control plane's config the merge needs.
type MergeOptions struct {
	// DrainingStatuses are CMDB host statuses (case-insensitive) that make
	// the host's endpoints Draining.
	DrainingStatuses []string
	Policies         config.Policies
	// VirtualIPCIDR is the range services' virtual IPs come from
	// (control.virtual_ips.cidr); empty means none (virtualip.go).
	VirtualIPCIDR string
	// Services are the per-service settings (control.services): their
	// subsets, default subset and routes (subsets.go).
	Services map[string]config.ServiceSettings
}

// Merge joins the sources' views into one model. Registry instances become
// endpoints; a CMDB host with the same IP adds locality (it wins over the
// registry's mesh_region/mesh_zone meta), metadata, and Draining for a
// draining status. A critical check makes an endpoint Unhealthy whatever
// the CMDB says. Two instances of a service on one address:port are one
// endpoint, since xDS clients reject duplicate addresses: the healthier,
// then the registry's (Consul, whose instance has a mesh agent and checks)
// over another source's, then the lower ID; the other is listed in
// Model.Conflicts. Merge does not modify views.
func Merge(views []View, opts MergeOptions) Model {
	hosts := map[netip.Addr]*Host{}
	var instances []Instance
	for i := range views {
		for j := range views[i].Hosts {
			h := &views[i].Hosts[j]
			if h.IP.IsValid() {
				hosts[h.IP.Unmap()] = h
			}
		}
		instances = append(instances, views[i].Instances...)
	}
	draining := make(map[string]bool, len(opts.DrainingStatuses))
	for _, s := range opts.DrainingStatuses {
		draining[strings.ToLower(s)] = true
	}

	slices.SortFunc(instances, func(a, b Instance) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.ID, b.ID))
	})
	var m Model
	for i := 0; i < len(instances); {
		j := i
		for j < len(instances) && instances[j].Service == instances[i].Service {
			j++
		}
		name := instances[i].Service
		if name != "" && name != "consul" {
			eps, conflicts := endpoints(instances[i:j], hosts, draining)
			m.Services = append(m.Services, Service{
				Name:      name,
				Policy:    opts.Policies.For(name),
				Endpoints: eps,
			})
			m.Conflicts = append(m.Conflicts, conflicts...)
		}
		i = j
	}
	slices.SortFunc(m.Conflicts, func(a, b Conflict) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Address, b.Address), cmp.Compare(a.Dropped, b.Dropped))
	})
	assignVirtualIPs(&m, opts.VirtualIPCIDR)
	for i := range m.Services {
		applyTraffic(&m.Services[i], opts.Services[m.Services[i].Name])
	}
	return m
}

func endpoints(in []Instance, hosts map[netip.Addr]*Host, draining map[string]bool) ([]Endpoint, []Conflict) {
	out := make([]Endpoint, 0, len(in))
	var conflicts []Conflict
	byAddr := make(map[string]int, len(in))
	for _, inst := range in {
		if inst.Address == "" || inst.Port <= 0 || inst.Port > 65535 {
			continue
		}
		ep := Endpoint{
			ID:      inst.ID,
			Node:    inst.Node,
			Address: inst.Address,
			Port:    inst.Port,
			Health:  Healthy,
			Weight:  max(inst.Weight, 1),
			Locality: Locality{
				Region: inst.Meta[wire.MetaRegion],
				Zone:   inst.Meta[wire.MetaZone],
			},
			Metadata:  Metadata{Tags: inst.Tags, Meta: inst.Meta},
			Source:    inst.Source,
			Namespace: inst.Namespace,
			Identity:  inst.Identity,
		}
		if inst.Locality.Region != "" {
			ep.Locality.Region = inst.Locality.Region
		}
		if inst.Locality.Zone != "" {
			ep.Locality.Zone = inst.Locality.Zone
		}
		if inst.Draining {
			ep.Health = Draining
		}
		if p, err := strconv.Atoi(inst.Meta[wire.MetaAppPort]); err == nil && p > 0 && p <= 65535 {
			ep.AppPort = p
		}
		if ip, err := netip.ParseAddr(inst.Address); err == nil {
			if h := hosts[ip.Unmap()]; h != nil {
				if h.Region != "" {
					ep.Locality.Region = h.Region
				}
				if h.Zone != "" {
					ep.Locality.Zone = h.Zone
				}
				md := &ep.Metadata
				md.Hostname, md.Env, md.Owner, md.Role, md.Tenant, md.Status = h.Hostname, h.Env, h.Owner, h.Role, h.Tenant, h.Status
				md.HostTags, md.Labels = h.Tags, h.Labels
				if draining[strings.ToLower(h.Status)] {
					ep.Health = Draining
				}
			}
		}
		if inst.Check == CheckCritical {
			ep.Health = Unhealthy
		}
		key := ep.Address + ":" + strconv.Itoa(ep.Port)
		if ip, err := netip.ParseAddr(ep.Address); err == nil {
			key = netip.AddrPortFrom(ip.Unmap(), uint16(ep.Port)).String()
		}
		if k, dup := byAddr[key]; dup {
			kept, dropped := &out[k], &ep
			if preferred(&ep, kept) {
				kept, dropped = &ep, kept
			}
			conflicts = append(conflicts, Conflict{
				Service: in[0].Service, Address: key,
				Kept: sourceName(kept.Source) + "/" + kept.ID, Dropped: sourceName(dropped.Source) + "/" + dropped.ID,
			})
			if kept == &ep {
				out[k] = ep
			}
			continue
		}
		byAddr[key] = len(out)
		out = append(out, ep)
	}
	return out, conflicts
}

// preferred reports whether a, met after b (a higher ID), replaces b on
// their shared address: it is healthier, or as healthy and from the
// registry while b is not.
func preferred(a, b *Endpoint) bool {
	if ra, rb := rank(a.Health), rank(b.Health); ra != rb {
		return ra < rb
	}
	return a.Source == "" && b.Source != ""
}

// sourceName names an instance's source in a Conflict.
func sourceName(s string) string {
	if s == "" {
		return "consul"
	}
	return s
}

func rank(h Health) int {
	switch h {
	case Healthy:
		return 0
	case Draining:
		return 1
	}
	return 2
}

// MergeChanged is Merge for views in which only the services in changed
// may differ from those prev was merged from (and no Hosts changed):
// prev's other services are kept as they are (their endpoint slices
// shared, not copied) and only the changed ones are merged again, so a
// change to one of 10,000 services costs one service plus a pass over
// the instances' service names. The result's Changed lists the services
// that may differ from prev, including those whose virtual IP moved.
// With prev nil or changed nil it is Merge.
func MergeChanged(prev *Model, views []View, opts MergeOptions, changed map[string]bool) Model {
	if prev == nil || changed == nil {
		return Merge(views, opts)
	}
	hosts := map[netip.Addr]*Host{}
	var instances []Instance
	for i := range views {
		for j := range views[i].Hosts {
			h := &views[i].Hosts[j]
			if h.IP.IsValid() {
				hosts[h.IP.Unmap()] = h
			}
		}
		for j := range views[i].Instances {
			if changed[views[i].Instances[j].Service] {
				instances = append(instances, views[i].Instances[j])
			}
		}
	}
	draining := make(map[string]bool, len(opts.DrainingStatuses))
	for _, s := range opts.DrainingStatuses {
		draining[strings.ToLower(s)] = true
	}
	slices.SortFunc(instances, func(a, b Instance) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.ID, b.ID))
	})
	var fresh []Service
	var conflicts []Conflict
	for i := 0; i < len(instances); {
		j := i
		for j < len(instances) && instances[j].Service == instances[i].Service {
			j++
		}
		if name := instances[i].Service; name != "" && name != "consul" {
			eps, cs := endpoints(instances[i:j], hosts, draining)
			fresh = append(fresh, Service{Name: name, Policy: opts.Policies.For(name), Endpoints: eps})
			applyTraffic(&fresh[len(fresh)-1], opts.Services[name])
			conflicts = append(conflicts, cs...)
		}
		i = j
	}
	m := Model{Services: make([]Service, 0, len(prev.Services)+len(fresh))}
	// Both lists are sorted by name: merge them, the fresh one winning.
	k := 0
	for i := range prev.Services {
		s := &prev.Services[i]
		for k < len(fresh) && fresh[k].Name < s.Name {
			m.Services = append(m.Services, fresh[k])
			k++
		}
		if changed[s.Name] {
			continue // merged again, or gone
		}
		m.Services = append(m.Services, *s)
	}
	m.Services = append(m.Services, fresh[k:]...)
	for _, c := range prev.Conflicts {
		if !changed[c.Service] {
			conflicts = append(conflicts, c)
		}
	}
	slices.SortFunc(conflicts, func(a, b Conflict) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Address, b.Address), cmp.Compare(a.Dropped, b.Dropped))
	})
	m.Conflicts = conflicts
	names := make([]string, 0, len(changed))
	for name := range changed {
		names = append(names, name)
	}
	if opts.VirtualIPCIDR != "" {
		assignVirtualIPs(&m, opts.VirtualIPCIDR)
		for i := range m.Services {
			s := &m.Services[i]
			if p := prev.Service(s.Name); p != nil && !changed[s.Name] && p.VirtualIP != s.VirtualIP {
				names = append(names, s.Name)
			}
		}
	}
	slices.Sort(names)
	m.Changed = names
	return m
}
