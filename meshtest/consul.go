// Package meshtest starts the real parts mesh's tests run against: a Consul
// dev agent built by `make consul`, free loopback ports, and helpers to wait
// for conditions. It is imported only by tests.
package meshtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
	// exited is closed when the process has exited, with exitErr and
	// exitedAt set.
	exited   chan struct{}
	exitErr  error
	exitedAt time.Time
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
// A missing binary is an error, never a skip. A port clash (a port taken
// before Consul bound it) starts again on new ports, up to 3 times; a
// Consul that exits is reported at once, with the end of its log.
func StartConsul() (*Consul, error) {
	return startConsul(ConsulBinary(), func() []int { return FreePorts("127.0.0.1", len(consulPorts)) }, nil)
}

// StartConsulACL is StartConsul with ACLs enabled, default policy deny
// and management as the initial management token; Client uses it.
func StartConsulACL(management string) (*Consul, error) {
	hcl := fmt.Sprintf(`acl { enabled = true, default_policy = "deny", enable_token_persistence = false, tokens { initial_management = %q, agent = %q } }`, management, management)
	c, err := startConsul(ConsulBinary(), func() []int { return FreePorts("127.0.0.1", len(consulPorts)) }, []string{"-hcl", hcl})
	if err != nil {
		return nil, err
	}
	if c.Client, err = consul.NewClient(&consul.Config{Address: c.Addr, Token: management}); err != nil {
		c.Stop()
		return nil, fmt.Errorf("consul client for %s: %w", c.Addr, err)
	}
	return c, nil
}

// consulPorts are the ports a dev agent binds, each given explicitly: dev
// mode would otherwise take fixed ones (8500, 8502, 8503, 8600, ...) and
// clash with any other Consul on the machine.
var consulPorts = []string{"http", "grpc", "grpc_tls", "dns", "serf_lan", "serf_wan", "server"}

const (
	consulAttempts    = 3
	consulLeaderWait  = 30 * time.Second
	consulLogTailSize = 20
)

// errPortTaken is a start that failed on a port clash.
var errPortTaken = errors.New("consul could not bind its ports")

// consulStart is what a start attempt records, for the helper's tests.
type consulStart struct {
	errs     []error   // of the failed attempts, in order
	exitedAt time.Time // when the last attempt's process exited, if it did
}

// startConsul tries up to consulAttempts port sets from pick (each a
// value per consulPorts), with extra arguments for Consul.
func startConsul(bin string, pick func() []int, extra []string) (*Consul, error) {
	c, _, err := startConsulRecorded(bin, pick, extra)
	return c, err
}

func startConsulRecorded(bin string, pick func() []int, extra []string) (*Consul, *consulStart, error) {
	if _, err := os.Stat(bin); err != nil {
		return nil, nil, fmt.Errorf("consul binary %s missing (run `make consul`): %w", bin, err)
	}
	rec := &consulStart{}
	for attempt := 1; ; attempt++ {
		ports := pick()
		c, err := startConsulOnce(bin, ports, extra, rec)
		if err == nil {
			return c, rec, nil
		}
		rec.errs = append(rec.errs, err)
		if !errors.Is(err, errPortTaken) || attempt == consulAttempts {
			if attempt > 1 {
				err = fmt.Errorf("attempt %d of %d: %w", attempt, consulAttempts, err)
			}
			return nil, rec, err
		}
	}
}

func startConsulOnce(bin string, portList []int, extra []string, rec *consulStart) (*Consul, error) {
	if len(portList) != len(consulPorts) {
		return nil, fmt.Errorf("start consul: %d ports for %d listeners", len(portList), len(consulPorts))
	}
	dir, err := os.MkdirTemp("", "mesh-consul-")
	if err != nil {
		return nil, fmt.Errorf("start consul: %w", err)
	}
	c := &Consul{dir: dir, ports: map[string]int{}, exited: make(chan struct{})}
	for i, name := range consulPorts {
		c.ports[name] = portList[i]
	}
	c.logf, err = os.Create(filepath.Join(dir, "consul.log"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start consul: %w", err)
	}
	args := []string{"agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-data-dir", filepath.Join(dir, "data"), "-node", "meshtest",
		"-http-port", strconv.Itoa(c.ports["http"]), "-grpc-port", strconv.Itoa(c.ports["grpc"]),
		"-dns-port", strconv.Itoa(c.ports["dns"]), "-serf-lan-port", strconv.Itoa(c.ports["serf_lan"]),
		"-serf-wan-port", strconv.Itoa(c.ports["serf_wan"]), "-server-port", strconv.Itoa(c.ports["server"]),
		"-hcl", `check_update_interval = "0s"`,
		"-hcl", fmt.Sprintf(`ports { grpc_tls = %d }`, c.ports["grpc_tls"])}
	c.cmd = exec.Command(bin, append(args, extra...)...)
	c.cmd.Stdout, c.cmd.Stderr = c.logf, c.logf
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		c.logf.Close()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start consul: %w", err)
	}
	go func() { c.exitErr = c.cmd.Wait(); c.exitedAt = time.Now(); close(c.exited) }()
	c.Addr = fmt.Sprintf("127.0.0.1:%d", c.ports["http"])
	c.Client, err = consul.NewClient(&consul.Config{Address: c.Addr})
	if err != nil {
		c.Stop()
		return nil, fmt.Errorf("consul client for %s: %w", c.Addr, err)
	}
	fail := func(err error) (*Consul, error) {
		c.Stop()
		return nil, err
	}
	deadline := time.Now().Add(consulLeaderWait)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(deadline) {
		select {
		case <-c.exited:
			rec.exitedAt = c.exitedAt
			log := c.Log()
			if line, ok := portClash(log); ok {
				return fail(fmt.Errorf("%w (%s): %s", errPortTaken, c.portsString(), line))
			}
			return fail(fmt.Errorf("consul exited at start (%v); last lines of its log:\n%s", c.exitErr, tail(log, consulLogTailSize)))
		case <-tick.C:
		}
		if line, ok := portClash(c.Log()); ok { // logged, not exited (yet)
			return fail(fmt.Errorf("%w (%s): %s", errPortTaken, c.portsString(), line))
		}
		if c.hasLeader() {
			select {
			case <-c.exited: // someone else answered on the HTTP port
				continue
			default:
				return c, nil
			}
		}
	}
	return fail(fmt.Errorf("consul did not elect a leader in %s; last lines of its log:\n%s", consulLeaderWait, tail(c.Log(), consulLogTailSize)))
}

// hasLeader asks the HTTP API whether a leader was elected.
func (c *Consul) hasLeader() bool {
	client := http.Client{Timeout: time.Second}
	resp, err := client.Get("http://" + c.Addr + "/v1/status/leader")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var leader string
	return resp.StatusCode == http.StatusOK && json.NewDecoder(resp.Body).Decode(&leader) == nil && leader != ""
}

// Log is what Consul printed so far.
func (c *Consul) Log() string {
	b, _ := os.ReadFile(filepath.Join(c.dir, "consul.log"))
	return string(b)
}

func (c *Consul) portsString() string {
	parts := make([]string, 0, len(consulPorts))
	for _, name := range consulPorts {
		parts = append(parts, fmt.Sprintf("%s %d", name, c.ports[name]))
	}
	return "ports " + strings.Join(parts, ", ")
}

// tail is the last n lines of log.
func tail(log string, n int) string {
	lines := strings.Split(strings.TrimRight(log, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Stop kills the agent and removes its data.
func (c *Consul) Stop() {
	if c.cmd != nil && c.cmd.Process != nil {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.exited:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
			<-c.exited
		}
	}
	if c.logf != nil {
		c.logf.Close()
	}
	os.RemoveAll(c.dir)
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
