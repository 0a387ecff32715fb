package consul

import (
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// TestExplainCatalogWake: a catalog/services answer whose index moved
// with the names and tags unchanged asks for every check to be read, and
// is attributed to the service whose check was written at the same index,
// or to removals; otherwise it makes a sweep, as soon as the checks read
// after it show no write at that index, or after grace.
func TestExplainCatalogWake(t *testing.T) {
	t0 := time.Unix(1000, 0)
	svcs := map[string][]string{"a": nil, "b": {"x"}}
	chk := func(node, id, svc, status string, idx uint64) *api.HealthCheck {
		return &api.HealthCheck{Node: node, CheckID: id, ServiceName: svc, ServiceID: svc + "-1", Status: status, ModifyIndex: idx}
	}
	base := api.HealthChecks{chk("n1", "ca", "a", "passing", 5), chk("n1", "cb", "b", "passing", 6)}
	for _, tc := range []struct {
		name string
		// then runs after the baselines (catalog at 10, checks read at
		// 10) and the catalog's wake at 20.
		then      func(s *state) time.Time
		wantDirty []string
		wantSweep bool
	}{
		{
			name: "check written at the same index names the service",
			then: func(s *state) time.Time {
				s.applyChecks(result[api.HealthChecks]{val: api.HealthChecks{chk("n1", "ca", "a", "passing", 20), base[1]}, index: 20}, 20, t0)
				return t0
			},
			wantDirty: []string{"a"},
		},
		{
			name: "checks read after the wake without a write at its index",
			then: func(s *state) time.Time {
				s.applyChecks(result[api.HealthChecks]{val: api.HealthChecks{chk("n1", "ca", "a", "passing", 21), base[1]}, index: 21}, 20, t0)
				return t0
			},
			wantSweep: true,
		},
		{
			name: "checks table behind the index",
			then: func(s *state) time.Time {
				s.applyChecks(result[api.HealthChecks]{val: base, index: 10}, 20, t0)
				return t0.Add(time.Millisecond)
			},
			wantSweep: true,
		},
		{
			name: "checks not read yet: wait",
			then: func(s *state) time.Time { return t0.Add(time.Millisecond) },
		},
		{
			name:      "checks read late past grace",
			then:      func(s *state) time.Time { return t0.Add(grace) },
			wantSweep: true,
		},
		{
			name: "check removed in a span holding the index",
			then: func(s *state) time.Time {
				s.applyChecks(result[api.HealthChecks]{val: base[1:], index: 20}, 20, t0)
				return t0
			},
			wantDirty: []string{"a"},
		},
		{
			name: "status change alone is dirty, the wake still needs its write",
			then: func(s *state) time.Time {
				s.applyChecks(result[api.HealthChecks]{val: api.HealthChecks{chk("n1", "ca", "a", "critical", 15), base[1]}, index: 15}, 20, t0)
				return t0.Add(time.Millisecond)
			},
			wantDirty: []string{"a"},
			wantSweep: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newState()
			s.applyServices(result[map[string][]string]{val: svcs, index: 10}, t0)
			s.applyFailing(result[api.HealthChecks]{index: 10})
			s.applyNodes(result[[]*api.Node]{val: []*api.Node{{Node: "n1", Address: "10.0.0.1"}}, index: 10}, t0)
			if !s.ready() || !s.needsChecks() {
				t.Fatalf("after the baselines: ready %v, needs checks %v; want both", s.ready(), s.needsChecks())
			}
			s.applyChecks(result[api.HealthChecks]{val: base, index: 10}, 10, t0)
			clear(s.dirty)
			s.applyServices(result[map[string][]string]{val: svcs, index: 20}, t0)
			if len(s.dirty) != 0 || len(s.pending) != 1 || !s.needsChecks() {
				t.Fatalf("unchanged names: dirty %v, pending %v, needs checks %v; want none, one, true", s.dirty, s.pending, s.needsChecks())
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

// TestFailingChecks: the failing-checks list marks a service when one of
// its checks enters the list, leaves it or changes status in it, and
// nothing when an answer has the same checks at a new index (a passing
// check written).
func TestFailingChecks(t *testing.T) {
	chk := func(id, svc, status string, idx uint64) *api.HealthCheck {
		return &api.HealthCheck{Node: "n1", CheckID: id, ServiceName: svc, ServiceID: svc + "-1", Status: status, ModifyIndex: idx}
	}
	base := api.HealthChecks{chk("ca", "a", "critical", 5)}
	for _, tc := range []struct {
		name      string
		next      api.HealthChecks
		wantDirty []string
	}{
		{name: "same checks, new index", next: base},
		{name: "same check with new output", next: api.HealthChecks{chk("ca", "a", "critical", 20)}},
		{name: "check goes critical", next: api.HealthChecks{base[0], chk("cb", "b", "critical", 20)}, wantDirty: []string{"b"}},
		{name: "check passing again or removed", next: nil, wantDirty: []string{"a"}},
		{name: "critical to warning", next: api.HealthChecks{chk("ca", "a", "warning", 20)}, wantDirty: []string{"a"}},
		{name: "moved to another service", next: api.HealthChecks{{Node: "n1", CheckID: "ca", ServiceName: "c", ServiceID: "c-1", Status: "critical", ModifyIndex: 20}}, wantDirty: []string{"a", "c"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newState()
			s.applyFailing(result[api.HealthChecks]{val: base, index: 10})
			if len(s.dirty) != 0 {
				t.Fatalf("baseline marked %v", s.dirty)
			}
			s.applyFailing(result[api.HealthChecks]{val: tc.next, index: 20})
			dirty := slices.Sorted(maps.Keys(s.dirty))
			if !slices.Equal(dirty, tc.wantDirty) {
				t.Fatalf("dirty %v, want %v", dirty, tc.wantDirty)
			}
		})
	}
}
