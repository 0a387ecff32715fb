// Package loadreport counts what a proxy sends to each upstream, per
// cluster and locality, and reports it to the control plane over Envoy's
// Load Reporting Service (envoy.service.load_stats.v3): requests issued,
// succeeded, failed and in progress, and their latency as load metrics
// (names in package wire). The data path holds a *Locality per endpoint
// and calls Begin and End once per request; the client reads and resets
// the counters at the interval the server asks for.
package loadreport

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshvm/mesh/wire"
)

// Store holds the counters of every cluster and locality a proxy sent
// requests to. Its zero value is not usable; a nil *Store counts nothing.
type Store struct {
	mu   sync.Mutex
	locs map[key]*Locality
}

type key struct{ cluster, region, zone string }

// NewStore returns an empty store.
func NewStore() *Store { return &Store{locs: map[key]*Locality{}} }

// nBuckets is the latency histogram's size, the "inf" bucket included.
var nBuckets = len(wire.LoadLatencyBucketsMs) + 1

// Locality is the counters of one cluster's endpoints in one locality.
// Its methods accept nil (nothing is counted).
type Locality struct {
	k key
	// issued, succeeded and errored count since the store was created;
	// inFlight is the current number of requests in progress.
	issued, succeeded, errored atomic.Uint64
	inFlight                   atomic.Int64
	latencyMicros              atomic.Uint64 // sum over finished requests
	finished                   atomic.Uint64
	buckets                    []bucket
	// last is what the previous Collect reported (Collect is serialised
	// by the store's lock).
	last counts
}

type bucket struct{ n, micros atomic.Uint64 }

type counts struct {
	issued, succeeded, errored, finished, latencyMicros uint64
	buckets                                             []struct{ n, micros uint64 }
}

// Locality returns the counters of cluster's endpoints in region/zone,
// creating them on first use. It is called when an endpoint set is
// built, not per request.
func (s *Store) Locality(cluster, region, zone string) *Locality {
	if s == nil {
		return nil
	}
	k := key{cluster, region, zone}
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.locs[k]
	if l == nil {
		l = &Locality{k: k, buckets: make([]bucket, nBuckets)}
		l.last.buckets = make([]struct{ n, micros uint64 }, nBuckets)
		s.locs[k] = l
	}
	return l
}

// Begin counts a request issued to an endpoint of l.
func (l *Locality) Begin() {
	if l == nil {
		return
	}
	l.issued.Add(1)
	l.inFlight.Add(1)
}

// End counts the end of a request Begin counted: ok is false for a
// failed one (a 5xx answer, a reset, a timeout, a refusal after it was
// issued), d its latency. A request the caller abandoned is ended with
// ok true: it is not the upstream's error.
func (l *Locality) End(ok bool, d time.Duration) {
	if l == nil {
		return
	}
	l.inFlight.Add(-1)
	if ok {
		l.succeeded.Add(1)
	} else {
		l.errored.Add(1)
	}
	us := uint64(max(d.Microseconds(), 0))
	l.latencyMicros.Add(us)
	l.finished.Add(1)
	ms := float64(us) / 1000
	i := sort.SearchFloat64s(wire.LoadLatencyBucketsMs, ms) // first bound >= ms
	l.buckets[i].n.Add(1)
	l.buckets[i].micros.Add(us)
}

// Stats is one locality's load over one interval.
type Stats struct {
	Cluster, Region, Zone      string
	Issued, Succeeded, Errored uint64
	InProgress                 uint64
	Finished                   uint64
	LatencyMs                  float64
	BucketCounts               []uint64  // per wire.LoadLatencyBucketsMs, then "inf"
	BucketLatencyMs            []float64 // the latency sum of each bucket
}

// Collect returns each locality's load since the previous Collect,
// sorted by cluster and locality, leaving out localities with nothing
// issued, finished or in flight. clusters, when not nil, keeps only the
// clusters it names.
func (s *Store) Collect(clusters map[string]bool) []Stats {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Stats
	for k, l := range s.locs {
		if clusters != nil && !clusters[k.cluster] {
			continue
		}
		now := counts{issued: l.issued.Load(), succeeded: l.succeeded.Load(), errored: l.errored.Load(),
			finished: l.finished.Load(), latencyMicros: l.latencyMicros.Load(), buckets: make([]struct{ n, micros uint64 }, nBuckets)}
		for i := range l.buckets {
			now.buckets[i].n, now.buckets[i].micros = l.buckets[i].n.Load(), l.buckets[i].micros.Load()
		}
		st := Stats{Cluster: k.cluster, Region: k.region, Zone: k.zone,
			Issued: now.issued - l.last.issued, Succeeded: now.succeeded - l.last.succeeded, Errored: now.errored - l.last.errored,
			InProgress: uint64(max(l.inFlight.Load(), 0)), Finished: now.finished - l.last.finished,
			LatencyMs:       float64(now.latencyMicros-l.last.latencyMicros) / 1000,
			BucketCounts:    make([]uint64, nBuckets),
			BucketLatencyMs: make([]float64, nBuckets)}
		for i := range now.buckets {
			st.BucketCounts[i] = now.buckets[i].n - l.last.buckets[i].n
			st.BucketLatencyMs[i] = float64(now.buckets[i].micros-l.last.buckets[i].micros) / 1000
		}
		l.last = now
		if st.Issued == 0 && st.Finished == 0 && st.InProgress == 0 {
			continue
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Cluster != b.Cluster {
			return a.Cluster < b.Cluster
		}
		if a.Region != b.Region {
			return a.Region < b.Region
		}
		return a.Zone < b.Zone
	})
	return out
}
