package model_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
)

func TestSubsetMatch(t *testing.T) {
	ep := model.Endpoint{Metadata: model.Metadata{
		Tags:     []string{"canary", "track=beta"},
		Meta:     map[string]string{"version": "v2"},
		Labels:   map[string]string{"rack": "r7"},
		HostTags: []string{"pci"},
		Env:      "prod",
		Owner:    "team-shop",
	}}
	for _, tc := range []struct {
		name  string
		match map[string]string
		want  bool
	}{
		{"registry meta", map[string]string{"version": "v2"}, true},
		{"meta with another value", map[string]string{"version": "v1"}, false},
		{"tag key=value", map[string]string{"track": "beta"}, true},
		{"bare tag", map[string]string{"tag": "canary"}, true},
		{"bare host tag", map[string]string{"tag": "pci"}, true},
		{"missing tag", map[string]string{"tag": "stable"}, false},
		{"CMDB label", map[string]string{"rack": "r7"}, true},
		{"CMDB field", map[string]string{"env": "prod", "owner": "team-shop"}, true},
		{"every key must hold", map[string]string{"version": "v2", "env": "staging"}, false},
		{"unknown key", map[string]string{"color": "blue"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := model.Matches(&ep, tc.match); got != tc.want {
				t.Errorf("Matches(%v) = %v, want %v", tc.match, got, tc.want)
			}
		})
	}
}

// TestMergeSubsets: the merge groups a service's endpoints into its
// configured subsets (the service keeps all of them), takes a subset's
// policy or the service's, and joins CMDB labels before matching.
func TestMergeSubsets(t *testing.T) {
	fast := config.DefaultPolicy()
	fast.Timeout = time.Second
	opts := model.MergeOptions{
		Policies: config.Policies{Default: config.DefaultPolicy()},
		Services: map[string]config.ServiceSettings{"orders": {
			Subsets: []config.Subset{
				{Name: "v1", Match: map[string]string{"version": "v1"}},
				{Name: "v2", Match: map[string]string{"version": "v2"}, Policy: fast},
				{Name: "rack7", Match: map[string]string{"rack": "r7"}},
			},
			DefaultSubset: "v1",
			Routes:        []config.Route{{Subset: "v2", Headers: []config.HeaderMatch{{Name: "x-canary"}}}},
		}},
	}
	inst := func(id, addr, version string) model.Instance {
		return model.Instance{Service: "orders", ID: id, Node: id, Address: addr, Port: 15006, Check: model.CheckPassing, Meta: map[string]string{"version": version}}
	}
	views := []model.View{
		{Instances: []model.Instance{inst("o1", "10.0.0.1", "v1"), inst("o2", "10.0.0.2", "v2"), inst("o3", "10.0.0.3", "v1")}},
		{Hosts: []model.Host{{IP: netip.MustParseAddr("10.0.0.3"), Labels: map[string]string{"rack": "r7"}}}},
	}
	m := model.Merge(views, opts)
	s := m.Service("orders")
	if s == nil || len(s.Endpoints) != 3 || len(s.Subsets) != 3 || s.DefaultSubset != "v1" || len(s.Routes) != 1 {
		t.Fatalf("orders %+v", s)
	}
	ids := func(sub *model.Subset) (out []string) {
		for _, ep := range sub.Endpoints {
			out = append(out, ep.ID)
		}
		return out
	}
	for _, tc := range []struct {
		subset  string
		ids     string
		timeout time.Duration
	}{{"v1", "[o1 o3]", 15 * time.Second}, {"v2", "[o2]", time.Second}, {"rack7", "[o3]", 15 * time.Second}} {
		sub := s.Subset(tc.subset)
		if got := ids(sub); sub == nil || fmtIDs(got) != tc.ids || sub.Policy.Timeout != tc.timeout {
			t.Errorf("subset %s: endpoints %v, timeout %v; want %s, %v", tc.subset, got, sub.Policy.Timeout, tc.ids, tc.timeout)
		}
	}
	again := model.Merge(views, opts)
	if !m.Equal(&again) {
		t.Error("equal inputs give unequal models")
	}
	opts.Services["orders"] = config.ServiceSettings{Subsets: opts.Services["orders"].Subsets[:1]}
	changed := model.Merge(views, opts)
	if m.Equal(&changed) {
		t.Error("models with other subsets and routes compare equal")
	}
}

func fmtIDs(ids []string) string {
	out := "["
	for i, id := range ids {
		if i > 0 {
			out += " "
		}
		out += id
	}
	return out + "]"
}
