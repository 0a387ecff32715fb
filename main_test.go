package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// meshBinary builds the mesh binary once per test run.
func meshBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "mesh")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func TestBadConfigAndFlagsExit2(t *testing.T) {
	bin := meshBinary(t)
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	badYAML := write("bad-yaml.yaml", "agent:\n  service: orders\n   app_port: 1\n")
	unknown := write("unknown.yaml", "agent:\n  service: orders\n  app_port: 8080\n  inbound_adr: 0.0.0.0:15006\n")
	badValue := write("bad-value.yaml", "agent:\n  service: orders\n  app_port: 8080\n  inbound_addr: nowhere\n")
	badType := write("bad-type.yaml", "agent:\n  service: orders\n  app_port: eighty\n")
	good := write("good.yaml", "agent:\n  service: orders\n  app_port: 8080\n  upstreams:\n    - pay=127.0.0.1:9191\n")

	for _, tc := range []struct {
		name string
		args []string
		env  []string
		want []string // substrings of stderr
	}{
		{"yaml syntax", []string{"config", "validate", badYAML}, nil, []string{badYAML + ":3:", "invalid YAML"}},
		{"unknown field", []string{"config", "validate", unknown}, nil, []string{unknown + ":4:", "agent.inbound_adr", "did you mean \"inbound_addr\""}},
		{"bad value", []string{"config", "validate", badValue}, nil, []string{badValue + ":4:", "agent.inbound_addr", "nowhere"}},
		{"bad type", []string{"config", "validate", badType}, nil, []string{badType + ":3:", "agent.app_port"}},
		{"missing file", []string{"config", "validate", filepath.Join(dir, "nope.yaml")}, nil, []string{"nope.yaml", "no such file"}},
		{"bad env", []string{"config", "validate", good}, []string{"MESH_AGENT_OUTBOUND_ADDR=bogus"}, []string{"agent.outbound_addr", "bogus"}},
		{"agent without service", []string{"agent", "--app-port", "80"}, nil, []string{"agent.service: is required"}},
		{"agent bad flag value", []string{"agent", "--service", "orders", "--app-port", "80", "--upstream", "orders"}, nil, []string{"SERVICE=HOST:PORT"}},
		{"unknown flag", []string{"agent", "--bogus"}, nil, []string{"unknown flag: --bogus"}},
		{"agent bad config file", []string{"agent", "--config", unknown}, nil, []string{"agent.inbound_adr"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin, tc.args...)
			cmd.Env = append(os.Environ(), tc.env...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 {
				t.Fatalf("exit: %v, want code 2; stderr:\n%s", err, stderr.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr.String())
				}
			}
		})
	}

	t.Run("valid file prints effective config", func(t *testing.T) {
		out, err := exec.Command(bin, "config", "validate", good).Output()
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range []string{"service: orders", "listen: 127.0.0.1:9191", "inbound_addr: 0.0.0.0:15006", "drain_period: 5s"} {
			if !strings.Contains(string(out), w) {
				t.Errorf("effective config lacks %q:\n%s", w, out)
			}
		}
	})
	t.Run("secrets are redacted", func(t *testing.T) {
		cmd := exec.Command(bin, "config", "validate", good)
		cmd.Env = append(os.Environ(), "CONSUL_HTTP_TOKEN=s3cret-token")
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(out), "s3cret-token") || !strings.Contains(string(out), "<redacted>") {
			t.Errorf("token not redacted:\n%s", out)
		}
	})
	t.Run("version", func(t *testing.T) {
		out, err := exec.Command(bin, "version").Output()
		if err != nil || !strings.HasPrefix(string(out), "mesh ") {
			t.Errorf("mesh version: %v %q", err, out)
		}
	})
}

// `mesh config diff OLD NEW`: one line per changed setting and an exit
// status an Ansible handler picks reload or restart by.
func TestConfigDiffExitCodes(t *testing.T) {
	bin := meshBinary(t)
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const agent = "agent:\n  service: orders\n  app_port: 8080\n  tags: [v1]\n"
	old := write("old.yaml", agent)
	same := write("same.yaml", "# reformatted\n"+agent+"  drain_period: 5s\n")
	tags := write("tags.yaml", strings.Replace(agent, "[v1]", "[v2]", 1))
	port := write("port.yaml", strings.NewReplacer("8080", "8081", "[v1]", "[v2]").Replace(agent))
	bad := write("bad.yaml", agent+"  inbound_adr: 0.0.0.0:1\n")
	control := write("control.yaml", "control: {xds_addr: \"0.0.0.0:18000\"}\npolicies: {default: {timeout: 10s}}\n")
	policy := write("policy.yaml", "control: {xds_addr: \"0.0.0.0:18000\"}\npolicies: {default: {timeout: 3s}}\n")

	for _, tc := range []struct {
		name     string
		args     []string
		code     int
		stdout   string
		inStderr string
	}{
		{"no effective change", []string{old, same}, 0, "", ""},
		{"reload", []string{old, tags}, 3, "agent.tags: [v1] -> [v2] (reload)\n", ""},
		{"restart", []string{old, port}, 4, "agent.app_port: 8080 -> 8081 (restart)\nagent.tags: [v1] -> [v2] (reload)\n", ""},
		{"control plane policy, role given", []string{"--role", "control", control, policy}, 3,
			"policies.default.timeout: 10s -> 3s (reload)\n", ""},
		{"invalid new file", []string{old, bad}, 2, "", "agent.inbound_adr"},
		{"missing old file", []string{filepath.Join(dir, "nope.yaml"), old}, 2, "", "nope.yaml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin, append([]string{"config", "diff"}, tc.args...)...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tc.code || stdout.String() != tc.stdout || !strings.Contains(stderr.String(), tc.inStderr) {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit %d, stdout %q, stderr with %q",
					code, stdout.String(), stderr.String(), tc.code, tc.stdout, tc.inStderr)
			}
			if tc.code != 2 && stderr.Len() > 0 {
				t.Errorf("stderr not empty: %q", stderr.String())
			}
		})
	}
}
