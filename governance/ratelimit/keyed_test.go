package ratelimit

import (
	"fmt"
	"testing"
	"time"

	"github.com/meshvm/mesh/governance/clock"
)

func TestKeyed(t *testing.T) {
	clk := clock.NewManual(time.Second)
	k, err := NewKeyed(Config{MaxTokens: 2, TokensPerFill: 1, FillInterval: time.Second}, 3, clk)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []bool{true, true, false} {
		if ok, _ := k.Allow("a"); ok != want {
			t.Fatalf("a call %d: allowed %v, want %v", i, ok, want)
		}
	}
	if ok, retry := k.Allow("a"); ok || retry != time.Second {
		t.Fatalf("a empty: ok %v retry %s, want refused, 1s", ok, retry)
	}
	if ok, _ := k.Allow("b"); !ok {
		t.Fatal("b is refused because a is empty: keys share a bucket")
	}

	t.Run("memory is bounded: the least recently used key goes", func(t *testing.T) {
		for i := 0; i < 100; i++ {
			k.Allow(fmt.Sprint("flood", i))
		}
		if n := k.Len(); n != 3 {
			t.Fatalf("%d keys held, want at most 3", n)
		}
	})

	t.Run("sweep drops refilled buckets and keeps the others", func(t *testing.T) {
		k.Allow("x")
		k.Allow("x")
		clk.Advance(time.Second) // x has 1 of 2; the floods are full again
		if n := k.Sweep(); n != 2 {
			t.Fatalf("swept %d, want the 2 refilled flood keys", n)
		}
		if k.Len() != 1 {
			t.Fatalf("%d keys held after sweep, want 1 (x)", k.Len())
		}
		if ok, _ := k.Allow("x"); !ok {
			t.Fatal("x should have a token after one fill")
		}
		if ok, _ := k.Allow("x"); ok {
			t.Fatal("x kept its level across the sweep: want refused")
		}
	})
}

func BenchmarkKeyedAllow(b *testing.B) {
	k, _ := NewKeyed(Config{MaxTokens: 1 << 40, TokensPerFill: 1, FillInterval: time.Second}, 1000, nil)
	keys := make([]string, 64)
	for i := range keys {
		keys[i] = fmt.Sprint("10.0.0.", i)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		k.Allow(keys[i&63])
	}
}
