package loadreport

import (
	"sync"
	"testing"
	"time"

	"github.com/meshvm/mesh/wire"
)

// TestCollectReportsEachRequestOnce: concurrent requests are counted per
// locality, and what one Collect reports is not reported again.
func TestCollectReportsEachRequestOnce(t *testing.T) {
	s := NewStore()
	a, b := s.Locality("orders", "eu", "a"), s.Locality("orders", "eu", "b")
	if s.Locality("orders", "eu", "a") != a {
		t.Fatal("the same locality gave two counters")
	}
	var wg sync.WaitGroup
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			l := a
			if i%4 == 0 {
				l = b
			}
			l.Begin()
			l.End(i%10 != 0, 3*time.Millisecond)
		}(i)
	}
	b.Begin() // one left in flight
	wg.Wait()
	got := s.Collect(nil)
	if len(got) != 2 {
		t.Fatalf("%d localities, want 2: %+v", len(got), got)
	}
	var issued, ok, errored uint64
	for _, st := range got {
		issued += st.Issued
		ok += st.Succeeded
		errored += st.Errored
	}
	if issued != 101 || ok != 90 || errored != 10 {
		t.Errorf("issued %d succeeded %d errored %d, want 101, 90, 10", issued, ok, errored)
	}
	if got[1].Zone != "b" || got[1].InProgress != 1 || got[0].InProgress != 0 {
		t.Errorf("in progress: %+v", got)
	}
	// 3 ms falls in the (2.5, 5] bucket.
	i := 2
	if wire.LoadLatencyBucketsMs[i] != 5 || got[0].BucketCounts[i] != got[0].Finished || got[0].LatencyMs < 3*float64(got[0].Finished) {
		t.Errorf("latency: %+v", got[0])
	}
	again := s.Collect(nil)
	if len(again) != 1 || again[0].Issued != 0 || again[0].InProgress != 1 {
		t.Errorf("second collect: %+v, want only the request in flight", again)
	}
	b.End(true, time.Millisecond)
	if last := s.Collect(map[string]bool{"payments": true}); len(last) != 0 {
		t.Errorf("a filter naming another cluster reported %+v", last)
	}
	if last := s.Collect(nil); len(last) != 1 || last[0].Succeeded != 1 || last[0].Issued != 0 {
		t.Errorf("after the last request ended: %+v", last)
	}
	var nilStore *Store
	nilStore.Locality("x", "", "").Begin() // a nil store counts nothing, safely
}

// BenchmarkBeginEnd is what the data path pays per request.
func BenchmarkBeginEnd(b *testing.B) {
	l := NewStore().Locality("orders", "eu", "a")
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			l.Begin()
			l.End(true, 2*time.Millisecond)
		}
	})
}
