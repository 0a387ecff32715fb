// Package meshtest starts the real parts mesh's tests run against: a Consul
// dev agent built by `make consul`, free loopback ports, and helpers to wait
// for conditions. It is imported only by tests.
package meshtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"
)

// Consul is a running Consul dev agent.
type Consul struct {
	// Addr is the HTTP API address, host:port.
	Addr   string
	Client *consul.Client
	cmd    *exec.Cmd
	dir    string
	ports  map[string]int
	logf   *os.File
}

// RepoRoot is the module root (where go.mod is).
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// ConsulBinary is the binary `make consul` builds; MESH_CONSUL_BIN overrides it.
func ConsulBinary() string {
	if p := os.Getenv("MESH_CONSUL_BIN"); p != "" {
		return p
	}
	return filepath.Join(RepoRoot(), "bin", "consul")
}

// StartConsul starts a dev agent on free 127.0.0.1 ports and waits for a
// leader. It is meant for TestMain: call Stop when the package's tests end.
// A missing binary is an error, never a skip.
func StartConsul() (*Consul, error) {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		var c *Consul
		c, err = startConsul()
		if err == nil || !errors.Is(err, errPortTaken) {
			return c, err
		}
		// A port FreePort found was taken by another test process before
		// Consul bound it: try again with new ports.
	}
	return nil, err
}

var errPortTaken = errors.New("a port was taken before consul bound it")

func startConsul() (*Consul, error) {
	bin := ConsulBinary()
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("consul binary %s missing (run `make consul`): %w", bin, err)
	}
	dir, err := os.MkdirTemp("", "mesh-consul-")
	if err != nil {
		return nil, err
	}
	c := &Consul{dir: dir, ports: map[string]int{}}
	for _, p := range []string{"http", "grpc", "dns", "serf-lan", "serf-wan", "server"} {
		c.ports[p] = FreePort("127.0.0.1")
	}
	c.logf, err = os.Create(filepath.Join(dir, "consul.log"))
	if err != nil {
		return nil, err
	}
	c.cmd = exec.Command(bin, "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-data-dir", filepath.Join(dir, "data"), "-node", "meshtest",
		"-http-port", strconv.Itoa(c.ports["http"]), "-grpc-port", strconv.Itoa(c.ports["grpc"]),
		"-dns-port", strconv.Itoa(c.ports["dns"]), "-serf-lan-port", strconv.Itoa(c.ports["serf-lan"]),
		"-serf-wan-port", strconv.Itoa(c.ports["serf-wan"]), "-server-port", strconv.Itoa(c.ports["server"]),
		"-hcl", `check_update_interval = "0s"`,
		// dev mode would also take the fixed gRPC TLS port 8503 and clash
		// with any other Consul on the machine
		"-hcl", fmt.Sprintf(`ports { grpc_tls = %d }`, FreePort("127.0.0.1")))
	c.cmd.Stdout, c.cmd.Stderr = c.logf, c.logf
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start consul: %w", err)
	}
	c.Addr = fmt.Sprintf("127.0.0.1:%d", c.ports["http"])
	c.Client, err = consul.NewClient(&consul.Config{Address: c.Addr})
	if err != nil {
		c.Stop()
		return nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if leader, err := c.Client.Status().Leader(); err == nil && leader != "" {
			return c, nil
		}
		if log, _ := os.ReadFile(filepath.Join(dir, "consul.log")); bytes.Contains(log, []byte("address already in use")) {
			c.Stop()
			return nil, fmt.Errorf("%w: %s", errPortTaken, lastLine(log, "address already in use"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	log, _ := os.ReadFile(filepath.Join(dir, "consul.log"))
	c.Stop()
	return nil, fmt.Errorf("consul did not elect a leader in 30s; log:\n%s", log)
}

// lastLine returns the last line of log that contains s.
func lastLine(log []byte, s string) string {
	lines := strings.Split(string(log), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], s) {
			return strings.TrimSpace(lines[i])
		}
	}
	return ""
}

// Stop kills the agent and removes its data.
func (c *Consul) Stop() {
	if c.cmd != nil && c.cmd.Process != nil {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = c.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}
	if c.logf != nil {
		c.logf.Close()
	}
	os.RemoveAll(c.dir)
}

// FreePort returns a TCP port free on host at the time of the call.
func FreePort(host string) int {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		panic(fmt.Sprintf("find a free port on %s: %v", host, err))
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Eventually polls cond every 20ms until it returns nil or timeout passes,
// then fails the test with the last error.
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("condition not met in %s: %v", timeout, err)
}

// WaitHTTP waits until url answers with any status.
func WaitHTTP(ctx context.Context, url string) error {
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w (last error: %v)", url, ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// LoopbackHost returns 127.0.0.N, a distinct "VM" address on loopback.
func LoopbackHost(n int) string {
	return "127.0.0." + strings.TrimSpace(strconv.Itoa(n))
}

// RunWithConsul is a TestMain body: it starts a Consul dev agent, stores
// it in *c, runs the package's tests and exits with their code. A Consul
// that does not start fails the package (never a skip).
func RunWithConsul(m *testing.M, c **Consul) {
	var err error
	*c, err = StartConsul()
	if err != nil {
		fmt.Fprintln(os.Stderr, "these tests need a real Consul:", err)
		os.Exit(1)
	}
	code := m.Run()
	(*c).Stop()
	os.Exit(code)
}
