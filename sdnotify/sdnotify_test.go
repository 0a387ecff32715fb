package sdnotify

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// listen opens a datagram socket like systemd's notify socket and points
// NOTIFY_SOCKET at it. abstract picks a Linux abstract name over a path.
func listen(t *testing.T, abstract bool) *net.UnixConn {
	t.Helper()
	name := filepath.Join(t.TempDir(), "notify.sock")
	if abstract {
		name = fmt.Sprintf("@mesh-sdnotify-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatalf("listen on %s: %v", name, err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", name)
	return conn
}

// receive returns the next datagram, failing the test after a second.
func receive(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	buf := make([]byte, 4096)
	if err := conn.SetReadDeadline(time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("no notification received: %v", err)
	}
	return string(buf[:n])
}

// nothing asserts no datagram arrives within d.
func nothing(t *testing.T, conn *net.UnixConn, d time.Duration) {
	t.Helper()
	buf := make([]byte, 4096)
	_ = conn.SetReadDeadline(time.Now().Add(d))
	if n, err := conn.Read(buf); err == nil {
		t.Fatalf("unexpected notification %q", buf[:n])
	}
}

func TestMessages(t *testing.T) {
	tests := []struct {
		name string
		send func() error
		want string
	}{
		{name: "ready", send: Ready, want: "READY=1"},
		{name: "stopping", send: Stopping, want: "STOPPING=1"},
		{name: "status", send: func() error { return Status("serving 3 upstreams") }, want: "STATUS=serving 3 upstreams"},
		{name: "status with newlines stays one assignment", send: func() error { return Status("reload failed:\nline 4: bad") }, want: "STATUS=reload failed: line 4: bad"},
		{name: "raw state", send: func() error { return Notify("READY=1\nSTATUS=up") }, want: "READY=1\nSTATUS=up"},
	}
	for _, socket := range []string{"path", "abstract"} {
		for _, tt := range tests {
			t.Run(socket+"/"+tt.name, func(t *testing.T) {
				conn := listen(t, socket == "abstract")
				if err := tt.send(); err != nil {
					t.Fatal(err)
				}
				if got := receive(t, conn); got != tt.want {
					t.Errorf("got %q, want %q", got, tt.want)
				}
			})
		}
	}
}

func TestReloadingCarriesMonotonicTime(t *testing.T) {
	conn := listen(t, false)
	before, _ := monotonicUsec()
	if err := Reloading(); err != nil {
		t.Fatal(err)
	}
	after, _ := monotonicUsec()
	got := receive(t, conn)
	m := regexp.MustCompile(`^RELOADING=1\nMONOTONIC_USEC=([0-9]+)$`).FindStringSubmatch(got)
	if m == nil {
		t.Fatalf("got %q, want RELOADING=1 and MONOTONIC_USEC", got)
	}
	usec, _ := strconv.ParseUint(m[1], 10, 64)
	if usec < before || usec > after {
		t.Errorf("MONOTONIC_USEC=%d is not between %d and %d (CLOCK_MONOTONIC)", usec, before, after)
	}
}

func TestOutsideSystemdIsANoOp(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	t.Setenv("WATCHDOG_USEC", "")
	for name, send := range map[string]func() error{"ready": Ready, "reloading": Reloading, "stopping": Stopping,
		"status": func() error { return Status("x") }, "watchdog": func() error { return Watchdog(context.Background()) }} {
		if err := send(); err != nil {
			t.Errorf("%s without NOTIFY_SOCKET: %v", name, err)
		}
	}
}

func TestBadSocketIsAnError(t *testing.T) {
	tests := []struct {
		name, socket, want string
	}{
		{name: "missing path", socket: "/nonexistent/notify.sock", want: "connect to /nonexistent/notify.sock"},
		{name: "relative path", socket: "notify.sock", want: "neither a path nor an abstract socket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("NOTIFY_SOCKET", tt.socket)
			err := Ready()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestWatchdogInterval(t *testing.T) {
	self := strconv.Itoa(os.Getpid())
	tests := []struct {
		name, usec, pid string
		want            time.Duration
		wantErr         bool
	}{
		{name: "unset", want: 0},
		{name: "set, no pid", usec: "20000000", want: 20 * time.Second},
		{name: "set for this process", usec: "500000", pid: self, want: 500 * time.Millisecond},
		{name: "set for another process", usec: "500000", pid: "1", want: 0},
		{name: "garbage", usec: "soon", wantErr: true},
		{name: "zero", usec: "0", wantErr: true},
		{name: "garbage pid", usec: "500000", pid: "me", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("WATCHDOG_USEC", tt.usec)
			t.Setenv("WATCHDOG_PID", tt.pid)
			got, err := WatchdogInterval()
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}
}

func TestWatchdogPingsUntilCancelled(t *testing.T) {
	conn := listen(t, true)
	t.Setenv("WATCHDOG_USEC", "100000") // 100ms: a ping every 50ms
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Watchdog(ctx) }()

	for i := 0; i < 4; i++ {
		if got := receive(t, conn); got != "WATCHDOG=1" {
			t.Fatalf("ping %d: got %q, want WATCHDOG=1", i, got)
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("watchdog: %v", err)
		}
	case <-time.After(time.Second):
		t.Fatal("watchdog did not return after cancel")
	}
	// Drain pings sent before the cancel, then expect silence.
	for i := 0; i < 100; i++ {
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		if _, err := conn.Read(make([]byte, 64)); err != nil {
			break
		}
	}
	nothing(t, conn, 200*time.Millisecond)
}

func TestWatchdogForAnotherProcessSendsNothing(t *testing.T) {
	conn := listen(t, false)
	t.Setenv("WATCHDOG_USEC", "100000")
	t.Setenv("WATCHDOG_PID", "1")
	if err := Watchdog(context.Background()); err != nil {
		t.Fatal(err)
	}
	nothing(t, conn, 200*time.Millisecond)
}

func TestWatchdogReportsFailedPings(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "gone.sock"))
	t.Setenv("WATCHDOG_USEC", "100000")
	t.Setenv("WATCHDOG_PID", "")
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Millisecond)
	defer cancel()
	err := Watchdog(ctx)
	if err == nil || !strings.Contains(err.Error(), "pings failed") {
		t.Fatalf("got %v, want an error counting failed pings", err)
	}
}
