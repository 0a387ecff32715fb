// Package sdnotify tells systemd about the state of a Type=notify service
// (sd_notify(3)): ready, reloading, stopping, a free-form status line, and
// watchdog keep-alives. Messages go to the datagram socket named by
// $NOTIFY_SOCKET, a path or, when it starts with '@', a Linux abstract
// socket. Outside systemd (NOTIFY_SOCKET unset) every call is a no-op that
// returns nil, so callers need no special case for running in a terminal.
//
// A reload is announced with Reloading, then Ready once the new config is
// in force (or the old one is kept); systemd holds `systemctl reload` until
// that READY=1 arrives.
package sdnotify

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// writeTimeout bounds one send: a datagram socket blocks when systemd's
// queue is full, and a stuck notification must not stall the caller.
const writeTimeout = time.Second

// Notify sends state, one or more newline-separated VAR=value assignments,
// to $NOTIFY_SOCKET. It returns nil without sending when NOTIFY_SOCKET is
// unset.
func Notify(state string) error {
	name := os.Getenv("NOTIFY_SOCKET")
	if name == "" {
		return nil
	}
	if !strings.HasPrefix(name, "/") && !strings.HasPrefix(name, "@") {
		return fmt.Errorf("sd_notify: NOTIFY_SOCKET %q is neither a path nor an abstract socket name", name)
	}
	// Go's net package maps a leading '@' to the abstract namespace.
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify: connect to %s: %w", name, err)
	}
	defer conn.Close()
	if err := conn.SetWriteDeadline(time.Now().Add(writeTimeout)); err != nil {
		return fmt.Errorf("sd_notify: set deadline: %w", err)
	}
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify: send to %s: %w", name, err)
	}
	return nil
}

// Ready says start-up (or a reload) is finished: READY=1.
func Ready() error { return Notify("READY=1") }

// Reloading says the service is re-reading its config: RELOADING=1 with
// MONOTONIC_USEC, which systemd 253 and later require for
// Type=notify-reload and older versions ignore. Follow it with Ready.
func Reloading() error {
	state := "RELOADING=1"
	if usec, ok := monotonicUsec(); ok {
		state += "\nMONOTONIC_USEC=" + strconv.FormatUint(usec, 10)
	}
	return Notify(state)
}

// Stopping says the service is shutting down: STOPPING=1.
func Stopping() error { return Notify("STOPPING=1") }

// Status sets the one-line status `systemctl status` shows. Newlines would
// end the assignment, so they are replaced by spaces.
func Status(status string) error {
	return Notify("STATUS=" + strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(status))
}

// WatchdogInterval returns the watchdog timeout systemd set for this
// process (WatchdogSec=, passed as WATCHDOG_USEC), or 0 when there is none
// or it is meant for another process (WATCHDOG_PID names a different PID).
func WatchdogInterval() (time.Duration, error) {
	usecStr := os.Getenv("WATCHDOG_USEC")
	if usecStr == "" {
		return 0, nil
	}
	if pidStr := os.Getenv("WATCHDOG_PID"); pidStr != "" {
		pid, err := strconv.Atoi(pidStr)
		if err != nil {
			return 0, fmt.Errorf("sd_notify: WATCHDOG_PID %q: %w", pidStr, errors.Unwrap(err))
		}
		if pid != os.Getpid() {
			return 0, nil
		}
	}
	usec, err := strconv.ParseUint(usecStr, 10, 63)
	if err != nil || usec == 0 {
		return 0, fmt.Errorf("sd_notify: WATCHDOG_USEC %q is not a positive number of microseconds", usecStr)
	}
	return time.Duration(usec) * time.Microsecond, nil
}

// Watchdog sends WATCHDOG=1 at once and then every half watchdog interval
// until ctx is done. Without a watchdog for this process it returns nil at
// once. A failed send does not stop the loop (systemd acts if pings stop
// for the whole interval); when ctx ends Watchdog returns nil if every send
// worked, else an error counting the failures and naming the last one.
func Watchdog(ctx context.Context) error {
	interval, err := WatchdogInterval()
	if err != nil || interval == 0 {
		return err
	}
	tick := time.NewTicker(interval / 2)
	defer tick.Stop()
	var sent, failed int
	var last error
	for {
		sent++
		if err := Notify("WATCHDOG=1"); err != nil {
			failed++
			last = err
		}
		select {
		case <-ctx.Done():
			if failed > 0 {
				return fmt.Errorf("watchdog: %d of %d pings failed, last: %w", failed, sent, last)
			}
			return nil
		case <-tick.C:
		}
	}
}
