package config_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshvm/mesh/config"
)

func load(t *testing.T, yaml string) (*config.Config, error) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(f, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return config.Load(config.Options{File: f, Role: config.RoleAgent})
}

// app_protocol and tcp upstreams, in both YAML forms; bad values name
// their field.
func TestAppProtocolAndTCPUpstreams(t *testing.T) {
	cfg, err := load(t, `
agent:
  service: redis
  app_port: 6379
  app_protocol: tcp
  upstreams:
    - service: cache
      listen: 127.0.0.1:6380
      protocol: tcp
    - "orders=127.0.0.1:9191"
    - "sessions=127.0.0.1:6381,tcp"
`)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Agent.AppProtocol != config.AppProtocolTCP {
		t.Errorf("app_protocol %q", cfg.Agent.AppProtocol)
	}
	want := []config.Upstream{
		{Service: "cache", Listen: "127.0.0.1:6380", Protocol: "tcp"},
		{Service: "orders", Listen: "127.0.0.1:9191"},
		{Service: "sessions", Listen: "127.0.0.1:6381", Protocol: "tcp"},
	}
	for i, u := range want {
		if i >= len(cfg.Agent.Upstreams) || cfg.Agent.Upstreams[i] != u {
			t.Errorf("upstreams %+v, want %+v", cfg.Agent.Upstreams, want)
			break
		}
	}
	if cfg, err := load(t, "agent: {service: web, app_port: 80}\n"); err != nil || cfg.Agent.AppProtocol != config.AppProtocolAuto {
		t.Errorf("default app_protocol: %v %v", cfg, err)
	}

	for _, tc := range []struct{ yaml, field string }{
		{"agent: {service: web, app_port: 80, app_protocol: http3}\n", "agent.app_protocol"},
		{"agent: {service: web, app_port: 80, app_protocol: tcp, app_health: /healthz}\n", "agent.app_health"},
		{"agent: {service: web, app_port: 80, upstreams: [\"db=127.0.0.1:5432,udp\"]}\n", "agent.upstreams[0].protocol"},
	} {
		_, err := load(t, tc.yaml)
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%q: error %v, want one naming %s", tc.yaml, err, tc.field)
		}
	}
}

// agent.identity_credential consul_token needs a Consul token, a control
// plane and its CA file, and excludes a join token; each problem names
// the field.
func TestConsulTokenCredential(t *testing.T) {
	t.Setenv("CONSUL_HTTP_TOKEN", "")
	t.Setenv("MESH_CONSUL_TOKEN", "")
	base := "agent:\n  service: web\n  app_port: 8080\n  identity_credential: consul_token\n"
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"ok", "consul: {token: abc}\n" + base + "  control_plane: [127.0.0.1:18000]\n  control_plane_ca_file: /etc/mesh/bundle.crt\n", ""},
		{"no token", base + "  control_plane: [127.0.0.1:18000]\n  control_plane_ca_file: /etc/mesh/bundle.crt\n", "no Consul ACL token is set"},
		{"no ca file", "consul: {token: abc}\n" + base + "  control_plane: [127.0.0.1:18000]\n", "set agent.control_plane_ca_file"},
		{"no control plane", "consul: {token: abc}\n" + base + "  control_plane_ca_file: /etc/mesh/bundle.crt\n", "needs agent.control_plane"},
		{"with a join token", "consul: {token: abc}\n" + base + "  control_plane: [127.0.0.1:18000]\n  control_plane_ca_file: /etc/mesh/bundle.crt\n  join_token_file: /etc/mesh/web.token\n", "remove one"},
		{"unknown", "agent:\n  service: web\n  app_port: 8080\n  identity_credential: kerberos\n", "must be empty (a join token from agent.join_token_file) or consul_token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := load(t, tc.yaml)
			if tc.want == "" {
				if err != nil || !cfg.Agent.HasIdentity() {
					t.Fatalf("got %v (identity %v)", err, cfg != nil && cfg.Agent.HasIdentity())
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), "agent.identity_credential") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want agent.identity_credential: ...%s", err, tc.want)
			}
		})
	}
}
