//go:build netns

// Package netnstest runs transparent interception end to end on real
// netfilter: two "VMs" as network namespaces joined by a veth pair, a real
// Consul (a dev server on vm1, a client agent on vm2), mesh control on vm1
// (vm1's agent takes its table and virtual IPs over xDS; vm2's agents read
// Consul directly), a mesh agent per VM running as its own uid, rules installed by `mesh redirect-traffic`, and
// unmodified clients (curl, Python's urllib, redis-cli). It needs root:
// `make test-netns`. A missing part fails, it never skips.
package netnstest

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshvm/mesh/meshtest"
)

const (
	agentUID    = 15999 // the VMs' "mesh" user
	excludedUID = 15998 // a user redirect-traffic leaves alone
	vm1IP       = "10.77.0.1"
	vm2IP       = "10.77.0.2"
	vm1IP6      = "fd77::1"
	vm2IP6      = "fd77::2"
)

// vm is one network namespace.
type vm struct {
	t    *testing.T
	name string
}

// run runs a command inside the VM and returns its combined output.
func (v vm) run(args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", v.name}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (v vm) must(args ...string) string {
	v.t.Helper()
	out, err := v.run(args...)
	if err != nil {
		v.t.Fatalf("%s: %s: %v\n%s", v.name, strings.Join(args, " "), err, out)
	}
	return out
}

// proc is a long-running process in a VM, its output kept.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *meshtest.SyncBuffer
	done chan struct{}
}

func (v vm) start(name string, uid int, dir string, args ...string) *proc {
	v.t.Helper()
	full := []string{"netns", "exec", v.name}
	if uid != 0 {
		full = append(full, "setpriv", "--reuid", strconv.Itoa(uid), "--regid", strconv.Itoa(uid), "--clear-groups")
	}
	full = append(full, args...)
	p := &proc{name: v.name + "/" + name, cmd: exec.Command("ip", full...), out: &meshtest.SyncBuffer{}, done: make(chan struct{})}
	p.cmd.Dir = dir
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		v.t.Fatalf("start %s: %v", p.name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	v.t.Cleanup(func() { p.stop(syscall.SIGTERM) })
	return p
}

func (p *proc) stop(sig syscall.Signal) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, sig)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

func eventually(t *testing.T, what string, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s: %v", what, timeout, err)
}

// metric sums a counter's samples whose labels contain every one of
// labels, from the agent's admin listener.
func (v vm) metric(admin, name string, labels ...string) float64 {
	v.t.Helper()
	out := v.must("curl", "-s", "--max-time", "5", "http://"+admin+"/metrics")
	sum := 0.0
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(line, l)
		}
		if !ok {
			continue
		}
		f := strings.Fields(line)
		n, _ := strconv.ParseFloat(f[len(f)-1], 64)
		sum += n
	}
	return sum
}

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// world is the topology every subtest shares.
type world struct {
	vm1, vm2           vm
	mesh, dir          string
	web, orders, cache *proc
	webCfg, ordersCfg  string
	before1, before2   string // nft list ruleset before any mesh rule
}

func TestInterception(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the netns suite needs root (network namespaces, netfilter): run `sudo make test-netns`")
	}
	for _, tool := range []string{"ip", "nft", "curl", "python3", "redis-server", "redis-cli", "setpriv", "openssl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: %v (.ci/run installs it)", tool, err)
		}
	}
	consul := meshtest.ConsulBinary()
	if _, err := os.Stat(consul); err != nil {
		t.Fatalf("consul: %v (make consul)", err)
	}
	w := setup(t, consul)
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range []*proc{w.web, w.orders, w.cache} {
				t.Logf("last lines of %s:\n%s", p.name, tail(p.out.String(), 25))
			}
		}
	})

	t.Run("rules installed twice are the same, dry-run prints them", func(t *testing.T) {
		first := w.vm1.must("nft", "list", "table", "inet", "mesh")
		w.vm1.must(w.mesh, "redirect-traffic", "--config", w.webCfg, "--proxy-uid", strconv.Itoa(agentUID), "--redirect-dns", "--exclude-uid", strconv.Itoa(excludedUID))
		if again := w.vm1.must("nft", "list", "table", "inet", "mesh"); again != first {
			t.Fatalf("second install changed the rules:\n%s\nthen\n%s", first, again)
		}
		dry := w.vm1.must(w.mesh, "redirect-traffic", "--dry-run", "--config", w.webCfg, "--proxy-uid", strconv.Itoa(agentUID), "--redirect-dns", "--exclude-uid", strconv.Itoa(excludedUID))
		if dry != first {
			t.Fatalf("--dry-run differs from what the kernel holds:\n%s\nkernel:\n%s", dry, first)
		}
		if all := w.vm1.must("nft", "list", "ruleset"); !strings.Contains(all, "table inet other") {
			t.Fatalf("the foreign table is gone:\n%s", all)
		}
		// SSH and Consul's ports are excluded by default, both ways.
		for _, chain := range []string{"output", "prerouting"} {
			body := w.vm1.must("nft", "list", "chain", "inet", "mesh", chain)
			for _, want := range []string{"tcp dport 22 return", "tcp dport 8300-8302 return", "tcp dport 8500-8502 return", "tcp dport 8600 return"} {
				if !strings.Contains(body, want) {
					t.Fatalf("chain %s lacks %q:\n%s", chain, want, body)
				}
			}
		}
	})

	t.Run("curl by the service's real address goes through both agents", func(t *testing.T) {
		out := w.vm1.must("curl", "-sS", "--max-time", "10", "-D", "-", "http://"+vm2IP+":8080/hello.txt")
		if !strings.Contains(out, "hello from orders") || !strings.Contains(out, " 200 ") {
			t.Fatalf("curl: %s", out)
		}
		eventually(t, "vm1's access log shows the outbound call to orders", 10*time.Second, func() error {
			return logHas(w.web, `"direction":"outbound"`, `"upstream_service":"orders"`, `"path":"/hello.txt"`)
		})
		eventually(t, "vm2's access log shows the inbound call", 10*time.Second, func() error {
			return logHas(w.orders, `"direction":"inbound"`, `"path":"/hello.txt"`)
		})
		if n := w.vm1.metric("127.0.0.1:15000", "mesh_intercept_connections_total", `listener="intercept outbound"`, `result="service"`); n < 1 {
			t.Fatalf("vm1 counted %v intercepted connections to a service", n)
		}
		if n := w.vm1.metric("127.0.0.1:15000", "mesh_requests_total", `direction="outbound"`); n < 1 {
			t.Fatalf("vm1's mesh_requests_total outbound: %v", n)
		}
		if n := w.vm2.metric("127.0.0.1:15000", "mesh_requests_total", `direction="inbound"`); n < 1 {
			t.Fatalf("vm2's mesh_requests_total inbound: %v", n)
		}
	})

	t.Run("curl http://orders.mesh/ resolves the virtual IP through the agent's DNS", func(t *testing.T) {
		// vm1's agent takes the virtual IP the control plane allocated
		// (control.virtual_ips.cidr 240.10.0.0/16), not its own default
		// range.
		addr := w.vm1.must("python3", "-c", "import socket; print(socket.gethostbyname('orders.mesh'))")
		if !strings.HasPrefix(strings.TrimSpace(addr), "240.10.") {
			t.Fatalf("orders.mesh resolved to %q, want the control plane's address in 240.10.0.0/16", addr)
		}
		out := w.vm1.must("curl", "-sS", "--max-time", "10", "http://orders.mesh/hello.txt")
		if !strings.Contains(out, "hello from orders") {
			t.Fatalf("curl orders.mesh: %s", out)
		}
		dump := w.vm1.must("curl", "-s", "--max-time", "5", "http://127.0.0.1:15000/config_dump")
		if !strings.Contains(dump, `"interception"`) || !strings.Contains(dump, strings.TrimSpace(addr)) {
			t.Fatalf("config_dump does not show orders' virtual IP %s", addr)
		}
		eventually(t, "vm1's access log shows authority orders.mesh", 10*time.Second, func() error {
			return logHas(w.web, `"authority":"orders.mesh"`, `"upstream_service":"orders"`)
		})
	})

	t.Run("python urllib with no proxy settings", func(t *testing.T) {
		for _, url := range []string{"http://" + vm2IP + ":8080/hello.txt", "http://orders.mesh/hello.txt"} {
			out := w.vm1.must("env", "-u", "HTTP_PROXY", "-u", "http_proxy", "python3", "-c",
				"import urllib.request,sys; r=urllib.request.urlopen(sys.argv[1], timeout=10); print(r.status, r.read().decode())", url)
			if !strings.Contains(out, "200 hello from orders") {
				t.Fatalf("urllib %s: %s", url, out)
			}
		}
	})

	t.Run("curl with the h2c preface (HTTP/2 prior knowledge) goes through both agents", func(t *testing.T) {
		eventually(t, "an HTTP/2 200 from orders.mesh", 15*time.Second, func() error {
			out, err := w.vm1.run("curl", "-sS", "--max-time", "10", "--http2-prior-knowledge", "-D", "-", "http://orders.mesh/h2.txt")
			if err != nil || !strings.HasPrefix(out, "HTTP/2 200") || !strings.Contains(out, "hello from orders") {
				return fmt.Errorf("%v: %s", err, out)
			}
			return nil
		})
		eventually(t, "vm1's access log shows the HTTP/2 request outbound", 10*time.Second, func() error {
			return logHas(w.web, `"direction":"outbound"`, `"upstream_service":"orders"`, `"path":"/h2.txt"`, `"protocol":"HTTP/2.0"`)
		})
		eventually(t, "vm2's access log shows it inbound", 10*time.Second, func() error {
			return logHas(w.orders, `"direction":"inbound"`, `"path":"/h2.txt"`)
		})
	})

	t.Run("redis-cli by the real address and by cache.mesh goes through the TCP relays", func(t *testing.T) {
		if out := w.vm1.must("redis-cli", "-h", vm2IP, "-p", "6379", "SET", "k", "through-the-mesh"); !strings.Contains(out, "OK") {
			t.Fatalf("SET: %s", out)
		}
		if out := w.vm1.must("redis-cli", "-h", vm2IP, "-p", "6379", "GET", "k"); !strings.Contains(out, "through-the-mesh") {
			t.Fatalf("GET: %s", out)
		}
		if out := w.vm1.must("redis-cli", "-h", "cache.mesh", "-p", "6379", "GET", "k"); !strings.Contains(out, "through-the-mesh") {
			t.Fatalf("GET through cache.mesh: %s", out)
		}
		eventually(t, "vm1's access log shows TCP connections to cache", 10*time.Second, func() error {
			return logHas(w.web, `"upstream_service":"cache"`)
		})
		eventually(t, "the cache agent on vm2 relayed them", 10*time.Second, func() error {
			return logHas(w.cache, `"direction":"inbound"`)
		})
	})

	t.Run("a burst is refused by the callee's rate limit", func(t *testing.T) {
		out := w.vm1.must("python3", "-c", `
import urllib.request, urllib.error, collections
c = collections.Counter()
for i in range(60):
    try:
        r = urllib.request.urlopen("http://orders.mesh/hello.txt", timeout=10); c[r.status] += 1
    except urllib.error.HTTPError as e:
        c[(e.code, e.headers.get("x-mesh-reason"))] += 1
print(dict(c))
`)
		if !strings.Contains(out, "(429, 'rate-limited')") || !strings.Contains(out, "200:") {
			t.Fatalf("want some 200 and some 429 rate-limited: %s", out)
		}
	})

	t.Run("unknown destinations pass through and the agent's own connections are not redirected", func(t *testing.T) {
		before := w.vm1.metric("127.0.0.1:15000", "mesh_intercept_connections_total", `result="passed"`)
		out := w.vm1.must("curl", "-sS", "--max-time", "10", "http://"+vm2IP+":9999/")
		if !strings.Contains(out, "plain server") {
			t.Fatalf("pass-through: %s", out)
		}
		// Were the agent's own connection redirected, it would come back
		// to the agent as another unknown destination, again and again.
		time.Sleep(500 * time.Millisecond)
		if n := w.vm1.metric("127.0.0.1:15000", "mesh_intercept_connections_total", `result="passed"`) - before; n != 1 {
			t.Fatalf("%v connections passed through for one curl: the agent's own connection was redirected", n)
		}
	})

	t.Run("a destination that refuses: the app's connection is reset, never answered empty", func(t *testing.T) {
		// Nothing listens on vm2:9998. Without the mesh the connect is
		// refused; intercepted, the agent has already accepted it, so the
		// refusal (seen by vm2's agent, whose pass-through connect is
		// refused) comes back through both agents as a reset.
		out := w.vm1.must("python3", "-c", `
import socket
s = socket.create_connection(("`+vm2IP+`", 9998), timeout=10)
s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
try:
    print("eof" if s.recv(100) == b"" else "data")
except ConnectionResetError:
    print("reset")
`)
		if strings.TrimSpace(out) != "reset" {
			t.Fatalf("a refused destination gave %q, want reset", out)
		}
	})

	t.Run("TLS: a ClientHello to no service passes unchanged, its SNI names a TCP service", func(t *testing.T) {
		// vm2:8443 is a TLS server outside the mesh: the handshake and
		// the response pass through vm1's agent untouched.
		before := w.vm1.metric("127.0.0.1:15000", "mesh_intercept_connections_total", `listener="intercept outbound"`, `result="passed"`)
		out := w.vm1.must("curl", "-sS", "-k", "--max-time", "10", "https://"+vm2IP+":8443/")
		if !strings.Contains(out, "tls server outside the mesh") {
			t.Fatalf("TLS pass-through: %s", out)
		}
		if n := w.vm1.metric("127.0.0.1:15000", "mesh_intercept_connections_total", `listener="intercept outbound"`, `result="passed"`) - before; n != 1 {
			t.Fatalf("vm1 passed %v TLS connections, want 1", n)
		}
		// The same address with server name cache.mesh: the ClientHello's
		// SNI names the TCP service cache, so vm1's agent relays it to
		// cache through both agents (redis then refuses the TLS bytes).
		logsBefore := logCount(w.web, `"upstream_service":"cache"`, `"protocol":"tcp"`)
		beforeSvc := w.vm1.metric("127.0.0.1:15000", "mesh_intercept_connections_total", `listener="intercept outbound"`, `result="service"`)
		_, _ = w.vm1.run("curl", "-sS", "-k", "--max-time", "5", "--resolve", "cache.mesh:8443:"+vm2IP, "https://cache.mesh:8443/")
		if n := w.vm1.metric("127.0.0.1:15000", "mesh_intercept_connections_total", `listener="intercept outbound"`, `result="service"`) - beforeSvc; n != 1 {
			t.Fatalf("vm1 routed %v connections with SNI cache.mesh to a service, want 1", n)
		}
		eventually(t, "vm1's access log shows one more TCP connection to cache", 10*time.Second, func() error {
			if n := logCount(w.web, `"upstream_service":"cache"`, `"protocol":"tcp"`); n != logsBefore+1 {
				return fmt.Errorf("%d lines, want %d", n, logsBefore+1)
			}
			return nil
		})
	})

	t.Run("inbound connections from outside the mesh go through the inbound policies", func(t *testing.T) {
		outBefore := w.vm1.metric("127.0.0.1:15000", "mesh_intercept_connections_total")
		before := w.vm2.metric("127.0.0.1:15000", "mesh_intercept_connections_total", `listener="intercept inbound"`, `result="service"`)
		out := w.vm1.must("setpriv", "--reuid", strconv.Itoa(excludedUID), "--regid", strconv.Itoa(excludedUID), "--clear-groups",
			"curl", "-sS", "--max-time", "10", "http://"+vm2IP+":8080/outside.txt")
		if !strings.Contains(out, "hello from orders") && !strings.Contains(out, "rate-limited") {
			t.Fatalf("curl as an excluded user: %s", out)
		}
		if n := w.vm2.metric("127.0.0.1:15000", "mesh_intercept_connections_total", `listener="intercept inbound"`, `result="service"`) - before; n != 1 {
			t.Fatalf("vm2's inbound intercept took %v connections, want 1", n)
		}
		// The excluded user's connection left vm1 without its agent.
		if n := w.vm1.metric("127.0.0.1:15000", "mesh_intercept_connections_total") - outBefore; n != 0 {
			t.Fatalf("vm1's agent intercepted %v connections of an --exclude-uid user", n)
		}
		eventually(t, "vm2's access log shows the inbound request", 10*time.Second, func() error {
			return logHas(w.orders, `"direction":"inbound"`, `"path":"/outside.txt"`)
		})
	})

	t.Run("an app calling its own service by the VM's address goes through outbound and inbound", func(t *testing.T) {
		out := w.vm2.must("curl", "-sS", "--max-time", "10", "http://"+vm2IP+":8080/self.txt")
		if !strings.Contains(out, "hello from orders") && !strings.Contains(out, "rate-limited") {
			t.Fatalf("curl from vm2 to itself: %s", out)
		}
		eventually(t, "vm2's access log shows it outbound then inbound", 10*time.Second, func() error {
			if err := logHas(w.orders, `"direction":"outbound"`, `"path":"/self.txt"`, `"endpoint":"`+vm2IP+`:15006"`); err != nil {
				return err
			}
			return logHas(w.orders, `"direction":"inbound"`, `"path":"/self.txt"`)
		})
	})

	t.Run("IPv6: original destinations recovered both ways", func(t *testing.T) {
		// vm1: [fd77::2]:8080 is no known instance address (orders
		// registered its IPv4 one), so vm1's agent passes it on; vm2's
		// inbound intercept takes it (its app port) into the inbound path.
		before1 := w.vm1.metric("127.0.0.1:15000", "mesh_intercept_connections_total", `result="passed"`)
		before2 := w.vm2.metric("127.0.0.1:15000", "mesh_intercept_connections_total", `listener="intercept inbound"`, `result="service"`)
		out := w.vm1.must("curl", "-sS", "--max-time", "10", "http://["+vm2IP6+"]:8080/v6.txt")
		if !strings.Contains(out, "hello from orders") && !strings.Contains(out, "rate-limited") {
			t.Fatalf("curl over IPv6: %s", out)
		}
		if n := w.vm1.metric("127.0.0.1:15000", "mesh_intercept_connections_total", `result="passed"`) - before1; n != 1 {
			t.Fatalf("vm1 passed %v IPv6 connections, want 1", n)
		}
		if n := w.vm2.metric("127.0.0.1:15000", "mesh_intercept_connections_total", `listener="intercept inbound"`, `result="service"`) - before2; n != 1 {
			t.Fatalf("vm2's inbound intercept took %v IPv6 connections to its app, want 1", n)
		}
		eventually(t, "vm2's access log shows the IPv6 request inbound", 10*time.Second, func() error {
			return logHas(w.orders, `"direction":"inbound"`, `"path":"/v6.txt"`)
		})
	})

	t.Run("SSH port traffic is untouched", func(t *testing.T) {
		before := w.vm1.metric("127.0.0.1:15000", "mesh_intercept_connections_total")
		before2 := w.vm2.metric("127.0.0.1:15000", "mesh_intercept_connections_total")
		out := w.vm1.must("python3", "-c", `
import socket
s = socket.create_connection(("`+vm2IP+`", 22), timeout=10)
print(s.recv(100).decode())
`)
		// The listener on vm2 answers with the peer it sees: vm1 itself,
		// not an agent.
		if !strings.Contains(out, "ssh-peer "+vm1IP) {
			t.Fatalf("port 22: %s", out)
		}
		if n := w.vm1.metric("127.0.0.1:15000", "mesh_intercept_connections_total") - before; n != 0 {
			t.Fatalf("%v connections to port 22 were intercepted", n)
		}
		if n := w.vm2.metric("127.0.0.1:15000", "mesh_intercept_connections_total") - before2; n != 0 {
			t.Fatalf("vm2's intercept listeners saw %v connections to port 22", n)
		}
	})

	t.Run("Consul's ports are untouched both ways", func(t *testing.T) {
		// New connections (as root, not an excluded uid) from vm2 to
		// vm1's Consul ports: those Consul listens on connect to Consul,
		// the others are refused by vm1's kernel. Neither agent's
		// intercept listener sees any of them (a redirected one would be
		// accepted there and counted).
		before1 := w.vm1.metric("127.0.0.1:15000", "mesh_intercept_connections_total")
		before2 := w.vm2.metric("127.0.0.1:15000", "mesh_intercept_connections_total")
		out := w.vm2.must("python3", "-c", `
import socket
for port in (8300, 8301, 8302, 8500, 8501, 8502, 8600):
    try:
        socket.create_connection(("`+vm1IP+`", port), timeout=5).close(); print(port, "connected")
    except Exception as e:
        print(port, type(e).__name__)
`)
		for _, want := range []string{"8300 connected", "8500 ConnectionRefusedError", "8600 ConnectionRefusedError"} {
			if !strings.Contains(out, want) {
				t.Fatalf("want %q (Consul's server RPC is on vm1's address, HTTP and DNS on loopback: a redirected connect would be accepted by an agent):\n%s", want, out)
			}
		}
		if n := w.vm1.metric("127.0.0.1:15000", "mesh_intercept_connections_total") - before1; n != 0 {
			t.Fatalf("vm1's intercept listeners saw %v connections to Consul's ports", n)
		}
		if n := w.vm2.metric("127.0.0.1:15000", "mesh_intercept_connections_total") - before2; n != 0 {
			t.Fatalf("vm2's intercept listeners saw %v connections to Consul's ports", n)
		}
		// And Consul itself works across the VMs with the rules installed.
		out = w.vm2.must("curl", "-s", "--max-time", "5", "http://127.0.0.1:8500/v1/catalog/nodes")
		if !strings.Contains(out, `"Node":"vm1"`) || !strings.Contains(out, `"Node":"vm2"`) {
			t.Fatalf("vm2's Consul catalog: %s", out)
		}
	})

	t.Run("--exclude-cidr: the app reaches that destination directly", func(t *testing.T) {
		args := []string{w.mesh, "redirect-traffic", "--config", w.webCfg, "--proxy-uid", strconv.Itoa(agentUID), "--exclude-uid", strconv.Itoa(excludedUID)}
		installed := w.vm1.must("nft", "list", "table", "inet", "mesh")
		w.vm1.must(append(args, "--exclude-cidr", vm2IP+"/32", "--exclude-cidr", "fd77::2")...)
		table := w.vm1.must("nft", "list", "table", "inet", "mesh")
		if !strings.Contains(table, "ip daddr "+vm2IP+" return") || !strings.Contains(table, "ip6 daddr "+vm2IP6+" return") {
			t.Fatalf("the exclusions are not installed:\n%s", table)
		}
		before := w.vm1.metric("127.0.0.1:15000", "mesh_intercept_connections_total")
		// (The plain server listens on IPv4 only; the IPv6 exclusion is
		// checked in the table above.)
		if out := w.vm1.must("curl", "-sS", "--max-time", "10", "http://"+vm2IP+":9999/"); !strings.Contains(out, "plain server") {
			t.Fatalf("excluded destination: %s", out)
		}
		if n := w.vm1.metric("127.0.0.1:15000", "mesh_intercept_connections_total") - before; n != 0 {
			t.Fatalf("vm1's agent intercepted %v connections to an excluded CIDR", n)
		}
		// Back to the rules as they were (the install replaces the table).
		w.vm1.must(args...)
		if got := w.vm1.must("nft", "list", "table", "inet", "mesh"); got != installed {
			t.Fatalf("re-install without the exclusion:\n%s\nwant\n%s", got, installed)
		}
	})

	t.Run("unknown: block closes connections to destinations outside the mesh", func(t *testing.T) {
		// Interception settings take effect on restart: restart vm1's
		// agent with agent.interception.unknown: block.
		body, err := os.ReadFile(w.webCfg)
		if err != nil {
			t.Fatal(err)
		}
		blockCfg := filepath.Join(w.dir, "web-block.yaml")
		writeFile(t, blockCfg, strings.Replace(string(body), "    dns: {enabled: true}\n", "    dns: {enabled: true}\n    unknown: block\n", 1))
		if out := w.vm1.must(w.mesh, "config", "validate", blockCfg); !strings.Contains(out, "unknown: block") {
			t.Fatalf("validate: the effective config lacks unknown: block:\n%s", out)
		}
		w.web.stop(syscall.SIGTERM)
		w.web = w.vm1.start("web agent (block)", agentUID, w.dir, w.mesh, "agent", "--config", blockCfg)
		eventually(t, "vm1's agent ready again", 60*time.Second, func() error {
			out, err := w.vm1.run("curl", "-sf", "--max-time", "2", "http://127.0.0.1:15000/ready")
			if err != nil {
				return fmt.Errorf("%v %s\n%s", err, out, tail(w.web.out.String(), 10))
			}
			return nil
		})
		before := w.vm1.metric("127.0.0.1:15000", "mesh_intercept_connections_total", `result="blocked"`)
		out, err := w.vm1.run("curl", "-sS", "--max-time", "10", "http://"+vm2IP+":9999/")
		var ee *exec.ExitError
		if err == nil || !errorsAs(err, &ee) || !strings.Contains(out, "reset") {
			t.Fatalf("blocked destination: want the connection reset, got %v %s", err, out)
		}
		if n := w.vm1.metric("127.0.0.1:15000", "mesh_intercept_connections_total", `result="blocked"`) - before; n != 1 {
			t.Fatalf("vm1 blocked %v connections, want 1", n)
		}
		// Mesh services still work.
		eventually(t, "orders.mesh through the restarted agent", 20*time.Second, func() error {
			out, err := w.vm1.run("curl", "-sS", "--max-time", "10", "http://orders.mesh/hello.txt")
			if err != nil || !strings.Contains(out, "hello from orders") {
				return fmt.Errorf("%v %s", err, out)
			}
			return nil
		})
	})

	t.Run("agent killed: intercepted connections are refused at once, --undo restores the ruleset", func(t *testing.T) {
		w.web.stop(syscall.SIGKILL)
		start := time.Now()
		out, err := w.vm1.run("curl", "-sS", "--max-time", "20", "http://"+vm2IP+":8080/hello.txt")
		took := time.Since(start)
		var ee *exec.ExitError
		if err == nil || !errorsAs(err, &ee) || ee.ExitCode() != 7 {
			t.Fatalf("with the agent dead, want curl exit 7 (could not connect), got %v: %s", err, out)
		}
		// Refused (RST from the empty redirect port), not timed out.
		out = w.vm1.must("python3", "-c", `
import socket
try:
    socket.create_connection(("`+vm2IP+`", 8080), timeout=10); print("connected")
except Exception as e:
    print(type(e).__name__)
`)
		if strings.TrimSpace(out) != "ConnectionRefusedError" {
			t.Fatalf("with the agent dead, a connect gets %q, want ConnectionRefusedError", out)
		}
		if took > 5*time.Second {
			t.Fatalf("refusal took %s: connections must not hang", took)
		}
		w.vm1.must(w.mesh, "redirect-traffic", "--undo")
		if got := w.vm1.must("nft", "list", "ruleset"); got != w.before1 {
			t.Fatalf("after --undo the ruleset is not what it was:\n%s\nbefore:\n%s", got, w.before1)
		}
		// Without rules, the app reaches the service directly again.
		out = w.vm1.must("curl", "-sS", "--max-time", "10", "http://"+vm2IP+":8080/hello.txt")
		if !strings.Contains(out, "hello from orders") && !strings.Contains(out, "rate-limited") {
			t.Fatalf("direct after undo: %s", out)
		}
		w.vm1.must(w.mesh, "redirect-traffic", "--undo") // twice: still fine
	})
}

func errorsAs(err error, target **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	if ok {
		*target = e
	}
	return ok
}

// logCount counts the lines of p holding every piece.
func logCount(p *proc, pieces ...string) int {
	n := 0
	for _, line := range strings.Split(p.out.String(), "\n") {
		ok := true
		for _, s := range pieces {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			n++
		}
	}
	return n
}

// logHas finds one access-log line of p holding every piece.
func logHas(p *proc, pieces ...string) error {
	for _, line := range strings.Split(p.out.String(), "\n") {
		ok := true
		for _, s := range pieces {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			return nil
		}
	}
	return fmt.Errorf("no line of %s has %q; last lines:\n%s", p.name, pieces, tail(p.out.String(), 15))
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

var nsRE = regexp.MustCompile(`[^a-z0-9]`)

func setup(t *testing.T, consul string) *world {
	suffix := nsRE.ReplaceAllString(strconv.Itoa(os.Getpid()%100000), "")
	w := &world{vm1: vm{t, "meshvm1-" + suffix}, vm2: vm{t, "meshvm2-" + suffix}}
	// Binaries and files the agents' uid can read.
	dir, err := os.MkdirTemp("", "mesh-netns-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	w.dir = dir
	w.mesh = filepath.Join(dir, "mesh")
	build := exec.Command("go", "build", "-o", w.mesh, ".")
	build.Dir = meshtest.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	for _, v := range []vm{w.vm1, w.vm2} {
		ip("netns", "add", v.name)
		name := v.name
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run(); os.RemoveAll("/etc/netns/" + name) })
		// `ip netns exec` bind-mounts this over /etc/resolv.conf.
		if err := os.MkdirAll("/etc/netns/"+name, 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, "/etc/netns/"+name+"/resolv.conf", "nameserver 10.77.0.53\noptions timeout:2 attempts:1\n")
	}
	ip("link", "add", "mv1-"+suffix, "netns", w.vm1.name, "type", "veth", "peer", "name", "mv2-"+suffix, "netns", w.vm2.name)
	for _, x := range []struct {
		v      vm
		dev    string
		ip, gw string
		ip6    string
	}{{w.vm1, "mv1-" + suffix, vm1IP, vm2IP, vm1IP6}, {w.vm2, "mv2-" + suffix, vm2IP, vm1IP, vm2IP6}} {
		x.v.must("ip", "link", "set", "lo", "up")
		x.v.must("ip", "addr", "add", x.ip+"/24", "dev", x.dev)
		x.v.must("ip", "link", "set", x.dev, "up")
		x.v.must("ip", "-6", "addr", "add", x.ip6+"/64", "dev", x.dev, "nodad")
		// A default route, as any VM has: virtual IPs (240.0.0.0/4) need
		// one to be dialable before netfilter redirects them.
		x.v.must("ip", "route", "add", "default", "via", x.gw)
	}
	// A table of someone else's, which the mesh must leave alone.
	for _, v := range []vm{w.vm1, w.vm2} {
		v.must("nft", "add", "table", "inet", "other")
		v.must("nft", "add", "chain", "inet", "other", "in", "{ type filter hook input priority 0; policy accept; }")
		v.must("nft", "add", "rule", "inet", "other", "in", "tcp", "dport", "2222", "counter", "accept")
	}
	w.before1 = w.vm1.must("nft", "list", "ruleset")
	w.before2 = w.vm2.must("nft", "list", "ruleset")

	// Consul: a dev server on vm1, a client agent on vm2, both with their
	// HTTP API on the VM's loopback, as on real VMs.
	w.vm1.start("consul", 0, dir, consul, "agent", "-dev", "-bind", vm1IP, "-client", "127.0.0.1", "-node", "vm1")
	cdata := filepath.Join(dir, "consul-vm2")
	w.vm2.start("consul", 0, dir, consul, "agent", "-data-dir", cdata, "-bind", vm2IP, "-client", "127.0.0.1", "-node", "vm2", "-retry-join", vm1IP, "-retry-interval", "1s")
	for _, v := range []vm{w.vm1, w.vm2} {
		eventually(t, v.name+" consul has a leader", 60*time.Second, func() error {
			out, err := v.run("curl", "-s", "--max-time", "2", "http://127.0.0.1:8500/v1/status/leader")
			if err != nil || !strings.Contains(out, ":8300") {
				return fmt.Errorf("leader: %q %v", out, err)
			}
			return nil
		})
	}

	// Apps on vm2: orders (HTTP, on every address as legacy apps do),
	// redis (cache), a plain server on 9999 (outside the mesh) and a
	// stand-in for sshd on 22 that tells the peer it sees.
	www := filepath.Join(dir, "www")
	if err := os.MkdirAll(www, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"hello.txt", "outside.txt", "self.txt", "v6.txt", "h2.txt"} {
		writeFile(t, filepath.Join(www, f), "hello from orders\n")
	}
	w.vm2.start("orders app", 0, www, "python3", "-m", "http.server", "8080", "--bind", "0.0.0.0")
	w.vm2.start("redis", 0, dir, "redis-server", "--port", "6379", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	plain := filepath.Join(dir, "plain")
	if err := os.MkdirAll(plain, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(plain, "index.html"), "plain server\n")
	w.vm2.start("plain", 0, plain, "python3", "-m", "http.server", "9999", "--bind", "0.0.0.0")
	w.vm2.start("sshd stand-in", 0, dir, "python3", "-c", `
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 22)); s.listen(16)
while True:
    c, a = s.accept(); c.sendall(("ssh-peer %s\n" % a[0]).encode()); c.close()
`)
	// A TLS server outside the mesh on vm2:8443 (a self-signed
	// certificate; clients do not verify it).
	if out, err := exec.Command("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
		"-keyout", filepath.Join(dir, "tls.key"), "-out", filepath.Join(dir, "tls.crt"), "-subj", "/CN=outside", "-days", "2").CombinedOutput(); err != nil {
		t.Fatalf("openssl req: %v\n%s", err, out)
	}
	w.vm2.start("tls server", 0, dir, "python3", "-c", `
import socket, ssl
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain("tls.crt", "tls.key")
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8443)); s.listen(16)
while True:
    c, _ = s.accept(); c.settimeout(5)
    try:
        t = ctx.wrap_socket(c, server_side=True); t.recv(4096)
        t.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 28\r\nConnection: close\r\n\r\ntls server outside the mesh\n"); t.close()
    except Exception:
        c.close()
`)
	// vm1's own app (web), so its agent has something to front.
	w.vm1.start("web app", 0, www, "python3", "-m", "http.server", "8081", "--bind", "127.0.0.1")

	cfg := func(name, body string) string {
		path := filepath.Join(dir, name)
		writeFile(t, path, body)
		return path
	}
	cache := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, agentUID, agentUID); err != nil {
			t.Fatal(err)
		}
		return p
	}
	w.ordersCfg = cfg("orders.yaml", `
consul: {addr: 127.0.0.1:8500}
agent:
  service: orders
  app_port: 8080
  app_protocol: http1
  advertise_addr: `+vm2IP+`
  node: vm2
  cache_dir: `+cache("cache-orders")+`
  drain_period: 0s
  health_interval: 1s
  interception: {enabled: true}
policies:
  services:
    orders:
      rate_limit: {max_tokens: 10, tokens_per_fill: 10, fill_interval: 1s}
`)
	cacheCfg := cfg("cache.yaml", `
consul: {addr: 127.0.0.1:8500}
agent:
  service: cache
  app_port: 6379
  app_protocol: tcp
  advertise_addr: `+vm2IP+`
  node: vm2
  inbound_addr: 0.0.0.0:15003
  outbound_addr: 127.0.0.1:15004
  admin_addr: 127.0.0.1:15005
  cache_dir: `+cache("cache-cache")+`
  drain_period: 0s
  health_interval: 1s
`)
	w.webCfg = cfg("web.yaml", `
consul: {addr: 127.0.0.1:8500}
agent:
  service: web
  app_port: 8081
  app_protocol: http1
  advertise_addr: `+vm1IP+`
  node: vm1
  control_plane: [127.0.0.1:18000]
  # intercepted calls are matched by the callee's virtual IP or address,
  # which an agent knows only for services it holds: declare them
  dependencies: [orders, cache]
  cache_dir: `+cache("cache-web")+`
  drain_period: 0s
  health_interval: 1s
  interception:
    enabled: true
    dns: {enabled: true}
`)
	controlCfg := cfg("control.yaml", `
consul: {addr: 127.0.0.1:8500}
control:
  xds_addr: 127.0.0.1:18000
  admin_addr: 127.0.0.1:19000
  ca: {dir: `+cache("ca")+`}
  virtual_ips: {cidr: 240.10.0.0/16}
`)
	control := w.vm1.start("control", agentUID, dir, w.mesh, "control", "--config", controlCfg)
	eventually(t, "mesh control ready", 60*time.Second, func() error {
		out, err := w.vm1.run("curl", "-sf", "--max-time", "2", "http://127.0.0.1:19000/ready")
		if err != nil {
			return fmt.Errorf("%v %s\n%s", err, out, tail(control.out.String(), 10))
		}
		return nil
	})
	w.orders = w.vm2.start("orders agent", agentUID, dir, w.mesh, "agent", "--config", w.ordersCfg)
	w.cache = w.vm2.start("cache agent", agentUID, dir, w.mesh, "agent", "--config", cacheCfg)
	w.web = w.vm1.start("web agent", agentUID, dir, w.mesh, "agent", "--config", w.webCfg)
	for _, a := range []struct {
		v     vm
		admin string
		p     *proc
	}{{w.vm2, "127.0.0.1:15000", w.orders}, {w.vm2, "127.0.0.1:15005", w.cache}, {w.vm1, "127.0.0.1:15000", w.web}} {
		eventually(t, a.p.name+" ready", 60*time.Second, func() error {
			out, err := a.v.run("curl", "-sf", "--max-time", "2", "http://"+a.admin+"/ready")
			if err != nil {
				return fmt.Errorf("%v %s\n%s", err, out, tail(a.p.out.String(), 10))
			}
			return nil
		})
	}
	// Both services passing in Consul, seen from vm1.
	for _, svc := range []string{"orders", "cache"} {
		eventually(t, svc+" passing in consul", 60*time.Second, func() error {
			out, _ := w.vm1.run("curl", "-s", "--max-time", "2", "http://127.0.0.1:8500/v1/health/service/"+svc+"?passing=1")
			if !strings.Contains(out, `"ServiceID"`) {
				return fmt.Errorf("%s", out)
			}
			return nil
		})
	}

	// The rules, as the systemd unit installs them.
	// (DNS redirection comes from the file: agent.interception.dns.enabled.)
	w.vm1.must(w.mesh, "redirect-traffic", "--config", w.webCfg, "--proxy-uid", strconv.Itoa(agentUID), "--exclude-uid", strconv.Itoa(excludedUID))
	w.vm2.must(w.mesh, "redirect-traffic", "--config", w.ordersCfg, "--proxy-uid", strconv.Itoa(agentUID))
	t.Cleanup(func() {
		_, _ = w.vm1.run(w.mesh, "redirect-traffic", "--undo")
		_, _ = w.vm2.run(w.mesh, "redirect-traffic", "--undo")
	})
	return w
}
