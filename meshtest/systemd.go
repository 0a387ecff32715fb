package meshtest

import (
	"fmt"
	"net"
	"os"
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

// Process is a mesh binary run by a test, its output kept.
type Process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	out  SyncBuffer
}

// StartProcess runs bin with args and env added to the test's
// environment. When the test ends the process is killed if still running,
// and its output is logged if the test failed.
func StartProcess(t *testing.T, env []string, bin string, args ...string) *Process {
	t.Helper()
	p := &Process{cmd: exec.Command(bin, args...), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", filepath.Base(bin), p.Output())
		}
	})
	return p
}

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) { _ = p.cmd.Process.Signal(sig) }

// Output is what the process wrote so far.
func (p *Process) Output() string { return p.out.String() }

// Wait waits up to timeout for the process to exit and returns its exit
// error (nil for exit code 0); it fails the test on timeout.
func (p *Process) Wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		t.Fatalf("%s did not exit within %s", p.cmd.Path, timeout)
		return nil
	}
}
