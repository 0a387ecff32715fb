package meshtest

import (
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// NotifySocket is a test NOTIFY_SOCKET: it records every sd_notify
// message a process sends. Pass Path in the process's environment.
type NotifySocket struct {
	Path string
	mu   sync.Mutex
	msgs []string
}

// NewNotifySocket listens on a unixgram socket in a temporary directory
// until the test ends.
func NewNotifySocket(t *testing.T) *NotifySocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n := &NotifySocket{Path: path}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, string(buf[:k]))
			n.mu.Unlock()
		}
	}()
	t.Cleanup(func() { conn.Close(); <-done })
	return n
}

// States returns the messages so far, in order, one entry per assignment:
// READY, RELOADING, STOPPING, WATCHDOG, STATUS=...
func (n *NotifySocket) States() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for _, m := range n.msgs {
		for _, line := range strings.Split(m, "\n") {
			switch {
			case line == "READY=1", line == "RELOADING=1", line == "STOPPING=1", line == "WATCHDOG=1":
				out = append(out, strings.TrimSuffix(line, "=1"))
			case strings.HasPrefix(line, "STATUS="):
				out = append(out, line)
			}
		}
	}
	return out
}

// Count is how many times state was sent.
func (n *NotifySocket) Count(state string) int {
	got := 0
	for _, s := range n.States() {
		if s == state {
			got++
		}
	}
	return got
}

// WaitFor waits until state was sent count times.
func (n *NotifySocket) WaitFor(t *testing.T, state string, count int) {
	t.Helper()
	Eventually(t, 15*time.Second, func() error {
		if got := n.Count(state); got < count {
			return fmt.Errorf("%d %s messages, want %d; got %v", got, state, count, n.Without("WATCHDOG"))
		}
		return nil
	})
}

// Without returns the states but state.
func (n *NotifySocket) Without(state string) []string {
	return slices.DeleteFunc(n.States(), func(s string) bool { return s == state })
}

// HasStatus reports whether a STATUS line starts with prefix and contains
// every one of parts.
func (n *NotifySocket) HasStatus(prefix string, parts ...string) bool {
	return slices.ContainsFunc(n.States(), func(s string) bool {
		if !strings.HasPrefix(s, "STATUS="+prefix) {
			return false
		}
		for _, p := range parts {
			if !strings.Contains(s, p) {
				return false
			}
		}
		return true
	})
}

// BuildMesh builds the mesh binary into the test's temporary directory.
func BuildMesh(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "mesh")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = RepoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}
