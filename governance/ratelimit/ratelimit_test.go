package ratelimit

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshvm/mesh/governance/clock"
)

// step is one action on a bucket: move the clock, then call Allow.
type step struct {
	advance    time.Duration
	wantOK     bool
	wantRetry  time.Duration
	wantTokens int64 // after the call
}

func TestBucketAllow(t *testing.T) {
	tests := []struct {
		name  string
		cfg   Config
		steps []step
	}{
		{
			name: "starts full and refuses when empty",
			cfg:  Config{MaxTokens: 2, TokensPerFill: 1, FillInterval: time.Second},
			steps: []step{
				{wantOK: true, wantTokens: 1},
				{wantOK: true, wantTokens: 0},
				{wantOK: false, wantRetry: time.Second, wantTokens: 0},
			},
		},
		{
			name: "retry after is the time to the next fill",
			cfg:  Config{MaxTokens: 1, TokensPerFill: 1, FillInterval: time.Second},
			steps: []step{
				{wantOK: true, wantTokens: 0},
				{advance: 300 * time.Millisecond, wantOK: false, wantRetry: 700 * time.Millisecond},
				{advance: 699 * time.Millisecond, wantOK: false, wantRetry: time.Millisecond},
				{advance: time.Millisecond, wantOK: true, wantTokens: 0},
			},
		},
		{
			name: "fills are discrete, tokens_per_fill at a time",
			cfg:  Config{MaxTokens: 10, TokensPerFill: 3, FillInterval: 100 * time.Millisecond},
			steps: []step{
				{wantOK: true, wantTokens: 9},
				{advance: 99 * time.Millisecond, wantOK: true, wantTokens: 8},
				{advance: time.Millisecond, wantOK: true, wantTokens: 9}, // 8+3 capped at 10, minus 1
				{advance: 250 * time.Millisecond, wantOK: true, wantTokens: 9},
			},
		},
		{
			name: "an idle bucket holds at most max_tokens",
			cfg:  Config{MaxTokens: 3, TokensPerFill: 2, FillInterval: time.Millisecond},
			steps: []step{
				{wantOK: true, wantTokens: 2},
				{advance: time.Hour, wantOK: true, wantTokens: 2},
				{wantOK: true, wantTokens: 1},
				{wantOK: true, wantTokens: 0},
				{wantOK: false, wantRetry: time.Millisecond},
			},
		},
		{
			name: "drained bucket refills one fill per interval",
			cfg:  Config{MaxTokens: 5, TokensPerFill: 5, FillInterval: time.Second},
			steps: []step{
				{wantOK: true, wantTokens: 4}, {wantOK: true, wantTokens: 3}, {wantOK: true, wantTokens: 2}, {wantOK: true, wantTokens: 1}, {wantOK: true, wantTokens: 0},
				{advance: 500 * time.Millisecond, wantOK: false, wantRetry: 500 * time.Millisecond},
				{advance: 500 * time.Millisecond, wantOK: true, wantTokens: 4},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := clock.NewManual(time.Hour)
			b, err := New(tt.cfg, clk)
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range tt.steps {
				clk.Advance(s.advance)
				ok, retry := b.Allow()
				if ok != s.wantOK || retry != s.wantRetry {
					t.Fatalf("step %d: Allow() = %v, %v; want %v, %v", i, ok, retry, s.wantOK, s.wantRetry)
				}
				if got := b.Tokens(); got != s.wantTokens {
					t.Fatalf("step %d: Tokens() = %d, want %d", i, got, s.wantTokens)
				}
			}
		})
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{name: "zero max tokens", cfg: Config{TokensPerFill: 1, FillInterval: time.Second}},
		{name: "zero tokens per fill", cfg: Config{MaxTokens: 1, FillInterval: time.Second}},
		{name: "zero fill interval", cfg: Config{MaxTokens: 1, TokensPerFill: 1}},
		{name: "absurd rate", cfg: Config{MaxTokens: 1, TokensPerFill: 1 << 40, FillInterval: time.Millisecond}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.cfg, nil); err == nil {
				t.Fatalf("New(%+v) succeeded, want an error", tt.cfg)
			}
			b, err := New(Config{MaxTokens: 1, TokensPerFill: 1, FillInterval: time.Second}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Update(tt.cfg); err == nil {
				t.Fatalf("Update(%+v) succeeded, want an error", tt.cfg)
			}
		})
	}
}

func TestBucketUpdate(t *testing.T) {
	tests := []struct {
		name       string
		from, to   Config
		take       int // tokens taken before the update
		wantTokens int64
		wantFirst  time.Duration // time from the update to the first fill
	}{
		{
			name:       "same config is a no-op",
			from:       Config{MaxTokens: 10, TokensPerFill: 1, FillInterval: time.Second},
			to:         Config{MaxTokens: 10, TokensPerFill: 1, FillInterval: time.Second},
			take:       4,
			wantTokens: 6,
			wantFirst:  700 * time.Millisecond, // the old schedule continues
		},
		{
			name:       "raising max keeps the tokens left, does not refill",
			from:       Config{MaxTokens: 10, TokensPerFill: 1, FillInterval: time.Second},
			to:         Config{MaxTokens: 100, TokensPerFill: 10, FillInterval: time.Second},
			take:       4,
			wantTokens: 6,
			wantFirst:  time.Second,
		},
		{
			name:       "lowering max caps the tokens left",
			from:       Config{MaxTokens: 10, TokensPerFill: 1, FillInterval: time.Second},
			to:         Config{MaxTokens: 3, TokensPerFill: 1, FillInterval: 200 * time.Millisecond},
			take:       4,
			wantTokens: 3,
			wantFirst:  200 * time.Millisecond,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := clock.NewManual(time.Hour)
			b, err := New(tt.from, clk)
			if err != nil {
				t.Fatal(err)
			}
			for range tt.take {
				b.Allow()
			}
			clk.Advance(300 * time.Millisecond)
			if err := b.Update(tt.to); err != nil {
				t.Fatal(err)
			}
			if b.Config() != tt.to {
				t.Fatalf("Config() = %+v, want %+v", b.Config(), tt.to)
			}
			if got := b.Tokens(); got != tt.wantTokens {
				t.Fatalf("Tokens() after update = %d, want %d", got, tt.wantTokens)
			}
			for range tt.wantTokens {
				if ok, _ := b.Allow(); !ok {
					t.Fatal("Allow() refused a token the bucket holds")
				}
			}
			ok, retry := b.Allow()
			if ok || retry != tt.wantFirst {
				t.Fatalf("Allow() on empty bucket = %v, %v; want false, %v", ok, retry, tt.wantFirst)
			}
		})
	}
}

// TestBucketConcurrentNeverOveradmits hammers one bucket from many
// goroutines while the clock moves and the config is pushed again and again
// (each push retiring the state the workers are taking from):
// the total admitted must equal exactly what the bucket could give.
func TestBucketConcurrentNeverOveradmits(t *testing.T) {
	cfg := Config{MaxTokens: 50, TokensPerFill: 7, FillInterval: time.Millisecond}
	clk := clock.NewManual(time.Hour)
	b, err := New(cfg, clk)
	if err != nil {
		t.Fatal(err)
	}
	const fills = 40
	var admitted, pushes atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if ok, _ := b.Allow(); ok {
					admitted.Add(1)
				}
			}
		})
	}
	wg.Go(func() {
		// Config pushes that change the bucket (max 50 <-> 51) but not how
		// much it can give while the workers keep it drained: each one
		// retires the state while the workers are taking from it.
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_ = b.Update(Config{MaxTokens: 50 + int64(i%2), TokensPerFill: 7, FillInterval: time.Millisecond})
			pushes.Add(1)
			runtime.Gosched()
		}
	})
	for range fills {
		// Let the workers drain the bucket before the next fill.
		// ... and the config to be pushed at least once during this fill.
		p := pushes.Load()
		for i := 0; (b.Tokens() > 0 || pushes.Load() == p) && i < 10_000_000; i++ {
			runtime.Gosched()
		}
		clk.Advance(time.Millisecond)
	}
	for i := 0; b.Tokens() > 0 && i < 10_000_000; i++ {
		runtime.Gosched()
	}
	close(stop)
	wg.Wait()
	want := cfg.MaxTokens + fills*cfg.TokensPerFill
	t.Logf("%d config pushes during the run", pushes.Load())
	if got := admitted.Load(); got != want {
		t.Fatalf("admitted %d, want exactly %d (max_tokens + fills × tokens_per_fill)", got, want)
	}
}

// TestBucketRealClockBound checks the promise on the system clock: over a
// span T no more than max_tokens + tokens_per_fill × (⌊T/fill_interval⌋+1)
// requests pass (the +1 because the span need not start on a fill).
func TestBucketRealClockBound(t *testing.T) {
	cfg := Config{MaxTokens: 20, TokensPerFill: 5, FillInterval: time.Millisecond}
	b, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for time.Since(start) < 30*time.Millisecond {
				if ok, _ := b.Allow(); ok {
					admitted.Add(1)
				}
			}
		})
	}
	wg.Wait()
	span := time.Since(start)
	bound := cfg.MaxTokens + cfg.TokensPerFill*(int64(span/cfg.FillInterval)+1)
	if got := admitted.Load(); got > bound || got < cfg.MaxTokens {
		t.Fatalf("admitted %d in %s, want between %d and %d", got, span, cfg.MaxTokens, bound)
	}
}
