package chain_test

import (
	"testing"
	"time"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/dataplane/chain"
	"github.com/meshvm/mesh/dataplane/table"
)

// Route and per-try timeouts as a caller sees them: the route timeout
// ends the whole request with 504 upstream-timeout, wherever it finds it
// (in a try, in a retry's backoff); a per-try timeout ends one try, which
// is retried within the route timeout.
func TestTimeouts(t *testing.T) {
	for _, tc := range []struct {
		name    string
		modes   []string // one callee per mode: "ok", "slow" (2s), "503"
		timeout time.Duration
		perTry  time.Duration
		retries config.Retries
		want    string // key of the answer
		from    string // the callee that answered, for a 200
		atLeast time.Duration
		under   time.Duration
	}{
		{
			name: "route timeout ends a slow try", modes: []string{"slow"},
			timeout: 200 * time.Millisecond,
			want:    "504 upstream-timeout", atLeast: 200 * time.Millisecond, under: time.Second,
		},
		{
			name: "route timeout ends per-try timeouts and their retries", modes: []string{"slow"},
			timeout: 200 * time.Millisecond, perTry: 150 * time.Millisecond,
			retries: config.Retries{Attempts: 5, RetryOn: []string{"reset"}, BudgetPercent: 100, MinRetryConcurrency: 10},
			want:    "504 upstream-timeout", atLeast: 200 * time.Millisecond, under: time.Second,
		},
		{
			name: "per-try timeout is retried on another endpoint", modes: []string{"slow", "ok"},
			timeout: 3 * time.Second, perTry: 150 * time.Millisecond,
			retries: config.Retries{Attempts: 1, RetryOn: []string{"reset"}, BudgetPercent: 100, MinRetryConcurrency: 10},
			want:    "200", from: "b2", under: time.Second,
		},
		{
			name: "per-try timeout without a route timeout", modes: []string{"slow"},
			perTry:  100 * time.Millisecond,
			retries: config.Retries{Attempts: 1, RetryOn: []string{"reset"}, BudgetPercent: 100, MinRetryConcurrency: 10},
			want:    "504 upstream-timeout", atLeast: 200 * time.Millisecond, under: 1500 * time.Millisecond,
		},
		{
			name: "route timeout during retry backoff", modes: []string{"503"},
			timeout: 150 * time.Millisecond,
			retries: config.Retries{Attempts: 100, RetryOn: []string{"5xx"}, BudgetPercent: 100, MinRetryConcurrency: 100},
			want:    "504 upstream-timeout", atLeast: 150 * time.Millisecond, under: time.Second,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hosts := []string{hostB1, hostB2}
			cs := make([]*callee, len(tc.modes))
			for i, m := range tc.modes {
				cs[i] = startCallee(t, hosts[i], "b"+string(rune('1'+i)), "", table.Inbound{})
				cs[i].app.delay.Store(int64(2 * time.Second))
				cs[i].app.mode.Store(m)
			}
			p := bare()
			p.Timeout = tc.timeout
			p.Retries = tc.retries
			p.Retries.PerTryTimeout = tc.perTry
			a := startCaller(t, static("1", p, cs...), chain.Local{Service: "a"})
			c := client(a.outbound, 1)
			// Round robin: two requests start on each endpoint.
			for range 2 {
				r := get(c, "http://b/")
				if key(r) != tc.want || (tc.from != "" && r.from != tc.from) {
					t.Fatalf("got %s from %q, want %s from %q", key(r), r.from, tc.want, tc.from)
				}
				if r.took < tc.atLeast || r.took >= tc.under {
					t.Errorf("answered after %v, want %v to %v", r.took, tc.atLeast, tc.under)
				}
			}
			if tc.want == "200" && cs[0].app.served.Load() == 0 {
				t.Error("the slow endpoint was never tried")
			}
			if tc.want != "200" && cs[0].app.served.Load() < 2 {
				t.Errorf("the app saw %d tries, want every request to reach it", cs[0].app.served.Load())
			}
		})
	}
}
