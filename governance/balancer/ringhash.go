package balancer

import (
	"fmt"
	"math"
	"slices"
	"strconv"

	"github.com/cespare/xxhash/v2"
)

// Envoy's ring_hash_lb_config defaults and bounds.
const (
	DefaultMinRingSize = 1024
	DefaultMaxRingSize = 8 << 20
	maxRingSizeLimit   = 8 << 20
)

// ring is Envoy's ketama-like consistent-hash ring: each endpoint is
// placed on a 64-bit circle at the xxHash64 of "<key>_<n>" for n = 0, 1,
// ... as many times as its share of the weight asks for (the least
// weighted endpoint gets ceil(its share × minimum ring size) points, the
// others in proportion, the total capped at the maximum ring size); a
// request with hash h goes to the first point at or after h, wrapping.
//
// The ring is built once over every endpoint. An ejected endpoint is
// passed over by walking on to the next point, which is where its
// requests would go on a ring built without it: only its own keys move,
// and they come back when it does. (Envoy rebuilds its ring without
// unhealthy hosts, which also rescales the others' points; the walk keeps
// the ring and moves fewer keys.)
type ring struct {
	hashes []uint64 // sorted
	owners []int32  // endpoint index of each point
}

func newRing(eps []Endpoint, minSize, maxSize uint64) (*ring, error) {
	if minSize == 0 {
		minSize = DefaultMinRingSize
	}
	if maxSize == 0 {
		maxSize = DefaultMaxRingSize
	}
	switch {
	case maxSize > maxRingSizeLimit:
		return nil, fmt.Errorf("maximum ring size %d is over %d", maxSize, maxRingSizeLimit)
	case minSize > maxSize:
		return nil, fmt.Errorf("minimum ring size %d is over the maximum %d", minSize, maxSize)
	}
	r := &ring{}
	if len(eps) == 0 {
		return r, nil
	}
	var total uint64
	minW := uint64(math.MaxUint64)
	for i := range eps {
		w := weightOf(&eps[i])
		total += w
		minW = min(minW, w)
	}
	minNorm := float64(minW) / float64(total)
	scale := math.Min(math.Ceil(minNorm*float64(minSize))/minNorm, float64(maxSize))
	type point struct {
		h uint64
		i int32
	}
	pts := make([]point, 0, int(scale)+len(eps))
	var current, target float64
	buf := make([]byte, 0, 64)
	for i := range eps {
		target += scale * float64(weightOf(&eps[i])) / float64(total)
		for n := 0; current < target; n++ {
			buf = append(append(append(buf[:0], eps[i].Key...), '_'), strconv.Itoa(n)...)
			pts = append(pts, point{h: xxhash.Sum64(buf), i: int32(i)})
			current++
		}
	}
	slices.SortFunc(pts, func(a, b point) int {
		switch {
		case a.h < b.h:
			return -1
		case a.h > b.h:
			return 1
		}
		return int(a.i - b.i)
	})
	r.hashes = make([]uint64, len(pts))
	r.owners = make([]int32, len(pts))
	for k, pt := range pts {
		r.hashes[k], r.owners[k] = pt.h, pt.i
	}
	return r, nil
}

// Size is the number of points on the ring.
func (r *ring) size() int { return len(r.hashes) }

// pick returns the endpoint of the first point at or after h that is
// healthy and, for a retry, not one of the endpoints the earlier tries
// went to (those are the first attempt healthy endpoints on the walk).
func (r *ring) pick(p *Picker, h uint64, attempt int) int {
	n := len(r.hashes)
	if n == 0 {
		return -1
	}
	start, _ := slices.BinarySearch(r.hashes, h)
	if start == n {
		start = 0
	}
	var seen [8]int32
	attempt = min(attempt, len(seen)-1, len(p.eps)-1)
	found := 0
	for k := 0; k < n; k++ {
		i := r.owners[(start+k)%n]
		if !p.eps[i].healthy() || slices.Contains(seen[:found], i) {
			if k == 64 && !p.anyHealthy() {
				break
			}
			continue
		}
		if found == attempt {
			return int(i)
		}
		seen[found] = i
		found++
	}
	if found > 0 { // fewer healthy endpoints than tries: the last new one
		return int(seen[found-1])
	}
	return int(r.owners[start]) // every endpoint ejected: ignore ejection
}

// anyHealthy says whether some endpoint is not ejected.
func (p *Picker) anyHealthy() bool {
	for i := range p.eps {
		if p.eps[i].healthy() {
			return true
		}
	}
	return false
}
