package retry

import "testing"

var sink bool

func BenchmarkRetriable(b *testing.B) {
	on, _ := Parse([]string{"connect-failure", "refused-stream", "reset", "unavailable", "retriable-status-codes"})
	p := Policy{On: on, StatusCodes: []int{429}}
	attempts := []Attempt{
		{Status: 503, GRPCStatus: NoGRPCStatus},
		{Failure: ConnectFailure, GRPCStatus: NoGRPCStatus},
		{Status: 200, GRPCStatus: 14},
		{Status: 429, GRPCStatus: NoGRPCStatus},
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		sink = p.Retriable(attempts[i&3])
		i++
	}
}

func BenchmarkBudgetAcquireRelease(b *testing.B) {
	bu := NewBudget(20, 3)
	b.ReportAllocs()
	for b.Loop() {
		if bu.Acquire(100) {
			bu.Release()
		}
	}
}

func BenchmarkBudgetAcquireReleaseParallel(b *testing.B) {
	bu := NewBudget(20, 3)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if bu.Acquire(100) {
				bu.Release()
			}
		}
	})
}
