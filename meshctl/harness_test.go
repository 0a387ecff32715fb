package meshctl_test

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshvm/mesh/meshtest"
)

// testConsul is the package's Consul dev agent; meshBin the mesh binary,
// built once.
var (
	testConsul *meshtest.Consul
	meshBin    string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "meshctl-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	meshBin = filepath.Join(dir, "mesh")
	cmd := exec.Command("go", "build", "-o", meshBin, ".")
	cmd.Dir = meshtest.RepoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		os.Exit(1)
	}
	defer os.RemoveAll(dir)
	meshtest.RunWithConsul(m, &testConsul)
}

// mesh is a running mesh: mesh control and agents as processes, each
// agent on its own loopback "VM" in front of a real app.
type mesh struct {
	t                  *testing.T
	xdsAddr, adminAddr string
	control            *meshtest.Process
	vms                map[string]*vm
	// agentEnv is added to each agent's environment (MESH_* settings).
	agentEnv []string
}

// vm is one simulated machine: an app and its agent.
type vm struct {
	name, ip, service string
	agent             *meshtest.Process
}

func (v *vm) outbound() string { return v.ip + ":15001" }
func (v *vm) admin() string    { return v.ip + ":15000" }

// nodeID is the agent's xDS node id: <service>-<node>-<app port>.
func (v *vm) nodeID() string { return v.service + "-" + v.name + "-8080" }

// startControl runs mesh control with 1 s load reports; extra is YAML
// added to its config (policies:).
func startControl(t *testing.T, extra ...string) *mesh {
	t.Helper()
	m := &mesh{t: t, vms: map[string]*vm{},
		xdsAddr:   "127.0.0.1:" + strconv.Itoa(meshtest.FreePort("127.0.0.1")),
		adminAddr: "127.0.0.1:" + strconv.Itoa(meshtest.FreePort("127.0.0.1"))}
	cfg := filepath.Join(t.TempDir(), "control.yaml")
	body := fmt.Sprintf("log:\n  level: warn\nconsul:\n  addr: %s\ncontrol:\n  xds_addr: %s\n  admin_addr: %s\n  debounce: 20ms\n  load_reporting_interval: 1s\n",
		testConsul.Addr, m.xdsAddr, m.adminAddr) + strings.Join(extra, "")
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	m.control = meshtest.StartProcess(t, nil, meshBin, "control", "--config", cfg)
	t.Cleanup(func() { stop(t, m.control) })
	waitOK(t, "http://"+m.adminAddr+"/ready", 30*time.Second)
	return m
}

// addVM starts an app on ip:8080 (/health 200, /fail 500, anything else
// 200 naming the service) and its agent.
func (m *mesh) addVM(name, ip, service string) *vm {
	t := m.t
	t.Helper()
	ln, err := net.Listen("tcp", ip+":8080")
	if err != nil {
		t.Fatal(err)
	}
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/health":
		case "/fail":
			http.Error(w, "failing on purpose", http.StatusInternalServerError)
		case "/slow":
			time.Sleep(time.Second)
		default:
			fmt.Fprintf(w, "%s on %s\n", service, name)
		}
	})}
	go func() { _ = app.Serve(ln) }()
	t.Cleanup(func() { _ = app.Close() })
	v := &vm{name: name, ip: ip, service: service}
	v.agent = meshtest.StartProcess(t, m.agentEnv, meshBin, "agent",
		"--service", service, "--app-address", ip, "--app-port", "8080", "--app-health", "/health", "--app-protocol", "http1",
		"--inbound-addr", ip+":15006", "--outbound-addr", v.outbound(), "--admin-addr", v.admin(),
		"--advertise-addr", ip, "--node", name, "--consul-addr", testConsul.Addr,
		"--cache-dir", t.TempDir(), "--drain-period", "0s", "--log-level", "warn",
		"--region", "eu", "--zone", "eu-"+name,
		"--control-plane", m.xdsAddr)
	t.Cleanup(func() { stop(t, v.agent) })
	waitOK(t, "http://"+v.admin()+"/ready", 30*time.Second)
	m.vms[name] = v
	return v
}

// call sends one request through v's agent to service; it returns the
// status.
func (v *vm) call(t *testing.T, service, path string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+v.outbound()+path, nil)
	req.Host = service
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("call %s%s through %s: %v", service, path, v.name, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// run runs `mesh ARGS --control-plane-admin ADMIN` and returns its
// output and exit status.
func (m *mesh) run(args ...string) (string, int) {
	m.t.Helper()
	args = append(args, "--control-plane-admin", m.adminAddr)
	cmd := exec.Command(meshBin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), 0
	case errors.As(err, &ee):
		return out.String(), ee.ExitCode()
	}
	m.t.Fatalf("mesh %s: %v", strings.Join(args, " "), err)
	return "", -1
}

func waitOK(t *testing.T, url string, timeout time.Duration) {
	t.Helper()
	c := &http.Client{Timeout: time.Second}
	meshtest.Eventually(t, timeout, func() error {
		resp, err := c.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", url, resp.Status)
		}
		return nil
	})
}

func stop(t *testing.T, p *meshtest.Process) {
	p.Signal(syscall.SIGTERM)
	_ = p.Wait(t, 20*time.Second)
}
