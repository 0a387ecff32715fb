package cmdb

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Stats is what a Poller has seen, for the control plane's metrics and
// /config_dump.
type Stats struct {
	// LastSuccess is when the last good view was fetched (zero: never).
	LastSuccess time.Time
	// LastAttempt is when the last fetch started.
	LastAttempt time.Time
	// LastDuration is how long the last fetch took.
	LastDuration time.Duration
	// Hosts is the number of hosts in the last good view.
	Hosts int
	// Skipped is how many records the last good view left out (no valid
	// IP, malformed, duplicate IP); LastWarning says why.
	Skipped     int
	LastWarning string
	// ConsecutiveFailures counts failed fetches since the last good one.
	ConsecutiveFailures int
	// Fetches and Failures count all fetches and the failed ones.
	Fetches, Failures uint64
	// LastError is the last failure's message ("" once a fetch succeeds).
	LastError string
}

// Poller fetches the CMDB's full view on an interval and sends each good
// view; a failed fetch sends nothing, so the consumer keeps the last good
// view. After a failure it retries sooner (1s, doubling, at most interval).
type Poller struct {
	f        Fetcher
	interval time.Duration
	log      zerolog.Logger

	mu    sync.Mutex
	stats Stats
}

// NewPoller builds a Poller of f. It adds component=cmdb to log.
func NewPoller(f Fetcher, interval time.Duration, log zerolog.Logger) *Poller {
	return &Poller{f: f, interval: interval, log: log.With().Str("component", "cmdb").Logger()}
}

// Stats returns a copy of the poller's counters.
func (p *Poller) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

// Run fetches at once and then every interval until ctx is done, sending
// each good view on out (blocking until it is received or ctx is done). It
// returns nil when ctx is done, and an error only for a bad set-up.
func (p *Poller) Run(ctx context.Context, out chan<- []Host) error {
	if p.f == nil || out == nil {
		return errors.New("cmdb poller: nil fetcher or channel")
	}
	if p.interval <= 0 {
		return errors.New("cmdb poller: interval must be positive")
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
		start := time.Now()
		hosts, ok := p.poll(ctx, start)
		if ctx.Err() != nil {
			return nil
		}
		if ok {
			select {
			case out <- hosts:
			case <-ctx.Done():
				return nil
			}
		}
		wait := p.interval - time.Since(start)
		if !ok {
			wait = p.retryDelay()
		}
		timer.Reset(max(wait, 0))
	}
}

// poll runs one fetch and records its outcome; ok means hosts is a good
// view to send.
func (p *Poller) poll(ctx context.Context, start time.Time) (hosts []Host, ok bool) {
	hosts, err := p.f.Fetch(ctx)
	took := time.Since(start)
	if ctx.Err() != nil {
		return nil, false // shutting down: not a CMDB failure
	}
	var skipped *SkippedError
	if err != nil && (!errors.As(err, &skipped) || len(hosts) == 0) {
		p.fail(start, took, err)
		return nil, false
	}
	if hosts == nil {
		hosts = []Host{}
	}

	p.mu.Lock()
	failures := p.stats.ConsecutiveFailures
	prevSkipped := p.stats.Skipped
	p.stats.Fetches++
	p.stats.LastAttempt, p.stats.LastDuration = start, took
	p.stats.LastSuccess = start.Add(took)
	p.stats.Hosts = len(hosts)
	p.stats.ConsecutiveFailures = 0
	p.stats.LastError = ""
	p.stats.Skipped, p.stats.LastWarning = 0, ""
	if skipped != nil {
		p.stats.Skipped, p.stats.LastWarning = skipped.Count, err.Error()
	}
	p.mu.Unlock()

	if failures > 0 {
		p.log.Info().Int("failures", failures).Int("hosts", len(hosts)).Msg("cmdb fetch recovered")
	}
	if skipped != nil && skipped.Count != prevSkipped {
		p.log.Warn().Err(err).Int("skipped", skipped.Count).Int("hosts", len(hosts)).Msg("cmdb records skipped")
	}
	p.log.Debug().Int("hosts", len(hosts)).Dur("took", took).Msg("cmdb fetched")
	return hosts, true
}

// fail records a failed fetch and logs the first of a streak.
func (p *Poller) fail(start time.Time, took time.Duration, err error) {
	p.mu.Lock()
	p.stats.Fetches++
	p.stats.Failures++
	p.stats.ConsecutiveFailures++
	p.stats.LastAttempt, p.stats.LastDuration = start, took
	p.stats.LastError = err.Error()
	n := p.stats.ConsecutiveFailures
	hadView := !p.stats.LastSuccess.IsZero()
	p.mu.Unlock()
	if n == 1 {
		p.log.Warn().Err(err).Bool("keeping_last_view", hadView).Msg("cmdb fetch failed")
	} else {
		p.log.Debug().Err(err).Int("failures", n).Msg("cmdb fetch still failing")
	}
}

// retryDelay is 1s after the first failure, doubling, at most interval.
func (p *Poller) retryDelay() time.Duration {
	p.mu.Lock()
	n := p.stats.ConsecutiveFailures
	p.mu.Unlock()
	d := time.Second
	for i := 1; i < n && d < p.interval; i++ {
		d *= 2
	}
	return min(d, p.interval)
}
