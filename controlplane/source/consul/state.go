package consul

import (
	"maps"
	"slices"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshvm/mesh/controlplane/model"
)

// state is what the sync loop knows of the catalog: the three watched
// lists as last applied, every check as last read, each fetched service's
// instances with the per-service index of that answer, and the work the
// differences call for. It does no I/O; the sync loop feeds it answers and
// runs its work.
//
// Which service changed is found from these lists:
//   - catalog/services (watched): a service added or removed, or its tag
//     set changed;
//   - the failing checks (watched: health/state/any filtered to the checks
//     that are not passing): a check entering the list (gone critical or
//     warning, or added so), leaving it (passing again, or removed), or in
//     it with a new status, service or service tags (a node's own check
//     concerns every service on it). The checks that are not passing
//     decide every instance's health, so a check change that keeps a check
//     passing changes no instance and costs one small answer;
//   - every check (health/state/any, read once per catalog/services
//     change, not watched: ~35 MB of JSON at 100,000 checks): a check
//     added or removed with a registration, or whose status, name or
//     service tags changed since the last read;
//   - catalog/nodes (watched): a node removed or readdressed (instances
//     without an address of their own take the node's).
//
// A catalog/services wake that none of these explains (an instance
// added, removed or re-registered with no check change, e.g. a new port)
// is matched with the checks written at the same Raft index: Consul
// writes a registration and its checks in one transaction, so a check
// whose ModifyIndex equals the catalog's new index names the service. A
// wake that nothing names makes a sweep: every service's per-service index
// is read with a query that returns no data, and the services whose index
// moved are fetched. Sweeps also run every Options.Resync, as a safety net.
type state struct {
	// services is catalog/services: name -> sorted tag set ("consul" left out).
	services     map[string][]string
	catalogIndex uint64
	// checks is every check as last read; checksAt is the catalog index
	// that read followed (0: not read yet).
	checks      map[checkKey]checkInfo
	checksIndex uint64
	checksAt    uint64
	// failing is the failing-checks watch's list.
	failing      map[checkKey]checkInfo
	failingIndex uint64
	nodes        map[string]string // node -> address
	nodesIndex   uint64
	baselines    int // how many of the three lists have been applied once

	known        map[string]*fetched
	nodeServices map[string]map[string]bool // node -> services with an instance on it

	// dirty services must be fetched; sweep asks for a sweep.
	dirty map[string]bool
	sweep bool
	// changed are the services whose instances changed since the last
	// view (View.Changed); viewed says a view was made.
	changed map[string]bool
	viewed  bool

	// checkWrites maps a Raft index to the services whose checks were
	// written at it; spans are index ranges in which checks or nodes were
	// removed; pending are catalog wakes not yet explained.
	checkWrites map[uint64]write
	spans       []span
	pending     []span // lo unused; hi = catalog index, at = when seen
}

type checkKey struct{ node, id string }

type checkInfo struct {
	service, serviceID, name, status string
	tags                             []string
	modify                           uint64
}

type fetched struct {
	index     uint64
	instances []model.Instance
}

type write struct {
	services []string
	at       time.Time
}

type span struct {
	lo, hi uint64
	at     time.Time
}

func newState() *state {
	return &state{
		services: map[string][]string{}, checks: map[checkKey]checkInfo{}, failing: map[checkKey]checkInfo{}, nodes: map[string]string{},
		known: map[string]*fetched{}, nodeServices: map[string]map[string]bool{},
		dirty: map[string]bool{}, checkWrites: map[uint64]write{}, changed: map[string]bool{},
	}
}

// ready reports whether all three watched lists have been applied once:
// the first fetches start after that, so any change after a list's first
// answer is seen by a later answer.
func (s *state) ready() bool { return s.baselines == 3 }

// complete reports whether every listed service has been fetched.
func (s *state) complete() bool {
	for name := range s.services {
		if s.known[name] == nil {
			return false
		}
	}
	return true
}

// applyServices applies a catalog/services answer and reports whether the
// view lost a service.
func (s *state) applyServices(r result[map[string][]string], now time.Time) (removed bool) {
	first := s.catalogIndex == 0
	if first {
		s.baselines++
	}
	next := make(map[string][]string, len(r.val))
	explained := false
	for name, tags := range r.val {
		if name == "consul" {
			continue
		}
		tags = slices.Clone(tags)
		slices.Sort(tags)
		tags = slices.Compact(tags)
		next[name] = tags
		if old, ok := s.services[name]; !ok || !slices.Equal(old, tags) {
			s.dirty[name] = true
			explained = true
		}
	}
	for name := range s.services {
		if _, ok := next[name]; !ok {
			explained = true
			delete(s.dirty, name)
			if f := s.known[name]; f != nil {
				s.forget(name, f)
				s.changed[name] = true
				removed = true
			}
		}
	}
	s.services = next
	if r.index < s.catalogIndex {
		s.sweep = true // the index went backwards: another server or a restore
	} else if !first && !explained && r.index > s.catalogIndex {
		s.pending = append(s.pending, span{hi: r.index, at: now})
	}
	s.catalogIndex = r.index
	return removed
}

// applyFailing applies an answer of the failing-checks watch: the checks
// that are not passing. An answer with the same checks (the watch wakes on
// every check write, passing ones included) marks nothing.
func (s *state) applyFailing(r result[api.HealthChecks]) {
	first := s.failingIndex == 0
	if first {
		s.baselines++
	}
	next := make(map[checkKey]checkInfo, len(r.val))
	for _, c := range r.val {
		if c == nil {
			continue
		}
		k := checkKey{c.Node, c.CheckID}
		info := checkInfo{service: c.ServiceName, serviceID: c.ServiceID, name: c.Name, status: c.Status, tags: c.ServiceTags, modify: c.ModifyIndex}
		next[k] = info
		if first {
			continue
		}
		if old, ok := s.failing[k]; !ok || old.status != info.status || old.service != info.service || old.serviceID != info.serviceID || !slices.Equal(old.tags, info.tags) {
			s.touch(c.Node, info.service)
			if ok {
				s.touch(c.Node, old.service)
			}
		}
	}
	if !first {
		for k, old := range s.failing {
			if _, ok := next[k]; !ok {
				s.touch(k.node, old.service)
			}
		}
	}
	s.failing, s.failingIndex = next, r.index
}

// needsChecks reports whether every check must be read: once at the start,
// then after each catalog/services change, the index going backwards
// included (a registration writes its checks; see explain).
func (s *state) needsChecks() bool { return s.checksAt != s.catalogIndex }

// applyChecks applies a health/state/any answer read after the catalog
// index at.
func (s *state) applyChecks(r result[api.HealthChecks], at uint64, now time.Time) {
	first := s.checksAt == 0
	defer func() { s.checksAt = at }()
	next := make(map[checkKey]checkInfo, len(r.val))
	for _, c := range r.val {
		if c == nil {
			continue
		}
		k := checkKey{c.Node, c.CheckID}
		info := checkInfo{service: c.ServiceName, serviceID: c.ServiceID, name: c.Name, status: c.Status, tags: c.ServiceTags, modify: c.ModifyIndex}
		next[k] = info
		if first {
			continue
		}
		old, ok := s.checks[k]
		if ok && old.modify == info.modify {
			continue
		}
		if !ok || old.status != info.status || old.service != info.service || old.serviceID != info.serviceID || !slices.Equal(old.tags, info.tags) {
			s.touch(c.Node, info.service)
			if ok {
				s.touch(c.Node, old.service)
			}
		}
		w := s.checkWrites[info.modify]
		w.services, w.at = append(w.services, info.service), now
		if info.service == "" {
			w.services = append(w.services, slices.Collect(maps.Keys(s.nodeServices[c.Node]))...)
		}
		s.checkWrites[info.modify] = w
	}
	if !first {
		gone := false
		for k, old := range s.checks {
			if _, ok := next[k]; !ok {
				s.touch(k.node, old.service)
				gone = true
			}
		}
		if gone || r.index < s.checksIndex {
			s.spans = append(s.spans, span{lo: min(s.checksIndex, r.index), hi: max(r.index, s.checksIndex), at: now})
		}
	}
	s.checks, s.checksIndex = next, r.index
}

// applyNodes applies a catalog/nodes answer.
func (s *state) applyNodes(r result[[]*api.Node], now time.Time) {
	first := s.nodesIndex == 0
	if first {
		s.baselines++
	}
	next := make(map[string]string, len(r.val))
	for _, n := range r.val {
		if n != nil {
			next[n.Node] = n.Address
		}
	}
	if !first {
		changed := false
		for node, addr := range s.nodes {
			if a, ok := next[node]; !ok || a != addr {
				s.touch(node, "")
				changed = true
			}
		}
		if changed {
			s.spans = append(s.spans, span{lo: min(s.nodesIndex, r.index), hi: max(r.index, s.nodesIndex), at: now})
		}
	}
	s.nodes, s.nodesIndex = next, r.index
}

// touch marks service dirty, or with service "" every service on node.
func (s *state) touch(node, service string) {
	if service != "" {
		s.dirty[service] = true
		return
	}
	for name := range s.nodeServices[node] {
		s.dirty[name] = true
	}
}

// explain settles the pending catalog wakes that can be: by the checks
// written at the same index, by a span of removals, or - once the checks
// list has caught up with the wake's index, or after grace - by a sweep.
// It also forgets attribution records nothing can need any more. It
// returns the earliest time a pending wake will time out (zero if none).
func (s *state) explain(now time.Time, grace time.Duration) time.Time {
	var deadline time.Time
	kept := s.pending[:0]
	for _, p := range s.pending {
		if w, ok := s.checkWrites[p.hi]; ok {
			for _, name := range w.services {
				if name != "" {
					s.dirty[name] = true
				}
			}
			continue
		}
		if slices.ContainsFunc(s.spans, func(sp span) bool { return sp.lo < p.hi && p.hi <= sp.hi }) {
			continue
		}
		// The checks were read after the wake, without a check written at
		// its index: the write touched no check. Or the read is late
		// (failing): give up.
		if s.checksAt >= p.hi || now.Sub(p.at) >= grace {
			s.sweep = true
			continue
		}
		kept = append(kept, p)
		if d := p.at.Add(grace); deadline.IsZero() || d.Before(deadline) {
			deadline = d
		}
	}
	s.pending = kept
	// A record older than the grace period can explain no wake still to
	// come (a wake that late is swept anyway); keep the rest.
	old := now.Add(-2 * grace)
	for i, w := range s.checkWrites {
		if w.at.Before(old) || (i <= s.catalogIndex && len(s.pending) == 0) {
			delete(s.checkWrites, i)
		}
	}
	s.spans = slices.DeleteFunc(s.spans, func(sp span) bool {
		return sp.at.Before(old) || (sp.hi <= s.catalogIndex && len(s.pending) == 0)
	})
	return deadline
}

// prune forgets dirty services the catalog does not list: removed ones,
// and new ones the catalog's answer that lists them will mark again.
func (s *state) prune() {
	for name := range s.dirty {
		if _, listed := s.services[name]; !listed {
			delete(s.dirty, name)
		}
	}
}

// store records a fetched service and reports whether its instances
// changed.
func (s *state) store(name string, index uint64, instances []model.Instance) bool {
	if _, listed := s.services[name]; !listed {
		return false // removed while it was fetched
	}
	old := s.known[name]
	if old != nil {
		s.forget(name, old)
	}
	s.known[name] = &fetched{index: index, instances: instances}
	same := old != nil && equalInstances(old.instances, instances)
	if !same {
		s.changed[name] = true
	}
	for _, in := range instances {
		if in.Node == "" {
			continue
		}
		set := s.nodeServices[in.Node]
		if set == nil {
			set = map[string]bool{}
			s.nodeServices[in.Node] = set
		}
		set[name] = true
	}
	return !same
}

func (s *state) forget(name string, f *fetched) {
	for _, in := range f.instances {
		if set := s.nodeServices[in.Node]; set != nil {
			delete(set, name)
			if len(set) == 0 {
				delete(s.nodeServices, in.Node)
			}
		}
	}
	delete(s.known, name)
}

// view is the full current view: every listed service's last fetched
// instances, naming the services changed since the previous view (none
// for the first).
func (s *state) view() model.View {
	defer func() { s.changed, s.viewed = map[string]bool{}, true }()
	n := 0
	for _, f := range s.known {
		n += len(f.instances)
	}
	v := model.View{Instances: make([]model.Instance, 0, n)}
	for _, f := range s.known {
		v.Instances = append(v.Instances, f.instances...)
	}
	if s.viewed {
		v.Changed = append([]string{}, slices.Sorted(maps.Keys(s.changed))...)
	}
	return v
}

func equalInstances(a, b []model.Instance) bool {
	return slices.EqualFunc(a, b, func(x, y model.Instance) bool {
		return x.Service == y.Service && x.ID == y.ID && x.Node == y.Node && x.Address == y.Address &&
			x.Port == y.Port && x.Check == y.Check && x.Weight == y.Weight &&
			slices.Equal(x.Tags, y.Tags) && maps.Equal(x.Meta, y.Meta)
	})
}
