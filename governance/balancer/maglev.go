package balancer

import (
	"sync"
	"sync/atomic"

	"github.com/cespare/xxhash/v2"
)

// MaglevTableSize is the size of a Maglev lookup table (Envoy's default,
// a prime).
const MaglevTableSize = 65537

// maxMaglevTableSize is the largest table Envoy accepts.
const maxMaglevTableSize = 5000011

// maglev is Maglev consistent hashing (Eisenbud et al., NSDI 2016, as
// Envoy's MAGLEV lb_policy does it): every endpoint has a permutation of
// the table's slots (an offset and a skip from two xxHash64s of its key);
// the endpoints take turns, in proportion to their weights, claiming the
// next free slot of their permutation until the table is full. A request
// with hash h goes to the endpoint in slot h mod the table size.
//
// As Envoy does, the table holds the healthy endpoints only: it is
// rebuilt (once, by the first pick that sees it) when health changes, and
// over every endpoint when none is healthy.
type maglev struct {
	size uint64
	cur  atomic.Pointer[maglevTable]
	mu   sync.Mutex // one rebuild at a time
}

type maglevTable struct {
	health uint64 // the Picker's healthKey it was built at
	slots  []int32
}

func newMaglev(p *Picker, size uint64) *maglev {
	m := &maglev{size: size}
	m.cur.Store(m.build(p, p.healthKey()))
	return m
}

func (m *maglev) table(p *Picker) *maglevTable {
	k := p.healthKey()
	if t := m.cur.Load(); t.health == k {
		return t
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if t := m.cur.Load(); t.health == k {
		return t
	}
	t := m.build(p, k)
	m.cur.Store(t)
	return t
}

// build fills a table with the endpoints healthy now (all of them when
// none is).
func (m *maglev) build(p *Picker, health uint64) *maglevTable {
	t := &maglevTable{health: health}
	idx := make([]int32, 0, len(p.eps))
	for i := range p.eps {
		if p.eps[i].healthy() {
			idx = append(idx, int32(i))
		}
	}
	if len(idx) == 0 {
		for i := range p.eps {
			idx = append(idx, int32(i))
		}
	}
	if len(idx) == 0 {
		return t
	}
	type entry struct {
		i              int32
		offset, skip   uint64
		next           uint64
		weight, target uint64
	}
	es := make([]entry, len(idx))
	var maxW uint64
	for k, i := range idx {
		key := p.eps[i].Key
		d := xxhash.NewWithSeed(1)
		_, _ = d.WriteString(key)
		w := weightOf(&p.eps[i])
		es[k] = entry{i: i, offset: xxhash.Sum64String(key) % m.size, skip: d.Sum64()%(m.size-1) + 1, weight: w}
		maxW = max(maxW, w)
	}
	slots := make([]int32, m.size)
	for s := range slots {
		slots[s] = -1
	}
	filled := uint64(0)
	// Each round every endpoint whose weight has earned a turn claims one
	// slot: the heaviest every round, one of a third its weight every
	// third round.
	for round := uint64(1); filled < m.size; round++ {
		for k := range es {
			if filled == m.size {
				break
			}
			e := &es[k]
			if round*e.weight < e.target {
				continue
			}
			e.target += maxW
			c := (e.offset + e.skip*e.next) % m.size
			for slots[c] >= 0 {
				e.next++
				c = (e.offset + e.skip*e.next) % m.size
			}
			slots[c] = e.i
			e.next++
			filled++
		}
	}
	t.slots = slots
	return t
}

// pick returns the endpoint of h's slot; a retry (attempt > 0) rehashes
// until it finds an endpoint the earlier tries did not go to, where there
// is one.
func (m *maglev) pick(p *Picker, h uint64, attempt int) int {
	t := m.table(p)
	if len(t.slots) == 0 {
		return -1
	}
	i := t.slots[h%m.size]
	if attempt == 0 {
		return int(i)
	}
	var seen [8]int32
	seen[0] = i
	found := 1
	attempt = min(attempt, len(seen)-1)
	for k := uint64(1); k <= 64 && found <= attempt; k++ {
		j := t.slots[mix(h, k)%m.size]
		dup := false
		for _, s := range seen[:found] {
			dup = dup || s == j
		}
		if !dup {
			seen[found] = j
			found++
		}
	}
	return int(seen[found-1])
}

// mix derives the k-th alternative of hash h (SplitMix64's finaliser).
func mix(h, k uint64) uint64 {
	z := h + k*0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}
