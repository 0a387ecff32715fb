//go:build netns

package netnstest

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshvm/mesh/meshtest"
)

// TestIptablesBackend: the fallback for iptables-only hosts installs the
// same rules as chains of its own, idempotently, redirects for real, and
// --undo leaves iptables-save (both families) as it was.
func TestIptablesBackend(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the netns suite needs root: run `sudo make test-netns`")
	}
	for _, tool := range []string{"iptables", "ip6tables", "iptables-save", "ip6tables-save", "iptables-restore"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: %v (.ci/run installs iptables)", tool, err)
		}
	}
	dir := t.TempDir()
	mesh := dir + "/mesh"
	build := exec.Command("go", "build", "-o", mesh, ".")
	build.Dir = meshtest.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	v := vm{t, "meshipt-" + strconv.Itoa(os.Getpid()%100000)}
	if out, err := exec.Command("ip", "netns", "add", v.name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", v.name).Run() })
	v.must("ip", "link", "set", "lo", "up")
	v.must("ip", "link", "add", "ipt0", "type", "veth", "peer", "name", "ipt1")
	v.must("ip", "addr", "add", "10.79.0.1/24", "dev", "ipt0")
	v.must("ip", "link", "set", "ipt0", "up")
	v.must("ip", "link", "set", "ipt1", "up")
	v.must("ip", "route", "add", "default", "via", "10.79.0.254")
	// Someone else's NAT rules, which must survive.
	v.must("iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "10.79.0.0/24", "-j", "MASQUERADE")
	v.must("ip6tables", "-t", "nat", "-A", "POSTROUTING", "-s", "fd79::/64", "-j", "MASQUERADE")
	save := func() string {
		return v.must("iptables-save", "-t", "nat") + v.must("ip6tables-save", "-t", "nat")
	}
	clean := func(s string) string { // drop comments and counters
		var out []string
		for _, l := range strings.Split(s, "\n") {
			if strings.HasPrefix(l, "#") {
				continue
			}
			if strings.HasPrefix(l, ":") {
				l = l[:strings.LastIndex(l, " ")]
			}
			out = append(out, l)
		}
		return strings.Join(out, "\n")
	}
	before := clean(save())
	args := []string{"redirect-traffic", "--backend", "iptables", "--proxy-uid", strconv.Itoa(agentUID), "--exclude-cidr", "10.20.0.0/16"}
	v.must(append([]string{mesh}, args...)...)
	first := clean(save())
	if !strings.Contains(first, "-A OUTPUT -j MESH_OUTPUT") || !strings.Contains(first, "-A MESH_OUTPUT -p tcp -j REDIRECT --to-ports 15002") {
		t.Fatalf("rules not installed:\n%s", first)
	}
	v.must(append([]string{mesh}, args...)...)
	if again := clean(save()); again != first {
		t.Fatalf("second install changed the rules:\n%s\nthen\n%s", first, again)
	}

	// A real redirect: a listener on the outbound intercept port tells
	// the original destination of what it accepts.
	p := v.start("origdst", 0, dir, "python3", "-c", `
import socket, struct
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 15002)); s.listen(4)
while True:
    c, _ = s.accept()
    raw = c.getsockopt(socket.SOL_IP, 80, 16)
    port, ip = struct.unpack("!2xH4s8x", raw)
    c.sendall(("dst %s:%d\n" % (socket.inet_ntoa(ip), port)).encode()); c.close()
`)
	eventually(t, "listener up", 10*time.Second, func() error {
		_, err := v.run("python3", "-c", "import socket; socket.create_connection(('127.0.0.1', 15002), timeout=1)")
		return err
	})
	out := v.must("python3", "-c", "import socket; print(socket.create_connection(('10.79.0.77', 80), timeout=5).recv(100).decode())")
	if !strings.Contains(out, "dst 10.79.0.77:80") {
		t.Fatalf("redirected connection: %q\n%s", out, p.out.String())
	}
	// The proxy's uid is not redirected: its connection goes out (and,
	// with nothing there, times out or is refused, but never reaches the
	// listener).
	out, _ = v.run("setpriv", "--reuid", strconv.Itoa(agentUID), "--regid", strconv.Itoa(agentUID), "--clear-groups",
		"python3", "-c", "import socket\ntry:\n    print(socket.create_connection(('10.79.0.77', 80), timeout=2).recv(100).decode())\nexcept Exception as e:\n    print(type(e).__name__)")
	if strings.Contains(out, "dst ") {
		t.Fatalf("the proxy uid's connection was redirected: %s", out)
	}

	v.must(mesh, "redirect-traffic", "--backend", "iptables", "--undo")
	if after := clean(save()); after != before {
		t.Fatalf("after --undo:\n%s\nbefore:\n%s", after, before)
	}
	v.must(mesh, "redirect-traffic", "--backend", "iptables", "--undo") // twice: fine
}
