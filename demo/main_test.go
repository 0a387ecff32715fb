package main

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/meshvm/mesh/meshtest"
)

// Ctrl-C is how a user ends the demo: once traffic flows, and while it is
// still starting, SIGINT stops everything the demo started and the demo
// exits 0 (so `make demo` does not end with "Error 1"). The demo runs as
// built, with the real Consul and mesh, in a network namespace of its own:
// its fixed ports (8500, 18000, 127.0.0.11:15001, ...) clash with nothing.
func TestCtrlCStopsTheDemoWithExitZero(t *testing.T) {
	dir := demoDir(t)
	for _, tc := range []struct {
		name  string
		until string // SIGINT once the demo printed this
	}{
		{"while traffic flows", "  #1 "},
		{"while starting", "==> starting mesh control"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := startDemo(t, dir)
			d.waitFor(t, tc.until, 3*time.Minute)
			if tc.name == "while traffic flows" {
				checkDashboardAndStatus(t, d)
			}
			if err := d.cmd.Process.Signal(os.Interrupt); err != nil {
				t.Fatal(err)
			}
			if err := d.wait(t, time.Minute); err != nil {
				t.Fatalf("demo stopped by Ctrl-C: %v, want exit 0; output:\n%s", err, d.output())
			}
			if !strings.Contains(d.output(), "==> stopping everything the demo started") {
				t.Errorf("demo did not say it stopped what it started:\n%s", d.output())
			}
		})
	}
}

// checkDashboardAndStatus: once traffic flows the demo has printed the
// dashboard's URL, which serves the dashboard, and `mesh status` with
// every proxy in sync.
func checkDashboardAndStatus(t *testing.T, d *runningDemo) {
	t.Helper()
	out := d.output()
	const url = "http://127.0.0.1:19000/ui/"
	if !strings.Contains(out, "mesh dashboard:     "+url) {
		t.Errorf("the demo does not print the dashboard's URL %s:\n%s", url, out)
	}
	i := strings.Index(out, "$ bin/mesh status\n")
	if i < 0 {
		t.Fatalf("the demo does not print mesh status:\n%s", out)
	}
	status := out[i:]
	if j := strings.Index(status, "IN SYNC:"); j >= 0 {
		status = status[:j+strings.IndexByte(status[j:], '\n')+1]
	}
	for _, want := range []string{"SERVICE", "orders", "PROXY", "web-vm-web-1-8080", "orders-vm-orders-1-8080", "IN SYNC: "} {
		if !strings.Contains(status, want) {
			t.Errorf("the demo's mesh status lacks %q:\n%s", want, status)
		}
	}
	t.Logf("the demo printed:\n%s", status)
	if os.Geteuid() != 0 {
		t.Logf("not root: the dashboard is not fetched inside the demo's network namespace")
		return
	}
	for path, want := range map[string]string{"/ui/": "<title>mesh</title>", "/ui/app.js": "EventSource", "/api/v1/status": `"in_sync": true`} {
		body, err := getInNetns(d.cmd.Process.Pid, "127.0.0.1:19000", path)
		if err != nil || !strings.Contains(body, want) {
			t.Errorf("GET %s in the demo's network namespace: %v, no %q in\n%.500s", path, err, want, body)
		}
	}
}

// getInNetns GETs path from addr inside the network namespace of process
// pid: a goroutine locked to its thread enters that namespace, dials (the
// socket is made there) and reads the answer; its thread is never used
// again (the goroutine ends locked).
func getInNetns(pid int, addr, path string) (string, error) {
	type result struct {
		body string
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		body, err := func() (string, error) {
			f, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
			if err != nil {
				return "", err
			}
			defer f.Close()
			if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
				return "", fmt.Errorf("enter the network namespace of %d: %w", pid, err)
			}
			conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				return "", err
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, addr); err != nil {
				return "", err
			}
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				return "", err
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK {
				return string(b), fmt.Errorf("%s", resp.Status)
			}
			return string(b), err
		}()
		ch <- result{body, err}
	}()
	r := <-ch
	return r.body, r.err
}

// `make demo` runs the built demo, not `go run` (which exits 1 on Ctrl-C
// whatever its program does).
func TestMakeDemoRunsTheBuiltBinary(t *testing.T) {
	cmd := exec.Command("make", "-n", "demo", "DEMO_FLAGS=-duration 1s")
	cmd.Dir = meshtest.RepoRoot()
	cmd.Env = withoutMake(os.Environ())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make -n demo: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "go run") || !strings.Contains(string(out), "\nbin/demo -duration 1s\n") {
		t.Errorf("make demo does not run bin/demo:\n%s", out)
	}
}

// demoDir holds what `make demo` would: bin/mesh, bin/consul and the demo.
func demoDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	for pkg, out := range map[string]string{".": "bin/mesh", "./demo": "demo"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, out), pkg)
		cmd.Dir = meshtest.RepoRoot()
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, b)
		}
	}
	consul := meshtest.ConsulBinary()
	if _, err := os.Stat(consul); err != nil {
		t.Fatalf("the demo needs a real Consul (make consul): %v", err)
	}
	if err := os.Symlink(consul, filepath.Join(dir, "bin", "consul")); err != nil {
		t.Fatal(err)
	}
	return dir
}

type runningDemo struct {
	cmd  *exec.Cmd
	done chan error
	mu   sync.Mutex
	out  strings.Builder
	line chan struct{} // a line was added
}

// startDemo runs the demo in a new network namespace with its loopback
// up, without Jaeger (bin/jaeger is not in dir). The process in the
// namespace is this test binary (TestMain brings lo up and execs the
// demo), so the demo keeps the process id a signal goes to.
func startDemo(t *testing.T, dir string) *runningDemo {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	d := &runningDemo{cmd: exec.Command(self, "-every", "100ms"), done: make(chan error, 1), line: make(chan struct{}, 1)}
	d.cmd.Dir = dir
	d.cmd.Env = append(withoutMake(os.Environ()), execDemoEnv+"="+filepath.Join(dir, "demo"),
		"MESH_JAEGER_BIN="+filepath.Join(dir, "bin", "jaeger"), "MESH_DEMO_OTLP=")
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	if os.Geteuid() != 0 { // a user namespace where this user is root
		d.cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWUSER
		d.cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Geteuid(), Size: 1}}
		d.cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getegid(), Size: 1}}
	}
	stdout, err := d.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	d.cmd.Stderr = d.cmd.Stdout
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			d.mu.Lock()
			d.out.WriteString(sc.Text() + "\n")
			d.mu.Unlock()
			select {
			case d.line <- struct{}{}:
			default:
			}
		}
		d.done <- d.cmd.Wait()
	}()
	t.Cleanup(func() {
		select {
		case err := <-d.done:
			d.done <- err
		default: // still running: its children die with it (Pdeathsig)
			_ = d.cmd.Process.Signal(syscall.SIGKILL)
			<-d.done
		}
	})
	return d
}

func (d *runningDemo) output() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.out.String()
}

// waitFor waits until the demo printed a line starting with prefix.
func (d *runningDemo) waitFor(t *testing.T, prefix string, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		for _, l := range strings.Split(d.output(), "\n") {
			if strings.HasPrefix(l, prefix) {
				return
			}
		}
		select {
		case <-d.line:
		case <-deadline:
			t.Fatalf("demo did not print %q in %s:\n%s", prefix, timeout, d.output())
		case err := <-d.done:
			d.done <- err
			t.Fatalf("demo exited (%v) before printing %q:\n%s", err, prefix, d.output())
		}
	}
}

func (d *runningDemo) wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case err := <-d.done:
		d.done <- err
		return err
	case <-time.After(timeout):
		t.Fatalf("demo still running %s after Ctrl-C:\n%s", timeout, d.output())
		return nil
	}
}

// execDemoEnv, set, makes this test binary bring up lo and exec the demo
// it names with its own arguments.
const execDemoEnv = "MESH_DEMO_TEST_EXEC"

func TestMain(m *testing.M) {
	if demo := os.Getenv(execDemoEnv); demo != "" {
		if err := loopbackUp(); err != nil {
			fmt.Fprintln(os.Stderr, "bring up lo in the demo's network namespace:", err)
			os.Exit(2)
		}
		err := syscall.Exec(demo, append([]string{demo}, os.Args[1:]...), os.Environ())
		fmt.Fprintln(os.Stderr, "exec the demo:", err)
		os.Exit(2)
	}
	os.Exit(m.Run())
}

// loopbackUp sets lo up (a new network namespace has it down), as
// `ip link set lo up` would, without needing iproute2.
func loopbackUp() error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	var ifr [40]byte // struct ifreq: name, then flags (a short)
	copy(ifr[:], "lo")
	ioctl := func(req uintptr) error {
		if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(&ifr[0]))); e != 0 {
			return e
		}
		return nil
	}
	if err := ioctl(syscall.SIOCGIFFLAGS); err != nil {
		return err
	}
	flags := binary.NativeEndian.Uint16(ifr[16:]) | syscall.IFF_UP
	binary.NativeEndian.PutUint16(ifr[16:], flags)
	return ioctl(syscall.SIOCSIFFLAGS)
}

// withoutMake drops a parent make's variables (jobserver descriptors this
// process does not have) from env.
func withoutMake(env []string) []string {
	var out []string
	for _, e := range env {
		if !strings.HasPrefix(e, "MAKEFLAGS=") && !strings.HasPrefix(e, "MFLAGS=") && !strings.HasPrefix(e, "MAKELEVEL=") {
			out = append(out, e)
		}
	}
	return out
}
