//go:build netns

package netnstest

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/meshvm/mesh/meshtest"
)

// unitFile reads a systemd unit of the repository: every Key=value line
// (section headers and comments dropped), values in order.
func unitFile(t *testing.T, name string) map[string][]string {
	t.Helper()
	f, err := os.Open(filepath.Join(meshtest.RepoRoot(), "systemd", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "[") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if ok {
			out[k] = append(out[k], v)
		}
	}
	return out
}

// TestRedirectUnitCommands runs mesh-redirect@'s own ExecStart, ExecReload
// and ExecStop lines, as systemd would for an instance, on real netfilter:
// with agent.interception enabled they install and then remove the
// table; with it off the start installs nothing and the stop still
// removes rules an earlier, enabled file installed. It also checks the
// ordering the docs promise: the rules go in before the agent starts and
// come out when it is stopped (PartOf), never on a crash alone. Booting
// the unit under systemd itself is not done here.
func TestRedirectUnitCommands(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the netns suite needs root: run `sudo make test-netns`")
	}
	redirect := unitFile(t, "mesh-redirect@.service")
	agent := unitFile(t, "mesh-agent@.service")
	for _, c := range []struct {
		unit     map[string][]string
		name     string
		key, val string
	}{
		{redirect, "mesh-redirect@", "Before", "mesh-agent@%i.service"},
		{redirect, "mesh-redirect@", "PartOf", "mesh-agent@%i.service"},
		{redirect, "mesh-redirect@", "Type", "oneshot"},
		{redirect, "mesh-redirect@", "RemainAfterExit", "yes"},
		{redirect, "mesh-redirect@", "ReloadPropagatedFrom", "nftables.service"},
		{agent, "mesh-agent@", "Wants", "mesh-redirect@%i.service"},
		{agent, "mesh-agent@", "After", "mesh-redirect@%i.service"},
		{agent, "mesh-agent@", "Restart", "on-failure"},
	} {
		found := false
		for _, v := range c.unit[c.key] {
			found = found || strings.Contains(" "+v+" ", " "+c.val+" ")
		}
		if !found {
			t.Errorf("%s.service: want %s=%s, have %q", c.name, c.key, c.val, c.unit[c.key])
		}
	}
	// The agent unit must not remove the rules itself: ExecStopPost runs
	// after a crash too, and the app would bypass the mesh while systemd
	// restarts the agent.
	for _, k := range []string{"ExecStopPost", "ExecStartPre", "ExecStop"} {
		for _, v := range agent[k] {
			if strings.Contains(v, "redirect-traffic") {
				t.Errorf("mesh-agent@.service %s=%s: the rules belong to mesh-redirect@ only", k, v)
			}
		}
	}

	dir := t.TempDir()
	mesh := filepath.Join(dir, "mesh")
	build := exec.Command("go", "build", "-o", mesh, ".")
	build.Dir = meshtest.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	v := vm{t, "meshunit-" + strconv.Itoa(os.Getpid()%100000)}
	if out, err := exec.Command("ip", "netns", "add", v.name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", v.name).Run() })
	v.must("ip", "link", "set", "lo", "up")
	v.must("nft", "add", "table", "inet", "other")
	v.must("nft", "add", "chain", "inet", "other", "in", "{ type filter hook input priority 0; policy accept; }")
	before := v.must("nft", "list", "ruleset")

	// Two instances' files: billing intercepted, legacy not. The
	// package's mesh user does not exist here: --proxy-uid is added to
	// every command, as a drop-in would.
	write := func(name, interception string) {
		writeFile(t, filepath.Join(dir, "agent-"+name+".yaml"), `
consul: {addr: 127.0.0.1:8500}
agent:
  service: `+name+`
  app_port: 8080
  interception: `+interception+`
`)
	}
	write("billing", "{enabled: true, dns: {enabled: true}}")
	write("legacy", "{enabled: false}")
	exec1 := func(key, instance string) string {
		t.Helper()
		lines := redirect[key]
		if len(lines) != 1 {
			t.Fatalf("mesh-redirect@.service has %d %s lines, want 1", len(lines), key)
		}
		line := strings.ReplaceAll(lines[0], "%i", instance)
		line = strings.ReplaceAll(line, "/etc/mesh/", dir+"/")
		args := strings.Fields(line)
		if args[0] != "/usr/bin/mesh" {
			t.Fatalf("%s runs %s, want /usr/bin/mesh", key, args[0])
		}
		args[0] = mesh
		return v.must(append(args, "--proxy-uid", strconv.Itoa(agentUID))...)
	}

	// Interception off: start installs nothing, stop is harmless.
	if out := exec1("ExecStart", "legacy"); !strings.Contains(out, "no rules installed") {
		t.Fatalf("ExecStart with interception off: %s", out)
	}
	if got := v.must("nft", "list", "ruleset"); got != before {
		t.Fatalf("ExecStart with interception off changed the ruleset:\n%s", got)
	}
	exec1("ExecStop", "legacy")

	// On: start installs what --dry-run prints (DNS redirected: the file
	// enables the responder); reload re-installs the same; stop removes
	// it all.
	exec1("ExecStart", "billing")
	installed := v.must("nft", "list", "table", "inet", "mesh")
	dry := v.must(mesh, "redirect-traffic", "--dry-run", "--config", filepath.Join(dir, "agent-billing.yaml"), "--proxy-uid", strconv.Itoa(agentUID))
	if installed != dry || !strings.Contains(installed, "udp dport 53 redirect to :15053") || !strings.Contains(installed, "redirect to :15002") {
		t.Fatalf("ExecStart installed:\n%s\n--dry-run prints:\n%s", installed, dry)
	}
	exec1("ExecReload", "billing")
	if got := v.must("nft", "list", "table", "inet", "mesh"); got != installed {
		t.Fatalf("ExecReload changed the rules:\n%s\nthen\n%s", installed, got)
	}
	exec1("ExecStop", "billing")
	if got := v.must("nft", "list", "ruleset"); got != before {
		t.Fatalf("after ExecStop the ruleset is not what it was:\n%s\nbefore:\n%s", got, before)
	}

	// Turned off in the file while the rules were in (the rollback
	// path: edit the file, restart the agent): the stop still removes
	// them and the next start installs nothing.
	exec1("ExecStart", "billing")
	write("billing", "{enabled: false}")
	exec1("ExecStop", "billing")
	if got := v.must("nft", "list", "ruleset"); got != before {
		t.Fatalf("ExecStop with interception turned off left rules:\n%s", got)
	}
	if out := exec1("ExecStart", "billing"); !strings.Contains(out, "no rules installed") {
		t.Fatalf("ExecStart after the rollback: %s", out)
	}
}
