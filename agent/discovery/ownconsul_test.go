package discovery

import (
	"errors"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/meshvm/mesh/meshtest"
)

// ownConsul is a second Consul dev agent that one test stops for good.
// meshtest.StartConsul cannot start a second agent next to the package's:
// it leaves the gRPC TLS port at its fixed default (8503), which the first
// agent holds. This one picks every port.
type ownConsul struct {
	client *consulapi.Client
	cmd    *exec.Cmd
	done   chan struct{}
}

func startOwnConsul(t *testing.T) *ownConsul {
	t.Helper()
	dir := t.TempDir()
	port := func() string { return strconv.Itoa(meshtest.FreePort("127.0.0.1")) }
	http := port()
	cmd := exec.Command(meshtest.ConsulBinary(), "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-data-dir", filepath.Join(dir, "data"), "-node", "own",
		"-http-port", http, "-grpc-port", port(), "-grpc-tls-port", port(), "-dns-port", port(),
		"-serf-lan-port", port(), "-serf-wan-port", port(), "-server-port", port(),
		"-hcl", `check_update_interval = "0s"`)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start consul %s: %v", meshtest.ConsulBinary(), err)
	}
	c := &ownConsul{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(c.done) }()
	t.Cleanup(c.stop)
	var err error
	c.client, err = consulapi.NewClient(&consulapi.Config{Address: "127.0.0.1:" + http})
	if err != nil {
		t.Fatal(err)
	}
	meshtest.Eventually(t, 30*time.Second, func() error {
		select {
		case <-c.done:
			t.Fatalf("consul exited: %v", cmd.ProcessState)
		default:
		}
		leader, err := c.client.Status().Leader()
		if err == nil && leader == "" {
			err = errNoLeader
		}
		return err
	})
	return c
}

var errNoLeader = errors.New("no leader yet")

// stop kills the agent and waits for it.
func (c *ownConsul) stop() {
	select {
	case <-c.done:
		return
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		<-c.done
	}
}
