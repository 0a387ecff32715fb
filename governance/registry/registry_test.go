package registry

import (
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/meshvm/mesh/governance/breaker"
	"github.com/meshvm/mesh/governance/clock"
	"github.com/meshvm/mesh/governance/ratelimit"
)

func bucketRegistry(clk clock.Clock) *Registry[string, ratelimit.Config, *ratelimit.Bucket] {
	return New(
		func(_ string, c ratelimit.Config) (*ratelimit.Bucket, error) { return ratelimit.New(c, clk) },
		(*ratelimit.Bucket).Update,
	)
}

// push pushes the given service→config map.
func push[V any](t *testing.T, r *Registry[string, ratelimit.Config, V], cfgs map[string]ratelimit.Config) (map[string]V, []V) {
	t.Helper()
	got := map[string]V{}
	dropped, err := r.Push(func(use Use[string, ratelimit.Config, V]) error {
		for k, c := range cfgs {
			v, err := use(k, c)
			if err != nil {
				return err
			}
			got[k] = v
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got, dropped
}

func TestBucketsSurvivePushes(t *testing.T) {
	clk := clock.NewManual(time.Hour)
	r := bucketRegistry(clk)
	ten := ratelimit.Config{MaxTokens: 10, TokensPerFill: 10, FillInterval: time.Minute}
	first, _ := push(t, r, map[string]ratelimit.Config{"orders": ten, "users": ten})
	for range 7 {
		first["orders"].Allow()
	}

	tests := []struct {
		name        string
		cfgs        map[string]ratelimit.Config
		wantSame    bool // orders keeps its bucket
		wantTokens  int64
		wantDropped int
		wantLen     int
	}{
		{name: "same config keeps the bucket and its level", cfgs: map[string]ratelimit.Config{"orders": ten, "users": ten},
			wantSame: true, wantTokens: 3, wantLen: 2},
		{name: "new limits apply in place without a refill",
			cfgs:     map[string]ratelimit.Config{"orders": {MaxTokens: 100, TokensPerFill: 1, FillInterval: time.Second}, "users": ten},
			wantSame: true, wantTokens: 3, wantLen: 2},
		{name: "a service left out is dropped", cfgs: map[string]ratelimit.Config{"orders": ten},
			wantSame: true, wantTokens: 3, wantDropped: 1, wantLen: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, dropped := push(t, r, tt.cfgs)
			if same := got["orders"] == first["orders"]; same != tt.wantSame {
				t.Fatalf("orders kept its bucket = %v, want %v", same, tt.wantSame)
			}
			if tok := got["orders"].Tokens(); tok != tt.wantTokens {
				t.Fatalf("orders holds %d tokens, want %d", tok, tt.wantTokens)
			}
			if got["orders"].Config() != tt.cfgs["orders"] {
				t.Fatalf("orders config %+v, want %+v", got["orders"].Config(), tt.cfgs["orders"])
			}
			if len(dropped) != tt.wantDropped || r.Len() != tt.wantLen {
				t.Fatalf("dropped %d, holding %d; want %d, %d", len(dropped), r.Len(), tt.wantDropped, tt.wantLen)
			}
		})
	}
	// A dropped service that comes back starts afresh.
	got, _ := push(t, r, map[string]ratelimit.Config{"orders": ten, "users": ten})
	if got["users"] == first["users"] || got["users"].Tokens() != 10 {
		t.Fatal("a returning service got its old bucket back")
	}
}

func TestOpenBreakerStaysOpenAcrossPush(t *testing.T) {
	clk := clock.NewManual(time.Hour)
	r := New(
		func(_ string, c breaker.Config) (*breaker.Breaker, error) { return breaker.New(c, clk) },
		(*breaker.Breaker).Update,
	)
	cfg := breaker.Config{ErrorPercentThreshold: 50, RequestVolumeThreshold: 2, SleepWindow: time.Second}
	pushOne := func(c breaker.Config) *breaker.Breaker {
		var b *breaker.Breaker
		if _, err := r.Push(func(use Use[string, breaker.Config, *breaker.Breaker]) error {
			var err error
			b, err = use("orders", c)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return b
	}
	b := pushOne(cfg)
	for range 2 {
		p, _ := b.Allow()
		b.Report(p, false)
	}
	cfg.SleepWindow = 2 * time.Second
	if b2 := pushOne(cfg); b2 != b || b2.State() != breaker.Open || b2.Config().SleepWindow != 2*time.Second {
		t.Fatalf("after push: same breaker %v, state %s, sleep %s; want same, open, 2s", b2 == b, b2.State(), b2.Config().SleepWindow)
	}
}

func TestFailedPushDropsNothing(t *testing.T) {
	r := bucketRegistry(nil)
	ok := ratelimit.Config{MaxTokens: 1, TokensPerFill: 1, FillInterval: time.Second}
	push(t, r, map[string]ratelimit.Config{"a": ok, "b": ok})
	boom := errors.New("boom")
	_, err := r.Push(func(use Use[string, ratelimit.Config, *ratelimit.Bucket]) error {
		if _, err := use("a", ok); err != nil {
			return err
		}
		if _, err := use("c", ratelimit.Config{}); err == nil {
			t.Fatal("use of an invalid config succeeded")
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Push error = %v, want boom", err)
	}
	if r.Len() != 2 {
		t.Fatalf("holding %d after a failed push, want the 2 from before", r.Len())
	}
	var keys []string
	r.Range(func(k string, _ *ratelimit.Bucket) bool { keys = append(keys, k); return true })
	slices.Sort(keys)
	if !slices.Equal(keys, []string{"a", "b"}) {
		t.Fatalf("keys %v, want [a b]", keys)
	}
	if _, ok := r.Get("c"); ok {
		t.Fatal("the invalid key was stored")
	}
}

func TestNilUpdateKeepsStateAsIs(t *testing.T) {
	type counter struct{ n int }
	r := New(func(string, struct{}) (*counter, error) { return &counter{}, nil }, nil)
	var first *counter
	for range 3 {
		if _, err := r.Push(func(use Use[string, struct{}, *counter]) error {
			c, err := use("10.0.0.1:15006", struct{}{})
			c.n++
			if first == nil {
				first = c
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	if c, _ := r.Get("10.0.0.1:15006"); c != first || c.n != 3 {
		t.Fatalf("state replaced or reset across pushes: n = %d", c.n)
	}
}

func TestConcurrentPushAndGet(t *testing.T) {
	r := bucketRegistry(nil)
	cfg := ratelimit.Config{MaxTokens: 5, TokensPerFill: 1, FillInterval: time.Second}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 200 {
				keys := map[string]ratelimit.Config{"a": cfg}
				if (i+g)%2 == 0 {
					keys["b"] = cfg
				}
				push(t, r, keys)
				if b, ok := r.Get("a"); !ok || b == nil {
					t.Error("key a missing while every push uses it")
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestEnsureBetweenPushes(t *testing.T) {
	clk := clock.NewManual(time.Hour)
	r := bucketRegistry(clk)
	ten := ratelimit.Config{MaxTokens: 10, TokensPerFill: 10, FillInterval: time.Minute}
	first, _ := push(t, r, map[string]ratelimit.Config{"orders": ten})

	tests := []struct {
		name      string
		key       string
		wantSame  *ratelimit.Bucket // nil: a new bucket
		wantLen   int
		wantError bool
	}{
		{name: "existing key keeps its state", key: "orders", wantSame: first["orders"], wantLen: 1},
		{name: "new key is created", key: "users", wantLen: 2},
		{name: "invalid params are an error", key: "bad", wantLen: 2, wantError: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ten
			if tc.wantError {
				cfg.MaxTokens = 0
			}
			v, err := r.Ensure(tc.key, cfg)
			if (err != nil) != tc.wantError {
				t.Fatalf("Ensure(%q): %v", tc.key, err)
			}
			if tc.wantSame != nil && v != tc.wantSame {
				t.Error("Ensure replaced existing state")
			}
			if !tc.wantError && v == nil {
				t.Error("Ensure returned no state")
			}
			if r.Len() != tc.wantLen {
				t.Errorf("Len %d, want %d", r.Len(), tc.wantLen)
			}
		})
	}
	// The next push that does not use "users" drops it; one that does keeps it.
	users, _ := r.Get("users")
	kept, _ := push(t, r, map[string]ratelimit.Config{"orders": ten, "users": ten})
	if kept["users"] != users {
		t.Error("a push using an ensured key replaced its state")
	}
	_, dropped := push(t, r, map[string]ratelimit.Config{"orders": ten})
	if len(dropped) != 1 || dropped[0] != users {
		t.Errorf("dropped %v, want the ensured bucket", dropped)
	}
}
