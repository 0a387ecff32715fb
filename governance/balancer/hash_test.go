package balancer

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// hashCluster is a cluster of n endpoints with addresses as keys.
func hashCluster(t testing.TB, n int) *cluster {
	zones := make([]string, n)
	c := newCluster(t, zones...)
	for i := range c.eps {
		c.eps[i].Key = fmt.Sprintf("10.0.%d.%d:15006", i/200, i%200+1)
	}
	return c
}

func keys(n int) []uint64 {
	r := rand.New(rand.NewPCG(7, 8))
	out := make([]uint64, n)
	for i := range out {
		out[i] = r.Uint64()
	}
	return out
}

func hashPicker(t testing.TB, pol Policy, eps []Endpoint, version HealthVersion) *Picker {
	t.Helper()
	p, err := New(eps, Options{Policy: pol, Version: version})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

var hashPolicies = []Policy{RingHash, Maglev}

func TestHashKeepsAKeyOnOneEndpoint(t *testing.T) {
	for _, pol := range hashPolicies {
		t.Run(pol.String(), func(t *testing.T) {
			c := hashCluster(t, 5)
			p := hashPicker(t, pol, c.eps, c.detector)
			ks := keys(10000)
			first := make([]int, len(ks))
			per := make([]int, 5)
			for i, k := range ks {
				first[i] = p.PickHash(k, 0)
				per[first[i]]++
			}
			for range 3 {
				_ = p.Pick() // requests without a hash in between
				for i, k := range ks {
					if got := p.PickHash(k, 0); got != first[i] {
						t.Fatalf("key %d: endpoint %d, then %d", k, first[i], got)
					}
				}
			}
			// Another picker over the same endpoints (another agent, or a
			// new config) agrees.
			q := hashPicker(t, pol, c.eps, c.detector)
			for i, k := range ks {
				if q.PickHash(k, 0) != first[i] {
					t.Fatalf("key %d: another picker disagrees", k)
				}
			}
			for i, n := range per { // 2,000 each if perfectly even
				if n < 1200 || n > 2800 {
					t.Errorf("endpoint %d has %d of 10000 keys, want about 2000: %v", i, n, per)
				}
			}
		})
	}
}

func TestHashLeavingEndpointMovesAboutOneNth(t *testing.T) {
	const n = 10
	for _, pol := range hashPolicies {
		t.Run(pol.String(), func(t *testing.T) {
			c := hashCluster(t, n)
			before := hashPicker(t, pol, c.eps, nil)
			gone := 3
			rest := append(append([]Endpoint{}, c.eps[:gone]...), c.eps[gone+1:]...)
			after := hashPicker(t, pol, rest, nil)
			ks := keys(10000)
			moved, movedOthers := 0, 0
			for _, k := range ks {
				b := before.PickHash(k, 0)
				a := after.PickHash(k, 0)
				if a >= gone {
					a++ // index in before's endpoints
				}
				if a != b {
					moved++
					if b != gone {
						movedOthers++
					}
				}
			}
			frac := float64(moved) / float64(len(ks))
			t.Logf("%s: one of %d endpoints left: %.1f%% of 10000 keys moved (%.1f%% from endpoints that stayed)",
				pol, n, 100*frac, 100*float64(movedOthers)/float64(len(ks)))
			// 1/N = 10% must move; Envoy's ring rescales the others'
			// points when N changes, moving some more; Maglev reshuffles a
			// few slots. Far below what a modulo hash moves (90%).
			if frac < 0.05 || frac > 0.25 {
				t.Errorf("%.1f%% of keys moved, want about %d%% (1/N)", 100*frac, 100/n)
			}
		})
	}
}

func TestHashSkipsEjectedEndpoints(t *testing.T) {
	const n = 5
	for _, pol := range hashPolicies {
		t.Run(pol.String(), func(t *testing.T) {
			c := hashCluster(t, n)
			p := hashPicker(t, pol, c.eps, c.detector)
			ks := keys(10000)
			before := make([]int, len(ks))
			for i, k := range ks {
				before[i] = p.PickHash(k, 0)
			}
			c.eject(t, 2)
			moved := 0
			for i, k := range ks {
				got := p.PickHash(k, 0)
				if got == 2 {
					t.Fatalf("key %d went to the ejected endpoint", k)
				}
				if before[i] != 2 && got != before[i] {
					moved++
				}
			}
			// Ring hash walks past the ejected endpoint: nobody else's key
			// moves. Maglev rebuilds its table: a few do.
			limit := 0
			if pol == Maglev {
				limit = len(ks) / 10
			}
			if moved > limit {
				t.Errorf("%d keys of endpoints still healthy moved, want at most %d", moved, limit)
			}
			// Every endpoint ejected: ejection is ignored rather than fail.
			c.eject(t, 0, 1, 3, 4)
			for _, k := range ks[:100] {
				if p.PickHash(k, 0) < 0 {
					t.Fatal("no endpoint with every endpoint ejected")
				}
			}
		})
	}
}

func TestHashRetryPicksAnotherEndpoint(t *testing.T) {
	for _, pol := range hashPolicies {
		t.Run(pol.String(), func(t *testing.T) {
			c := hashCluster(t, 4)
			p := hashPicker(t, pol, c.eps, c.detector)
			for _, k := range keys(1000) {
				a, b := p.PickHash(k, 0), p.PickHash(k, 1)
				if a == b {
					t.Fatalf("key %d: the retry went to the same endpoint %d", k, a)
				}
				if p.PickHash(k, 1) != b {
					t.Fatalf("key %d: the retry's endpoint is not stable", k)
				}
			}
			one := hashPicker(t, pol, c.eps[:1], c.detector)
			if one.PickHash(1, 1) != 0 {
				t.Fatal("a retry with one endpoint must go to it")
			}
		})
	}
}

func TestHashWeights(t *testing.T) {
	for _, pol := range hashPolicies {
		t.Run(pol.String(), func(t *testing.T) {
			c := hashCluster(t, 3)
			c.eps[0].Weight = 2 // twice the others: half the keys
			p := hashPicker(t, pol, c.eps, c.detector)
			per := make([]int, 3)
			for _, k := range keys(10000) {
				per[p.PickHash(k, 0)]++
			}
			if per[0] < 4000 || per[0] > 6000 {
				t.Errorf("weight 2 of 4 got %d of 10000 keys, want about 5000: %v", per[0], per)
			}
		})
	}
}

func TestHashWithoutAHashIsRandom(t *testing.T) {
	for _, pol := range hashPolicies {
		t.Run(pol.String(), func(t *testing.T) {
			c := hashCluster(t, 4)
			p, err := New(c.eps, Options{Policy: pol, Rand: seeded()})
			if err != nil {
				t.Fatal(err)
			}
			for i, n := range counts(t, p, 4000) {
				if n < 700 || n > 1300 {
					t.Errorf("endpoint %d: %d of 4000 picks, want about 1000", i, n)
				}
			}
		})
	}
}

func TestRingSizeOptions(t *testing.T) {
	c := hashCluster(t, 3)
	for _, tc := range []struct {
		name     string
		min, max uint64
		size     int
		err      bool
	}{
		{name: "defaults", size: 1026}, // ceil(1024/3) each
		{name: "small", min: 6, max: 100, size: 6},
		{name: "capped by the maximum", min: 1000, max: 1000, size: 1000}, // 3 × 334 over 1000
		{name: "minimum over maximum", min: 10, max: 5, err: true},
		{name: "maximum over 8M", max: 9 << 20, err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := New(c.eps, Options{Policy: RingHash, MinRingSize: tc.min, MaxRingSize: tc.max})
			if tc.err {
				if err == nil {
					t.Fatal("want an error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := p.hash.ring.size(); got != tc.size {
				t.Errorf("ring size %d, want %d", got, tc.size)
			}
		})
	}
}
