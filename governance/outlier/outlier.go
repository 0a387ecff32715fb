// Package outlier is passive health checking of upstream endpoints with
// the semantics of Envoy's outlier detection: an endpoint that returns too
// many consecutive 5xx, or consecutive gateway failures (502, 503, 504,
// failures to connect), is ejected from load balancing for
// base_ejection_time × the number of times it has been ejected, never
// leaving more than max_ejection_percent of the endpoints ejected (one may
// always be), and is returned by a sweep that runs every interval.
//
// Reporting an outcome is a couple of atomic operations; ejection and the
// sweep, which are rare, take a lock.
package outlier

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshvm/mesh/governance/clock"
)

// Envoy's defaults, used where a Config field is zero.
const (
	DefaultInterval         = 10 * time.Second
	DefaultBaseEjectionTime = 30 * time.Second
	DefaultMaxEjectionTime  = 300 * time.Second
)

// Config is Envoy's OutlierDetection, reduced to the consecutive-failure
// detectors. A zero threshold disables that detector.
type Config struct {
	Consecutive5xx            int
	ConsecutiveGatewayFailure int
	// Interval is the time between sweeps that return ejected endpoints
	// and forgive past ejections.
	Interval         time.Duration
	BaseEjectionTime time.Duration
	// MaxEjectionTime caps base_ejection_time × ejections; it is at least
	// BaseEjectionTime.
	MaxEjectionTime    time.Duration
	MaxEjectionPercent int
}

func (c Config) withDefaults() Config {
	if c.Interval <= 0 {
		c.Interval = DefaultInterval
	}
	if c.BaseEjectionTime <= 0 {
		c.BaseEjectionTime = DefaultBaseEjectionTime
	}
	if c.MaxEjectionTime <= 0 {
		c.MaxEjectionTime = DefaultMaxEjectionTime
	}
	c.MaxEjectionTime = max(c.MaxEjectionTime, c.BaseEjectionTime)
	return c
}

func (c Config) validate() error {
	switch {
	case c.Consecutive5xx < 0:
		return fmt.Errorf("consecutive_5xx must not be negative, got %d", c.Consecutive5xx)
	case c.ConsecutiveGatewayFailure < 0:
		return fmt.Errorf("consecutive_gateway_failure must not be negative, got %d", c.ConsecutiveGatewayFailure)
	case c.MaxEjectionPercent < 0 || c.MaxEjectionPercent > 100:
		return fmt.Errorf("max_ejection_percent must be between 0 and 100, got %d", c.MaxEjectionPercent)
	}
	return nil
}

// Outcome is what one request to an endpoint says about its health.
type Outcome uint8

const (
	// Success is any response that is not a 5xx.
	Success Outcome = iota
	// ServerError is a 5xx other than a gateway error (500, 501, 505...).
	ServerError
	// GatewayError is a 502, 503 or 504 response.
	GatewayError
	// LocalFailure is a failure on the caller's side of the request: no
	// connection, a reset, a timeout. As in Envoy when local-origin errors
	// are not split out, it counts as a gateway error.
	LocalFailure
)

// Classify maps a response status to an Outcome; failed means the request
// got no response at all (connect failure, reset, timeout), in which case
// status is ignored.
func Classify(status int, failed bool) Outcome {
	switch {
	case failed:
		return LocalFailure
	case status == 502 || status == 503 || status == 504:
		return GatewayError
	case status >= 500 && status <= 599:
		return ServerError
	}
	return Success
}

// Host is the outlier state of one endpoint. It is meant to outlive
// endpoint-set pushes (keep it in a registry by address) and to belong to
// one Detector. The zero value is a healthy host.
type Host struct {
	consec5xx atomic.Int32
	consecGw  atomic.Int32
	ejected   atomic.Bool

	// Guarded by the detector's mutex.
	ejectedAt  int64 // clock reading of the current ejection
	ejections  int64 // Envoy's ejection multiplier
	returnedAt int64 // clock reading of the last return to service
}

// Ejected says whether the endpoint is out of load balancing now.
func (h *Host) Ejected() bool { return h.ejected.Load() }

// Multiplier returns h's ejection multiplier: how many times it has been
// ejected, less one for each interval it then stayed in service.
func (d *Detector) Multiplier(h *Host) int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return h.ejections
}

// Detector watches the endpoints of one upstream service.
type Detector struct {
	clk     clock.Clock
	cfg     atomic.Pointer[Config]
	version atomic.Uint64

	mu    sync.Mutex
	hosts []*Host
}

// New returns a detector with no hosts yet. clk may be nil for the system
// clock.
func New(cfg Config, clk clock.Clock) (*Detector, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("outlier detection: %w", err)
	}
	d := &Detector{clk: clock.Or(clk)}
	d.cfg.Store(&cfg)
	return d, nil
}

// Config returns the detector's current configuration.
func (d *Detector) Config() Config { return *d.cfg.Load() }

// Update applies a new configuration in place; ejections in force keep
// their end time and are judged by the new configuration at the next sweep.
func (d *Detector) Update(cfg Config) error {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("outlier detection: %w", err)
	}
	d.cfg.Store(&cfg)
	return nil
}

// SetHosts tells the detector the service's current endpoints, after a
// push. Hosts that left are forgotten: if they were ejected they are
// returned to service (they are no longer load balanced anyway).
func (d *Detector) SetHosts(hosts []*Host) {
	d.mu.Lock()
	defer d.mu.Unlock()
	keep := make(map[*Host]bool, len(hosts))
	for _, h := range hosts {
		keep[h] = true
	}
	for _, h := range d.hosts {
		if !keep[h] && h.ejected.Load() {
			d.returnLocked(h, d.clk.Nanotime())
		}
	}
	d.hosts = append([]*Host(nil), hosts...)
	d.version.Add(1)
}

// HealthVersion changes whenever any host of the detector is ejected or
// returned, so that a load balancer can cache what it derives from health.
func (d *Detector) HealthVersion() uint64 { return d.version.Load() }

// Report records the outcome of one request to h. It returns true when
// this outcome ejected h.
func (d *Detector) Report(h *Host, o Outcome) (ejected bool) {
	if o == Success {
		// Loads first: a healthy host's counters are not written at all.
		if h.consec5xx.Load() != 0 {
			h.consec5xx.Store(0)
		}
		if h.consecGw.Load() != 0 {
			h.consecGw.Store(0)
		}
		return false
	}
	cfg := d.cfg.Load()
	n5xx := h.consec5xx.Add(1)
	var nGw int32
	if o == ServerError {
		if h.consecGw.Load() != 0 {
			h.consecGw.Store(0)
		}
	} else {
		nGw = h.consecGw.Add(1)
	}
	trip := cfg.Consecutive5xx > 0 && int(n5xx) >= cfg.Consecutive5xx ||
		cfg.ConsecutiveGatewayFailure > 0 && int(nGw) >= cfg.ConsecutiveGatewayFailure
	if !trip || h.ejected.Load() {
		return false
	}
	return d.eject(h, cfg)
}

func (d *Detector) eject(h *Host, cfg *Config) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if h.ejected.Load() {
		return false
	}
	// The counters start again whether or not the ejection happens, as in
	// Envoy: the next ejection needs a fresh run of failures.
	h.consec5xx.Store(0)
	h.consecGw.Store(0)
	ejected := 0
	for _, o := range d.hosts {
		if o.ejected.Load() {
			ejected++
		}
	}
	// Envoy: eject while the ejected share is under the maximum, so one
	// host may always go (unless the maximum is zero).
	if n := len(d.hosts); n == 0 || 100*ejected >= cfg.MaxEjectionPercent*n {
		return false
	}
	now := d.clk.Nanotime()
	h.forgive(now, cfg)
	h.ejections++
	h.ejectedAt = now
	h.ejected.Store(true)
	d.version.Add(1)
	return true
}

// forgive lowers the multiplier by one for each interval the host has
// been in service since it was last returned.
func (h *Host) forgive(now int64, cfg *Config) {
	if h.ejections > 0 && h.returnedAt != 0 {
		h.ejections = max(0, h.ejections-(now-h.returnedAt)/int64(cfg.Interval))
		h.returnedAt = now
	}
}

// ejectionTime is how long h's current ejection lasts.
func (h *Host) ejectionTime(cfg *Config) int64 {
	return min(int64(cfg.BaseEjectionTime)*max(h.ejections, 1), int64(cfg.MaxEjectionTime))
}

func (d *Detector) returnLocked(h *Host, now int64) {
	h.ejected.Store(false)
	h.returnedAt = now
	h.consec5xx.Store(0)
	h.consecGw.Store(0)
	d.version.Add(1)
}

// Sweep returns to service every host whose ejection time has passed and
// reports how many it returned. Run calls it every interval; tests call
// it directly.
func (d *Detector) Sweep(now int64) (returned int) {
	cfg := d.cfg.Load()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, h := range d.hosts {
		if h.ejected.Load() && now-h.ejectedAt >= h.ejectionTime(cfg) {
			d.returnLocked(h, now)
			returned++
		}
	}
	return returned
}

// Ejected returns how many of the detector's hosts are ejected now.
func (d *Detector) Ejected() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, h := range d.hosts {
		if h.ejected.Load() {
			n++
		}
	}
	return n
}

// Run sweeps every interval until ctx is done.
func (d *Detector) Run(ctx context.Context) {
	iv := d.cfg.Load().Interval
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.Sweep(d.clk.Nanotime())
			if cur := d.cfg.Load().Interval; cur != iv {
				iv = cur
				t.Reset(iv)
			}
		}
	}
}
