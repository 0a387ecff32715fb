// Package breaker protects callers from a failing upstream service. It has
// two parts with one job each: Breaker, a hystrix-style error-percentage
// circuit breaker per upstream service (rolling window, request volume
// threshold, sleep window, exactly one probe while half-open), and Limit,
// Envoy's concurrency thresholds (max_requests, max_pending_requests,
// max_connections) as cheap atomic admission counters.
//
// Neither knows about HTTP: the caller decides what counts as a failure
// (typically 5xx, timeouts, connection failures; not 4xx) and turns a
// refusal into a response.
package breaker

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshvm/mesh/governance/clock"
)

// Defaults of the rolling window: hystrix's 10 seconds in 10 buckets.
const (
	DefaultWindow  = 10 * time.Second
	DefaultBuckets = 10
)

// Config is a breaker's policy (hystrix's CommandConfig, minus the timeout
// and concurrency limit which belong to the route timeout and Limit).
type Config struct {
	// ErrorPercentThreshold opens the circuit when at least this share of
	// the requests in the window failed; zero disables the breaker.
	ErrorPercentThreshold int
	// RequestVolumeThreshold is the number of requests the window must
	// hold before the error share is considered.
	RequestVolumeThreshold int
	// SleepWindow is how long an open circuit refuses everything before it
	// lets one probe through. It is also how long a probe may stay
	// unanswered before another is allowed.
	SleepWindow time.Duration
	// Window is the rolling window, split into Buckets; zero values mean
	// DefaultWindow and DefaultBuckets.
	Window  time.Duration
	Buckets int
}

func (c Config) withDefaults() Config {
	if c.Window <= 0 {
		c.Window = DefaultWindow
	}
	if c.Buckets <= 0 {
		c.Buckets = DefaultBuckets
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.ErrorPercentThreshold < 0 || c.ErrorPercentThreshold > 100:
		return fmt.Errorf("error_percent_threshold must be between 0 and 100, got %d", c.ErrorPercentThreshold)
	case c.RequestVolumeThreshold < 0:
		return fmt.Errorf("request_volume_threshold must not be negative, got %d", c.RequestVolumeThreshold)
	case c.ErrorPercentThreshold > 0 && c.SleepWindow <= 0:
		return fmt.Errorf("sleep_window must be positive, got %s", c.SleepWindow)
	case c.Window < time.Duration(c.Buckets):
		return fmt.Errorf("window %s is shorter than its %d buckets", c.Window, c.Buckets)
	}
	return nil
}

// State is where a circuit is.
type State uint8

const (
	// Closed lets every request through and counts outcomes.
	Closed State = iota
	// Open refuses every request until the sleep window has passed.
	Open
	// HalfOpen has let one probe through and refuses the rest until the
	// probe's outcome is reported.
	HalfOpen
)

func (s State) String() string {
	switch s {
	case Closed:
		return "closed"
	case Open:
		return "open"
	case HalfOpen:
		return "half-open"
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// Permit is what Allow hands out: pass it back to Report. It is a plain
// value; copying it costs nothing and it is never allocated.
type Permit struct {
	ok bool
	// probe is the circuit word this permit's probe installed; zero for an
	// ordinary request.
	probe uint64
}

// OK says whether the request may go ahead.
func (p Permit) OK() bool { return p.ok }

// Probe says whether this request is the half-open probe whose outcome
// decides the circuit.
func (p Permit) Probe() bool { return p.probe != 0 }

// Breaker is one upstream service's circuit. It is safe for concurrent use;
// Allow on a closed circuit is one atomic load, Report of a success is one
// clock reading and one atomic add.
type Breaker struct {
	clk clock.Clock
	cfg atomic.Pointer[Config]
	// word packs the state in its low 2 bits and, above them, the clock
	// reading at which the state was entered (open: when it opened;
	// half-open: when the probe was let through).
	word atomic.Uint64
	win  atomic.Pointer[window]
}

func pack(s State, at int64) uint64 { return uint64(at)<<2 | uint64(s) }
func state(w uint64) State          { return State(w & 3) }
func since(w uint64) int64          { return int64(w >> 2) }

// New returns a closed breaker. clk may be nil for the system clock.
func New(cfg Config, clk clock.Clock) (*Breaker, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("circuit breaker: %w", err)
	}
	b := &Breaker{clk: clock.Or(clk)}
	b.cfg.Store(&cfg)
	b.win.Store(newWindow(cfg))
	return b, nil
}

// Config returns the breaker's current policy.
func (b *Breaker) Config() Config { return *b.cfg.Load() }

// Update applies a new policy in place. The circuit's state is kept; the
// counts are kept too unless the window's shape changed.
func (b *Breaker) Update(cfg Config) error {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("circuit breaker: %w", err)
	}
	old := b.cfg.Swap(&cfg)
	if old.Window != cfg.Window || old.Buckets != cfg.Buckets {
		b.win.Store(newWindow(cfg))
	}
	if cfg.ErrorPercentThreshold == 0 {
		b.word.Store(pack(Closed, 0))
	}
	return nil
}

// State returns the circuit's state now.
func (b *Breaker) State() State { return state(b.word.Load()) }

// Allow asks whether a request may go to the upstream now. When the
// circuit is open and its sleep window has passed, exactly one caller gets
// a probe permit; everybody else is refused, with the time after which the
// circuit will let a probe through again.
func (b *Breaker) Allow() (p Permit, retryAfter time.Duration) {
	w := b.word.Load()
	if state(w) == Closed {
		return Permit{ok: true}, 0
	}
	return b.allowSlow(w, b.clk.Nanotime())
}

// AllowAt is Allow for a caller that has already read the breaker's clock.
func (b *Breaker) AllowAt(now int64) (p Permit, retryAfter time.Duration) {
	w := b.word.Load()
	if state(w) == Closed {
		return Permit{ok: true}, 0
	}
	return b.allowSlow(w, now)
}

func (b *Breaker) allowSlow(w uint64, now int64) (Permit, time.Duration) {
	sleep := int64(b.cfg.Load().SleepWindow)
	for {
		switch state(w) {
		case Closed:
			return Permit{ok: true}, 0
		case Open, HalfOpen:
			// Open: wait out the sleep window. HalfOpen: the probe has
			// that long to report before it is presumed lost.
			if wait := since(w) + sleep - now; wait > 0 {
				return Permit{}, time.Duration(wait)
			}
			probe := pack(HalfOpen, now)
			if b.word.CompareAndSwap(w, probe) {
				return Permit{ok: true, probe: probe}, 0
			}
		}
		w = b.word.Load()
	}
}

// Report records the outcome of a request that Allow let through. A
// failure may open the circuit; the probe's outcome closes it (success,
// with fresh counts) or opens it for another sleep window (failure).
func (b *Breaker) Report(p Permit, success bool) {
	b.ReportAt(p, success, b.clk.Nanotime())
}

// ReportAt is Report for a caller that has already read the breaker's clock.
func (b *Breaker) ReportAt(p Permit, success bool, now int64) {
	if !p.ok {
		return
	}
	if p.probe != 0 {
		if success {
			if b.word.CompareAndSwap(p.probe, pack(Closed, 0)) {
				b.win.Load().reset()
			}
		} else {
			b.word.CompareAndSwap(p.probe, pack(Open, now))
		}
		return
	}
	cfg := b.cfg.Load()
	if cfg.ErrorPercentThreshold == 0 {
		return
	}
	win := b.win.Load()
	win.add(now, success)
	if success {
		return
	}
	w := b.word.Load()
	if state(w) != Closed {
		return
	}
	total, failed := win.sum(now)
	if total < int64(cfg.RequestVolumeThreshold) || total == 0 {
		return
	}
	// hystrix rounds the error share to a whole percent.
	if pct := (200*failed + total) / (2 * total); pct >= int64(cfg.ErrorPercentThreshold) {
		b.word.CompareAndSwap(w, pack(Open, now))
	}
}

// Abandon hands back a permit whose request ended without an outcome that
// says anything about the upstream (the caller went away). An abandoned
// probe lets the next request probe at once.
func (b *Breaker) Abandon(p Permit) {
	if p.probe != 0 {
		sleep := int64(b.cfg.Load().SleepWindow)
		b.word.CompareAndSwap(p.probe, pack(Open, since(p.probe)-sleep))
	}
}

// Counts returns the requests and failures in the rolling window now.
func (b *Breaker) Counts() (total, failed int64) {
	return b.win.Load().sum(b.clk.Nanotime())
}

// window is a ring of buckets of outcome counts. Each bucket holds the
// counts of one bucket-width span, named by its epoch (clock / width).
type window struct {
	width   int64
	buckets []bucket
	mu      sync.Mutex // only to rotate a bucket to a new epoch
}

type bucket struct {
	epoch atomic.Int64
	ok    atomic.Int64
	fail  atomic.Int64
}

func newWindow(cfg Config) *window {
	w := &window{width: int64(cfg.Window) / int64(cfg.Buckets), buckets: make([]bucket, cfg.Buckets)}
	w.reset()
	return w
}

func (w *window) reset() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := range w.buckets {
		w.buckets[i].epoch.Store(-1)
	}
}

func (w *window) add(now int64, success bool) {
	e := now / w.width
	bk := &w.buckets[e%int64(len(w.buckets))]
	if bk.epoch.Load() != e {
		w.rotate(bk, e)
	}
	if success {
		bk.ok.Add(1)
	} else {
		bk.fail.Add(1)
	}
}

// rotate makes bk the bucket of epoch e, clearing what it held. Writers
// that saw the old epoch wait here; writers that see the new epoch only do
// so after the counts were cleared.
func (w *window) rotate(bk *bucket, e int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if bk.epoch.Load() == e {
		return
	}
	bk.ok.Store(0)
	bk.fail.Store(0)
	bk.epoch.Store(e)
}

func (w *window) sum(now int64) (total, failed int64) {
	e := now / w.width
	n := int64(len(w.buckets))
	for i := range w.buckets {
		bk := &w.buckets[i]
		if be := bk.epoch.Load(); be > e-n && be <= e {
			ok, f := bk.ok.Load(), bk.fail.Load()
			total += ok + f
			failed += f
		}
	}
	return total, failed
}
