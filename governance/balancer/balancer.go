// Package balancer picks the endpoint of an upstream service that a
// request goes to: round robin, least request (the better of two random
// choices by requests in flight) or random, optionally locality-aware
// (prefer the caller's zone, spill over to the others when the zone is
// unhealthy or overloaded); or by a request's 64-bit hash, consistently
// (ring hash, ringhash.go; Maglev, maglev.go). A Picker works over an immutable slice of
// endpoints whose live state (requests in flight, ejection) it reads
// through pointers, so a pick allocates nothing and takes no lock.
package balancer

import (
	"fmt"
	"math/rand/v2"
	"sync/atomic"
)

// Policy is a load-balancing policy, by its Envoy lb_policy meaning.
type Policy uint8

const (
	// RoundRobin takes endpoints in turn.
	RoundRobin Policy = iota
	// LeastRequest picks two endpoints at random and takes the one with
	// fewer requests in flight (Envoy's default choice_count of 2).
	LeastRequest
	// Random picks an endpoint uniformly at random.
	Random
	// RingHash picks by a request hash on Envoy's ketama-like ring
	// (ringhash.go).
	RingHash
	// Maglev picks by a request hash in a Maglev lookup table
	// (maglev.go).
	Maglev
)

// ParsePolicy reads a policy by its configuration name.
func ParsePolicy(name string) (Policy, error) {
	switch name {
	case "round_robin", "":
		return RoundRobin, nil
	case "least_request":
		return LeastRequest, nil
	case "random":
		return Random, nil
	case "ring_hash":
		return RingHash, nil
	case "maglev":
		return Maglev, nil
	}
	return 0, fmt.Errorf("parse load balancing policy: unknown policy %q", name)
}

func (p Policy) String() string {
	switch p {
	case RoundRobin:
		return "round_robin"
	case LeastRequest:
		return "least_request"
	case Random:
		return "random"
	case RingHash:
		return "ring_hash"
	case Maglev:
		return "maglev"
	}
	return fmt.Sprintf("Policy(%d)", uint8(p))
}

// Health tells whether an endpoint is out of load balancing;
// *outlier.Host implements it.
type Health interface {
	Ejected() bool
}

// HealthVersion changes whenever any endpoint's Health answer changes;
// *outlier.Detector implements it. A locality-aware Picker uses it to
// recompute zone health only when health changed.
type HealthVersion interface {
	HealthVersion() uint64
}

// Endpoint is what a Picker knows of one endpoint: its zone and pointers
// to its live state, shared with whoever updates it.
type Endpoint struct {
	Zone string
	// Key is what the hashing policies place the endpoint by (its
	// address, host:port, as Envoy hashes it); Weight is its relative
	// weight there (0 means 1).
	Key    string
	Weight uint32
	// Active counts the requests in flight to the endpoint; the caller
	// increments it when it sends a request and decrements it when the
	// request ends. nil reads as zero.
	Active *atomic.Int64
	// Health says whether the endpoint is ejected; nil means never.
	Health Health
}

func (e *Endpoint) active() int64 {
	if e.Active == nil {
		return 0
	}
	return e.Active.Load()
}

func (e *Endpoint) healthy() bool { return e.Health == nil || !e.Health.Ejected() }

// DefaultOverprovisioning is Envoy's overprovisioning factor: a zone with
// at least 1/1.4 ≈ 71% of its endpoints healthy takes all the traffic it
// would take if all were healthy.
const DefaultOverprovisioning = 1.4

// Options configure a Picker.
type Options struct {
	Policy Policy
	// LocalZone is the caller's zone. When set, the picker prefers
	// endpoints in it.
	LocalZone string
	// Overprovisioning is the factor by which the local zone's healthy
	// share is multiplied: with h of n local endpoints healthy, the local
	// zone takes min(1, Overprovisioning × h/n) of the requests and the
	// other zones the rest. Zero means DefaultOverprovisioning.
	Overprovisioning float64
	// SpillActive, when positive, is the number of requests in flight at
	// which a local endpoint counts as overloaded: the request then goes
	// to an endpoint in another zone if that one has fewer in flight.
	SpillActive int64
	// Version tells the picker when health changed. Without it the
	// locality-aware picker recounts the local zone's health on every pick.
	Version HealthVersion
	// Rand returns uniformly random numbers; nil means math/rand/v2.
	Rand func() uint64
	// MinRingSize and MaxRingSize bound the RingHash ring (Envoy's
	// ring_hash_lb_config); zero means Envoy's defaults, 1024 and 8M.
	MinRingSize, MaxRingSize uint64
	// TableSize is the Maglev table's size, a prime; zero means
	// MaglevTableSize.
	TableSize uint64
}

// Picker picks endpoints. It is safe for concurrent use.
type Picker struct {
	eps    []Endpoint
	policy Policy
	rnd    func() uint64

	all group
	// Locality: set only when some endpoints are local and some are not.
	locality    bool
	local       group
	remote      group
	overprov    float64
	spillActive int64
	version     HealthVersion
	// hashing state (RingHash, Maglev; see hash.go).
	hash hashing
	// localShare packs the local zone's share of requests (high 32 bits,
	// out of 2^32-1) with the low 32 bits of the health version it was
	// computed at; the lowest bit of the share field marks "computed".
	localShare atomic.Uint64
}

// group is a subset of the endpoints with its own round-robin position.
type group struct {
	idx []int // nil means all endpoints, in order
	n   int
	rr  atomic.Uint64
}

func (g *group) at(k int) int {
	if g.idx == nil {
		return k
	}
	return g.idx[k]
}

// New returns a picker over endpoints, which it keeps and never modifies.
func New(endpoints []Endpoint, opts Options) (*Picker, error) {
	if opts.Policy > Maglev {
		return nil, fmt.Errorf("new picker: unknown policy %d", opts.Policy)
	}
	if opts.Overprovisioning < 0 {
		return nil, fmt.Errorf("new picker: overprovisioning factor must not be negative, got %g", opts.Overprovisioning)
	}
	p := &Picker{
		eps:         endpoints,
		policy:      opts.Policy,
		rnd:         opts.Rand,
		overprov:    opts.Overprovisioning,
		spillActive: opts.SpillActive,
		version:     opts.Version,
	}
	if p.rnd == nil {
		p.rnd = rand.Uint64
	}
	if p.overprov == 0 {
		p.overprov = DefaultOverprovisioning
	}
	p.all.n = len(endpoints)
	if p.policy.Hashing() {
		// Consistent hashing places endpoints by key alone: no locality.
		return p, p.hash.init(p, opts)
	}
	if opts.LocalZone != "" {
		for i := range endpoints {
			if endpoints[i].Zone == opts.LocalZone {
				p.local.idx = append(p.local.idx, i)
			} else {
				p.remote.idx = append(p.remote.idx, i)
			}
		}
		p.local.n, p.remote.n = len(p.local.idx), len(p.remote.idx)
		p.locality = p.local.n > 0 && p.remote.n > 0
	}
	return p, nil
}

// Policy is the picker's policy.
func (p *Picker) Policy() Policy { return p.policy }

// Endpoints returns the endpoints the picker was made with.
func (p *Picker) Endpoints() []Endpoint { return p.eps }

// Pick returns the index of the endpoint to send a request to, or -1 when
// there are no endpoints. Ejected endpoints are skipped; when every
// endpoint is ejected the picker ignores ejection rather than fail
// (Envoy's panic mode).
func (p *Picker) Pick() int {
	if p.policy.Hashing() {
		// A request without a hash goes to a random place, as in Envoy.
		return p.PickHash(p.rnd(), 0)
	}
	if p.locality {
		if i := p.pickLocality(); i >= 0 {
			return i
		}
	} else if i := p.pickIn(&p.all); i >= 0 {
		return i
	}
	return p.pickAny()
}

func (p *Picker) pickLocality() int {
	share := p.share()
	if share != 1<<32-1 && (share == 0 || uint32(p.rnd()) >= share) {
		if i := p.pickIn(&p.remote); i >= 0 {
			return i
		}
		return p.pickIn(&p.local)
	}
	i := p.pickIn(&p.local)
	if i < 0 {
		return p.pickIn(&p.remote)
	}
	if p.spillActive > 0 {
		if a := p.eps[i].active(); a >= p.spillActive {
			if r := p.pickIn(&p.remote); r >= 0 && p.eps[r].active() < a {
				return r
			}
		}
	}
	return i
}

// share returns the local zone's share of requests out of 2^32 (capped at
// 2^32-1), recomputing it when health changed.
func (p *Picker) share() uint32 {
	if p.version == nil {
		return p.computeShare()
	}
	v := uint32(p.version.HealthVersion())
	s := p.localShare.Load()
	if s&(1<<32) != 0 && uint32(s) == v {
		share := uint32(s >> 33)
		if share == 1<<31-1 {
			return 1<<32 - 1
		}
		return share << 1
	}
	share := p.computeShare()
	p.localShare.Store(uint64(share>>1)<<33 | 1<<32 | uint64(v))
	return share
}

func (p *Picker) computeShare() uint32 {
	healthyLocal := 0
	for k := range p.local.n {
		if p.eps[p.local.idx[k]].healthy() {
			healthyLocal++
		}
	}
	if healthyLocal == 0 {
		return 0
	}
	f := p.overprov * float64(healthyLocal) / float64(p.local.n)
	if f >= 1 {
		return 1<<32 - 1
	}
	return uint32(f * (1 << 32))
}

// pickIn picks a healthy endpoint of g by the policy, or returns -1 when g
// has none. Unhealthy endpoints are skipped without favouring their
// neighbours: round robin moves on to the next turn, the random policies
// draw again.
func (p *Picker) pickIn(g *group) int {
	n := g.n
	switch {
	case n == 0:
		return -1
	case n == 1:
		if i := g.at(0); p.eps[i].healthy() {
			return i
		}
		return -1
	}
	switch p.policy {
	case RoundRobin:
		for range n {
			if i := g.at(int((g.rr.Add(1) - 1) % uint64(n))); p.eps[i].healthy() {
				return i
			}
		}
		return p.scan(g, int(g.rr.Load()%uint64(n)))
	case Random:
		return p.randomHealthy(g, -1)
	}
	// LeastRequest: two distinct random endpoints from one random number.
	r := p.rnd()
	a := below(uint32(r), n)
	b := below(uint32(r>>32), n-1)
	if b >= a {
		b++
	}
	ia, ib := g.at(a), g.at(b)
	if !p.eps[ia].healthy() {
		if ia = p.randomHealthy(g, -1); ia < 0 {
			return -1
		}
	}
	if ib == ia || !p.eps[ib].healthy() {
		if ib = p.randomHealthy(g, ia); ib < 0 {
			return ia
		}
	}
	if p.eps[ib].active() < p.eps[ia].active() {
		return ib
	}
	return ia
}

// randomHealthy draws endpoints of g at random until it finds a healthy
// one other than not (uniform over those), n draws at most, then scans.
func (p *Picker) randomHealthy(g *group, not int) int {
	n := g.n
	for range n {
		if i := g.at(below(uint32(p.rnd()), n)); i != not && p.eps[i].healthy() {
			return i
		}
	}
	start := below(uint32(p.rnd()), n)
	for k := range n {
		if i := g.at((start + k) % n); i != not && p.eps[i].healthy() {
			return i
		}
	}
	return -1
}

// scan returns the first healthy endpoint of g from position start on.
func (p *Picker) scan(g *group, start int) int {
	for k := range g.n {
		if i := g.at((start + k) % g.n); p.eps[i].healthy() {
			return i
		}
	}
	return -1
}

// pickAny picks among all endpoints ignoring health.
func (p *Picker) pickAny() int {
	if len(p.eps) == 0 {
		return -1
	}
	if p.policy == RoundRobin {
		return int((p.all.rr.Add(1) - 1) % uint64(len(p.eps)))
	}
	return below(uint32(p.rnd()), len(p.eps))
}

// below maps a uniform 32-bit number to [0, n) with a multiply instead of
// a division (Lemire's method; the bias is below n/2^32).
func below(r uint32, n int) int {
	return int(uint64(r) * uint64(n) >> 32)
}
