package consul

import (
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// TestExplainCatalogWake: a catalog/services answer whose index moved
// with the names and tags unchanged is attributed to the service whose
// check was written at the same index, or to removals; otherwise it makes
// a sweep, as soon as the checks are known not to have been written at
// that index, or after grace.
func TestExplainCatalogWake(t *testing.T) {
	t0 := time.Unix(1000, 0)
	svcs := map[string][]string{"a": nil, "b": {"x"}}
	chk := func(node, id, svc, status string, idx uint64) *api.HealthCheck {
		return &api.HealthCheck{Node: node, CheckID: id, ServiceName: svc, ServiceID: svc + "-1", Status: status, ModifyIndex: idx}
	}
	base := api.HealthChecks{chk("n1", "ca", "a", "passing", 5), chk("n1", "cb", "b", "passing", 6)}
	for _, tc := range []struct {
		name string
		// then runs after the baselines (catalog at 10, checks at 10) and
		// the catalog's wake at 20.
		then      func(s *state) time.Time
		wantDirty []string
		wantSweep bool
	}{
		{
			name: "check written at the same index names the service",
			then: func(s *state) time.Time {
				s.applyChecks(result[api.HealthChecks]{val: api.HealthChecks{chk("n1", "ca", "a", "passing", 20), base[1]}, index: 20}, t0)
				return t0
			},
			wantDirty: []string{"a"},
		},
		{
			name: "checks list past the index without a write at it",
			then: func(s *state) time.Time {
				s.applyChecks(result[api.HealthChecks]{val: api.HealthChecks{chk("n1", "ca", "a", "passing", 21), base[1]}, index: 21}, t0)
				return t0
			},
			wantSweep: true,
		},
		{
			name: "checks table behind the index",
			then: func(s *state) time.Time {
				s.probe, s.probeAt = 10, t0.Add(time.Millisecond)
				return t0.Add(time.Millisecond)
			},
			wantSweep: true,
		},
		{
			name: "checks table at the index, list not yet: wait",
			then: func(s *state) time.Time {
				s.probe, s.probeAt = 20, t0.Add(time.Millisecond)
				return t0.Add(time.Millisecond)
			},
		},
		{
			name: "checks list late past grace",
			then: func(s *state) time.Time {
				s.probe, s.probeAt = 20, t0.Add(time.Millisecond)
				return t0.Add(grace)
			},
			wantSweep: true,
		},
		{
			name: "check removed in a span holding the index",
			then: func(s *state) time.Time {
				s.applyChecks(result[api.HealthChecks]{val: base[1:], index: 20}, t0)
				return t0
			},
			wantDirty: []string{"a"},
		},
		{
			name: "status change alone is dirty, the wake still needs its write",
			then: func(s *state) time.Time {
				s.applyChecks(result[api.HealthChecks]{val: api.HealthChecks{chk("n1", "ca", "a", "critical", 15), base[1]}, index: 15}, t0)
				s.probe, s.probeAt = 15, t0.Add(time.Millisecond)
				return t0.Add(time.Millisecond)
			},
			wantDirty: []string{"a"},
			wantSweep: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newState()
			s.applyServices(result[map[string][]string]{val: svcs, index: 10}, t0)
			s.applyChecks(result[api.HealthChecks]{val: base, index: 10}, t0)
			s.applyNodes(result[[]*api.Node]{val: []*api.Node{{Node: "n1", Address: "10.0.0.1"}}, index: 10}, t0)
			clear(s.dirty)
			s.applyServices(result[map[string][]string]{val: svcs, index: 20}, t0)
			if len(s.dirty) != 0 || len(s.pending) != 1 {
				t.Fatalf("unchanged names: dirty %v, pending %v; want none, one", s.dirty, s.pending)
			}
			now := tc.then(s)
			s.explain(now, grace)
			var dirty []string
			for name := range s.dirty {
				dirty = append(dirty, name)
			}
			slices.Sort(dirty)
			if !slices.Equal(dirty, tc.wantDirty) || s.sweep != tc.wantSweep {
				t.Fatalf("dirty %v sweep %v, want %v %v", dirty, s.sweep, tc.wantDirty, tc.wantSweep)
			}
			if wait := !tc.wantSweep && tc.wantDirty == nil; wait != (len(s.pending) == 1) {
				t.Fatalf("pending %v, want waiting %v", s.pending, wait)
			}
		})
	}
}
