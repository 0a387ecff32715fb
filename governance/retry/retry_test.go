package retry

import (
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		in      []string
		want    On
		wantErr bool
	}{
		{name: "mesh default", in: []string{"connect-failure", "refused-stream", "reset", "unavailable"},
			want: OnConnectFailure | OnRefusedStream | OnReset | OnUnavailable},
		{name: "header form", in: []string{"5xx, gateway-error,retriable-4xx"}, want: On5xx | OnGatewayError | OnRetriable4xx},
		{name: "all grpc", in: []string{"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"},
			want: OnCancelled | OnDeadlineExceeded | OnInternal | OnResourceExhausted | OnUnavailable},
		{name: "empty", in: nil, want: 0},
		{name: "unknown", in: []string{"5xx", "sometimes"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Parse(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
			}
			if got != tt.want {
				t.Fatalf("Parse(%q) = %s, want %s", tt.in, got, tt.want)
			}
		})
	}
}

func TestStringRoundTrips(t *testing.T) {
	all := On(1<<len(names) - 1)
	got, err := Parse([]string{all.String()})
	if err != nil || got != all {
		t.Fatalf("Parse(%q) = %s, %v; want every condition", all.String(), got, err)
	}
}

func TestRetriable(t *testing.T) {
	resp := func(status int) Attempt { return Attempt{Status: status, GRPCStatus: NoGRPCStatus} }
	grpc := func(code int) Attempt { return Attempt{Status: 200, GRPCStatus: code} }
	fail := func(f Failure) Attempt { return Attempt{GRPCStatus: NoGRPCStatus, Failure: f} }
	tests := []struct {
		name    string
		on      string
		codes   []int
		attempt Attempt
		want    bool
	}{
		{name: "5xx retries 500", on: "5xx", attempt: resp(500), want: true},
		{name: "5xx retries 503", on: "5xx", attempt: resp(503), want: true},
		{name: "5xx does not retry 404", on: "5xx", attempt: resp(404), want: false},
		{name: "5xx retries a reset", on: "5xx", attempt: fail(Reset), want: true},
		{name: "5xx retries a connect failure", on: "5xx", attempt: fail(ConnectFailure), want: true},
		{name: "5xx retries a per-try timeout", on: "5xx", attempt: fail(Timeout), want: true},
		{name: "gateway-error retries 502", on: "gateway-error", attempt: resp(502), want: true},
		{name: "gateway-error retries 504", on: "gateway-error", attempt: resp(504), want: true},
		{name: "gateway-error does not retry 500", on: "gateway-error", attempt: resp(500), want: false},
		{name: "gateway-error retries a refused stream", on: "gateway-error", attempt: fail(RefusedStream), want: true},
		{name: "reset retries a reset", on: "reset", attempt: fail(Reset), want: true},
		{name: "reset retries a timeout", on: "reset", attempt: fail(Timeout), want: true},
		{name: "reset does not retry 503", on: "reset", attempt: resp(503), want: false},
		{name: "connect-failure retries a connect failure", on: "connect-failure", attempt: fail(ConnectFailure), want: true},
		{name: "connect-failure does not retry a reset", on: "connect-failure", attempt: fail(Reset), want: false},
		{name: "connect-failure does not retry 503", on: "connect-failure", attempt: resp(503), want: false},
		{name: "refused-stream retries a refused stream", on: "refused-stream", attempt: fail(RefusedStream), want: true},
		{name: "refused-stream does not retry a reset", on: "refused-stream", attempt: fail(Reset), want: false},
		{name: "retriable-4xx retries 409", on: "retriable-4xx", attempt: resp(409), want: true},
		{name: "retriable-4xx does not retry 429", on: "retriable-4xx", attempt: resp(429), want: false},
		{name: "status codes listed", on: "retriable-status-codes", codes: []int{429, 418}, attempt: resp(418), want: true},
		{name: "status codes not listed", on: "retriable-status-codes", codes: []int{429}, attempt: resp(503), want: false},
		{name: "status codes need the condition", on: "5xx", codes: []int{429}, attempt: resp(429), want: false},
		{name: "envoy-ratelimited", on: "envoy-ratelimited", attempt: Attempt{Status: 429, GRPCStatus: NoGRPCStatus, RateLimited: true}, want: true},
		{name: "a plain 429 is not rate-limited by the mesh", on: "envoy-ratelimited", attempt: resp(429), want: false},
		{name: "retriable-headers never matches", on: "retriable-headers", attempt: resp(503), want: false},
		{name: "grpc unavailable", on: "unavailable", attempt: grpc(14), want: true},
		{name: "grpc cancelled", on: "cancelled", attempt: grpc(1), want: true},
		{name: "grpc deadline-exceeded", on: "deadline-exceeded", attempt: grpc(4), want: true},
		{name: "grpc resource-exhausted", on: "resource-exhausted", attempt: grpc(8), want: true},
		{name: "grpc internal", on: "internal", attempt: grpc(13), want: true},
		{name: "grpc internal not asked for", on: "unavailable", attempt: grpc(13), want: false},
		{name: "grpc ok", on: "cancelled,deadline-exceeded,internal,resource-exhausted,unavailable", attempt: grpc(0), want: false},
		{name: "grpc condition does not retry HTTP 503", on: "unavailable", attempt: resp(503), want: false},
		{name: "mesh default retries a connect failure", on: "connect-failure,refused-stream,reset,unavailable", attempt: fail(ConnectFailure), want: true},
		{name: "mesh default does not retry an app 500", on: "connect-failure,refused-stream,reset,unavailable", attempt: resp(500), want: false},
		{name: "nothing configured retries nothing", on: "", attempt: fail(Reset), want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			on, err := Parse([]string{tt.on})
			if err != nil {
				t.Fatal(err)
			}
			p := Policy{On: on, StatusCodes: tt.codes}
			if got := p.Retriable(tt.attempt); got != tt.want {
				t.Fatalf("Retriable(%+v) under %q = %v, want %v", tt.attempt, tt.on, got, tt.want)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	tests := []struct {
		name      string
		n         int
		base, max time.Duration
		wantLimit time.Duration // results lie in [0, wantLimit)
	}{
		{name: "first retry within one base", n: 1, wantLimit: 25 * time.Millisecond},
		{name: "second within three", n: 2, wantLimit: 75 * time.Millisecond},
		{name: "third within seven", n: 3, wantLimit: 175 * time.Millisecond},
		{name: "capped at ten times base", n: 4, wantLimit: 250 * time.Millisecond},
		{name: "custom base and max", n: 3, base: 10 * time.Millisecond, max: 50 * time.Millisecond, wantLimit: 50 * time.Millisecond},
		{name: "huge attempt numbers stay capped", n: 1000, wantLimit: 250 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, r := range []uint64{0, 1, 12345, 1 << 40, math.MaxUint64 - 1, math.MaxUint64} {
				d := Backoff(tt.n, tt.base, tt.max, r)
				if d < 0 || d >= tt.wantLimit {
					t.Fatalf("Backoff(%d, r=%d) = %s, want in [0, %s)", tt.n, r, d, tt.wantLimit)
				}
			}
			if r := uint64(tt.wantLimit) - 1; Backoff(tt.n, tt.base, tt.max, r) != tt.wantLimit-1 {
				t.Fatalf("Backoff does not reach the top of its range %s", tt.wantLimit)
			}
		})
	}
}

func TestBudget(t *testing.T) {
	tests := []struct {
		name    string
		percent float64
		min     int64
		active  int64
		want    int64 // retries admitted
	}{
		{name: "minimum when idle", percent: 20, min: 3, active: 0, want: 3},
		{name: "minimum above the share", percent: 20, min: 3, active: 10, want: 3},
		{name: "share above the minimum", percent: 20, min: 3, active: 100, want: 20},
		{name: "fractional percent", percent: 2.5, min: 0, active: 1000, want: 25},
		{name: "zero percent leaves the minimum", percent: 0, min: 2, active: 1000, want: 2},
		{name: "nothing at all", percent: 0, min: 0, active: 1000, want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := NewBudget(tt.percent, tt.min)
			var got int64
			for range tt.want + 10 {
				if b.Acquire(tt.active) {
					got++
				}
			}
			if got != tt.want {
				t.Fatalf("admitted %d retries, want %d", got, tt.want)
			}
			b.Release()
			if tt.want > 0 && !b.Acquire(tt.active) {
				t.Fatal("a released slot could not be taken again")
			}
		})
	}
}

func TestBudgetConcurrent(t *testing.T) {
	b := NewBudget(10, 2)
	const active = 50 // budget: max(2, 5) = 5
	var inFlight, peak atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 2000 {
				if !b.Acquire(active) {
					continue
				}
				n := inFlight.Add(1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				inFlight.Add(-1)
				b.Release()
			}
		})
	}
	wg.Wait()
	if peak.Load() > 5 || b.Active() != 0 {
		t.Fatalf("peak concurrent retries %d (want <= 5), active after %d (want 0)", peak.Load(), b.Active())
	}
}
