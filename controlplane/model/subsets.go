package model

import (
	"reflect"
	"slices"

	"github.com/meshvm/mesh/config"
)

// Subset is a named group of a service's endpoints (control.services.
// <name>.subsets): those matching every key of its match, with the
// subset's policy (the service's unless the subset overrides it).
type Subset struct {
	Name      string        `json:"name"`
	Policy    config.Policy `json:"policy"`
	Endpoints []Endpoint    `json:"endpoints"`
}

// applyTraffic groups s's endpoints into the configured subsets and
// copies the service's default subset and routes.
func applyTraffic(s *Service, cfg config.ServiceSettings) {
	s.DefaultSubset = cfg.DefaultSubset
	s.Routes = cfg.Routes
	s.Subsets = nil
	for _, sub := range cfg.Subsets {
		out := Subset{Name: sub.Name, Policy: sub.Policy}
		if reflect.DeepEqual(out.Policy, config.Policy{}) {
			out.Policy = s.Policy
		}
		for i := range s.Endpoints {
			if Matches(&s.Endpoints[i], sub.Match) {
				out.Endpoints = append(out.Endpoints, s.Endpoints[i])
			}
		}
		s.Subsets = append(s.Subsets, out)
	}
}

// Matches reports whether an endpoint holds every key of a subset's
// match. A key holds when the registry meta (Consul service meta) or the
// CMDB host labels have it with that value, or the endpoint carries the
// registry tag (or CMDB host tag) "key=value"; the key "tag" holds when
// the endpoint carries the tag value itself; env, owner, role, tenant,
// status and hostname are the CMDB host's fields. Kubernetes endpoints
// carry no pod labels in the model, so only their source's fields match.
func Matches(ep *Endpoint, match map[string]string) bool {
	md := &ep.Metadata
	for k, want := range match {
		if !matchKey(md, k, want) {
			return false
		}
	}
	return true
}

func matchKey(md *Metadata, k, want string) bool {
	if k == "tag" {
		return slices.Contains(md.Tags, want) || slices.Contains(md.HostTags, want)
	}
	if v, ok := md.Meta[k]; ok && v == want {
		return true
	}
	if v, ok := md.Labels[k]; ok && v == want {
		return true
	}
	tag := k + "=" + want
	if slices.Contains(md.Tags, tag) || slices.Contains(md.HostTags, tag) {
		return true
	}
	field := map[string]string{"env": md.Env, "owner": md.Owner, "role": md.Role, "tenant": md.Tenant, "status": md.Status, "hostname": md.Hostname}
	v, ok := field[k]
	return ok && v != "" && v == want
}

// Subset returns the named subset of s, or nil.
func (s *Service) Subset(name string) *Subset {
	for i := range s.Subsets {
		if s.Subsets[i].Name == name {
			return &s.Subsets[i]
		}
	}
	return nil
}

// HasTraffic reports whether s has subsets, a default subset or routes.
func (s *Service) HasTraffic() bool {
	return len(s.Subsets) > 0 || s.DefaultSubset != "" || len(s.Routes) > 0
}

// EqualTraffic reports whether s and o have the same subsets (names,
// policies, endpoints), default subset and routes.
func (s *Service) EqualTraffic(o *Service) bool {
	if s.DefaultSubset != o.DefaultSubset || len(s.Subsets) != len(o.Subsets) || !reflect.DeepEqual(s.Routes, o.Routes) {
		return false
	}
	for i := range s.Subsets {
		a, b := &s.Subsets[i], &o.Subsets[i]
		if a.Name != b.Name || !reflect.DeepEqual(a.Policy, b.Policy) || !EqualEndpoints(a.Endpoints, b.Endpoints) {
			return false
		}
	}
	return true
}
