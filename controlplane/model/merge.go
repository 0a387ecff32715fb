package model

import (
	"cmp"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/meshvm/mesh/config"
)

// Registry meta keys an agent sets on its registration.
const (
	MetaAppPort     = "app_port"
	MetaMeshVersion = "mesh_version"
	MetaNode        = "mesh_node" // the agent's VM name
	MetaZone        = "mesh_zone"
	MetaRegion      = "mesh_region"
)

// MergeOptions are the parts of the control plane's config the merge needs.
type MergeOptions struct {
	// DrainingStatuses are CMDB host statuses (case-insensitive) that make
	// the host's endpoints Draining.
	DrainingStatuses []string
	Policies         config.Policies
}

// Merge joins the sources' views into one model. Registry instances become
// endpoints; a CMDB host with the same IP adds locality (it wins over the
// registry's mesh_region/mesh_zone meta), metadata, and Draining for a
// draining status. A critical check makes an endpoint Unhealthy whatever
// the CMDB says. Two instances of a service on one address:port are one
// endpoint (the healthier, then the lower ID), since xDS clients reject
// duplicate addresses. Merge does not modify views.
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
			m.Services = append(m.Services, Service{
				Name:      name,
				Policy:    opts.Policies.For(name),
				Endpoints: endpoints(instances[i:j], hosts, draining),
			})
		}
		i = j
	}
	return m
}

func endpoints(in []Instance, hosts map[netip.Addr]*Host, draining map[string]bool) []Endpoint {
	out := make([]Endpoint, 0, len(in))
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
				Region: inst.Meta[MetaRegion],
				Zone:   inst.Meta[MetaZone],
			},
			Metadata: Metadata{Tags: inst.Tags, Meta: inst.Meta},
		}
		if p, err := strconv.Atoi(inst.Meta[MetaAppPort]); err == nil && p > 0 && p <= 65535 {
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
			if rank(ep.Health) < rank(out[k].Health) {
				out[k] = ep
			}
			continue
		}
		byAddr[key] = len(out)
		out = append(out, ep)
	}
	return out
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
