package ratelimit

import (
	"testing"
	"time"

	uber "go.uber.org/ratelimit"
)

// The request path: a bucket that admits (the common case) and one that
// refuses (a burst over the limit).
func BenchmarkAllow(b *testing.B) {
	bk, _ := New(Config{MaxTokens: 1 << 40, TokensPerFill: 1 << 19, FillInterval: time.Millisecond}, nil)
	b.ReportAllocs()
	for b.Loop() {
		bk.Allow()
	}
}

func BenchmarkAllowRefusing(b *testing.B) {
	bk, _ := New(Config{MaxTokens: 1, TokensPerFill: 1, FillInterval: time.Hour}, nil)
	bk.Allow()
	b.ReportAllocs()
	for b.Loop() {
		bk.Allow()
	}
}

func BenchmarkAllowParallel(b *testing.B) {
	bk, _ := New(Config{MaxTokens: 1 << 40, TokensPerFill: 1 << 19, FillInterval: time.Millisecond}, nil)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			bk.Allow()
		}
	})
}

// Overload at 100k/s: the bucket answers at once and refuses the excess;
// "admitted/op" is the share that passed.
func BenchmarkAllowOverload100k(b *testing.B) {
	bk, _ := New(Config{MaxTokens: 100, TokensPerFill: 100, FillInterval: time.Millisecond}, nil)
	var admitted int
	b.ReportAllocs()
	for b.Loop() {
		if ok, _ := bk.Allow(); ok {
			admitted++
		}
	}
	b.ReportMetric(float64(admitted)/float64(b.N), "admitted/op")
}

// go.uber.org/ratelimit for comparison. Take never refuses: it sleeps
// until the caller's slot. At a rate it never reaches it measures the
// bookkeeping alone ...
func BenchmarkUberTakeUnthrottled(b *testing.B) {
	rl := uber.New(1_000_000_000)
	b.ReportAllocs()
	for b.Loop() {
		rl.Take()
	}
}

func BenchmarkUberTakeUnthrottledParallel(b *testing.B) {
	rl := uber.New(1_000_000_000)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			rl.Take()
		}
	})
}

// ... and under the same overload as BenchmarkAllowOverload100k every call
// waits for its slot: ns/op is the pacing delay (10 µs at 100k/s), and a
// caller that arrives behind N others waits N × 10 µs.
func BenchmarkUberTakeOverload100k(b *testing.B) {
	rl := uber.New(100_000)
	b.ReportAllocs()
	for b.Loop() {
		rl.Take()
	}
}
