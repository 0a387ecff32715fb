package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/meshvm/mesh/config"
)

// TestDottedServicePolicies: a Kubernetes service orders in namespace shop
// is the mesh service orders.shop; its policy is keyed by that name, and
// viper's dotted keys must not split it into orders → shop.
func TestDottedServicePolicies(t *testing.T) {
	file := writeFile(t, `
policies:
  services:
    orders.shop:
      timeout: 3s
      retries: {attempts: 4}
    orders:
      timeout: 2s
agent:
  upstreams:
    - {service: orders.shop, listen: "127.0.0.1:9191"}
`)
	cfg, err := config.Load(config.Options{File: file})
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Policies.For("orders.shop"); got.Timeout != 3*time.Second || got.Retries.Attempts != 4 {
		t.Errorf("orders.shop policy: timeout %s, attempts %d; want 3s, 4", got.Timeout, got.Retries.Attempts)
	}
	if got := cfg.Policies.For("orders"); got.Timeout != 2*time.Second {
		t.Errorf("orders policy: timeout %s, want 2s (its own entry, not orders.shop's)", got.Timeout)
	}
	if got := cfg.Policies.For("payments.shop"); got.Timeout != config.DefaultPolicy().Timeout {
		t.Errorf("an unnamed dotted service gets timeout %s, want the default", got.Timeout)
	}
	if len(cfg.Policies.Services) != 2 {
		t.Errorf("services %v, want exactly orders.shop and orders", cfg.Policies.Services)
	}
	if cfg.Agent.Upstreams[0].Service != "orders.shop" {
		t.Errorf("upstream service %q", cfg.Agent.Upstreams[0].Service)
	}
}

// TestDottedServiceErrors: a problem inside a dotted service's policy
// names the dotted path and its line; names with more than one dot, and
// dots in keys that are not service names, are refused.
func TestDottedServiceErrors(t *testing.T) {
	file := writeFile(t, `policies:
  services:
    orders.shop:
      timeout: -3s
    a.b.c:
      timeout: 1s
agent:
  meta:
    team.name: x
`)
	ce := loadErr(t, config.Options{File: file})
	msg := ce.Error()
	for _, want := range []string{
		":4: policies.services.orders.shop.timeout: must not be negative",
		`policies.services.a.b.c: "a.b.c" is not a valid service name`,
		`agent.meta: key "team.name" must not contain '.'`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "%2e") {
		t.Errorf("error shows the internal escape:\n%s", msg)
	}
}

// TestDottedControlServices: control.services takes a Kubernetes
// service's dotted name too (its mTLS mode and routes); errors inside it
// name the dotted path and its line.
func TestDottedControlServices(t *testing.T) {
	file := writeFile(t, `
control:
  services:
    orders.shop:
      mtls_mode: strict
      routes:
        - {name: slow, path_prefix: /report, timeout: 9s}
    orders:
      mtls_mode: permissive
`)
	cfg, err := config.Load(config.Options{File: file})
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Control.MTLSMode("orders.shop"); got != "strict" {
		t.Errorf("orders.shop mtls mode %q, want strict", got)
	}
	if got := cfg.Control.MTLSMode("orders"); got != "permissive" {
		t.Errorf("orders mtls mode %q, want its own permissive", got)
	}
	if s := cfg.Control.Services["orders.shop"]; len(s.Routes) != 1 || s.Routes[0].Name != "slow" {
		t.Errorf("orders.shop routes %+v", s.Routes)
	}
	if len(cfg.Control.Services) != 2 {
		t.Errorf("control.services %v, want exactly orders.shop and orders", cfg.Control.Services)
	}

	bad := writeFile(t, `control:
  services:
    orders.shop:
      mtls_mode: loose
    a.b.c:
      mtls_mode: strict
`)
	msg := loadErr(t, config.Options{File: bad}).Error()
	for _, want := range []string{
		`:4: control.services.orders.shop.mtls_mode: must be permissive or strict, got "loose"`,
		`control.services.a.b.c: "a.b.c" is not a valid service name`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "%2e") {
		t.Errorf("error shows the internal escape:\n%s", msg)
	}
}
