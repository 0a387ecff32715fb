package config_test

import (
	"strings"
	"testing"
)

// agent.tls and the mTLS modes: defaults, per-service override, and bad
// values named by their path.
func TestMTLSConfig(t *testing.T) {
	cfg, err := load(t, `
agent:
  service: orders
  app_port: 8080
  tls: {cert_file: /etc/mesh/cert.pem, key_file: /etc/mesh/key.pem, bundle_file: /etc/mesh/bundle.pem}
control:
  services:
    orders: {mtls_mode: strict}
`)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Agent.TLS.On() || cfg.Agent.TLS.PeerIdentityHeader != "x-mesh-peer-identity" {
		t.Errorf("agent.tls %+v", cfg.Agent.TLS)
	}
	if m := cfg.Control.MTLSMode("orders"); m != "strict" {
		t.Errorf("orders mode %q, want strict", m)
	}
	if m := cfg.Control.MTLSMode("payments"); m != "permissive" {
		t.Errorf("default mode %q, want permissive", m)
	}
	for _, tc := range []struct{ name, yaml, want string }{
		{"partial tls", "agent:\n  service: a\n  app_port: 1\n  tls: {cert_file: /c.pem}\n", "agent.tls"},
		{"bad default", "agent:\n  service: a\n  app_port: 1\ncontrol:\n  mtls: {default_mode: on}\n", "control.mtls.default_mode"},
		{"bad service mode", "agent:\n  service: a\n  app_port: 1\ncontrol:\n  services:\n    a: {mtls_mode: STRICT}\n", "control.services.a.mtls_mode"},
		{"bad header", "agent:\n  service: a\n  app_port: 1\n  tls: {peer_identity_header: \"x y\"}\n", "agent.tls.peer_identity_header"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := load(t, tc.yaml)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one naming %s", err, tc.want)
			}
		})
	}
}
