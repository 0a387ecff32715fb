package balancer

import "fmt"

// Hashing reports whether the policy picks by a request hash (RingHash,
// Maglev) rather than by turns or at random.
func (p Policy) Hashing() bool { return p == RingHash || p == Maglev }

// hashing is a hashing Picker's lookup structure: one of the two.
type hashing struct {
	ring   *ring
	maglev *maglev
}

func (hs *hashing) init(p *Picker, opts Options) error {
	switch p.policy {
	case RingHash:
		r, err := newRing(p.eps, opts.MinRingSize, opts.MaxRingSize)
		if err != nil {
			return fmt.Errorf("new picker: ring hash: %w", err)
		}
		hs.ring = r
	case Maglev:
		size := opts.TableSize
		if size == 0 {
			size = MaglevTableSize
		}
		if !prime(size) || size > maxMaglevTableSize {
			return fmt.Errorf("new picker: maglev: table size %d is not a prime up to %d", size, maxMaglevTableSize)
		}
		hs.maglev = newMaglev(p, size)
	}
	return nil
}

// PickHash returns the index of the endpoint for a request whose hash is
// h (see the hash_policy of a route), or -1 when there are no endpoints.
// The same h gives the same endpoint while the endpoints and their health
// stay the same. attempt counts the tries of the request before this one:
// each retry moves on to another endpoint where there is one. Ejected
// endpoints are skipped (their requests go where they would go without
// them); when every endpoint is ejected, ejection is ignored. For a policy
// that does not hash, PickHash is Pick.
func (p *Picker) PickHash(h uint64, attempt int) int {
	if len(p.eps) == 0 {
		return -1
	}
	switch p.policy {
	case RingHash:
		return p.hash.ring.pick(p, h, attempt)
	case Maglev:
		return p.hash.maglev.pick(p, h, attempt)
	}
	return p.Pick()
}

// healthKey summarises which endpoints are healthy now: the health
// version when the picker has one, else a hash of the ejected indexes
// (recounted on each call).
func (p *Picker) healthKey() uint64 {
	if p.version != nil {
		return p.version.HealthVersion()
	}
	k := uint64(14695981039346656037)
	for i := range p.eps {
		if !p.eps[i].healthy() {
			k = (k ^ uint64(i+1)) * 1099511628211
		}
	}
	return k
}

// weightOf is an endpoint's weight, 0 meaning 1.
func weightOf(e *Endpoint) uint64 {
	if e.Weight == 0 {
		return 1
	}
	return uint64(e.Weight)
}

// prime says whether n is a prime (trial division: table sizes are small).
func prime(n uint64) bool {
	if n < 2 {
		return false
	}
	for d := uint64(2); d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}
