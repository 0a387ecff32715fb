// Package clock is the time source of the governance algorithms: a
// monotonic reading in nanoseconds that tests replace with a manual clock,
// so that windows, fills and ejections can be driven without sleeping.
package clock

import (
	"sync/atomic"
	"time"
)

// Clock reads monotonic time in nanoseconds from an arbitrary origin.
// Readings only matter relative to each other.
type Clock interface {
	Nanotime() int64
}

// System is the process's monotonic clock.
var System Clock = system{}

// origin anchors System's readings; time.Since uses the monotonic reading.
var origin = time.Now()

type system struct{}

// Nanotime returns nanoseconds since the process started; it never goes
// backwards and is at least 1, so that 0 can mean "never".
func (system) Nanotime() int64 { return int64(time.Since(origin)) + 1 }

// Manual is a clock that moves only when told to. The zero value reads 1ns
// (0 is reserved for "never" by callers). It is safe for concurrent use.
type Manual struct {
	ns atomic.Int64
}

// NewManual returns a manual clock reading start (clamped to at least 1ns).
func NewManual(start time.Duration) *Manual {
	m := &Manual{}
	m.Set(start)
	return m
}

// Nanotime returns the current reading.
func (m *Manual) Nanotime() int64 {
	if v := m.ns.Load(); v > 0 {
		return v
	}
	return 1
}

// Advance moves the clock forward by d.
func (m *Manual) Advance(d time.Duration) { m.ns.Add(int64(d)) }

// Set moves the clock to t.
func (m *Manual) Set(t time.Duration) { m.ns.Store(max(int64(t), 1)) }

// Or returns c, or System when c is nil: constructors take an optional clock.
func Or(c Clock) Clock {
	if c == nil {
		return System
	}
	return c
}
