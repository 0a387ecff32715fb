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
