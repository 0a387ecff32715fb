package config

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// fuzzSeeds are real configs: the shipped ones, the Ansible templates and
// the cases the tests write, good and bad.
var fuzzSeeds = []string{
	"",
	"log:\n  level: info\n",
	"agent:\n  service: orders\n  app_port: 8080\n  upstreams:\n    - pay=127.0.0.1:9191\n",
	"agent:\n  service: orders\n   app_port: 1\n",
	"agent:\n  service: orders\n  app_port: 8080\n  inbound_adr: 0.0.0.0:15006\n",
	"agent:\n  service: orders\n  app_port: eighty\n  drain_period: 2\n  health_interval: 1\n  tags: {a: b}\n",
	"agent:\n  upstreams:\n    - service: payments\n      listen: 127.0.0.1:9191\n    - inventory=127.0.0.1:9192\n  locality: {region: eu-west, zone: eu-west-1a}\n  meta: {team: checkout}\n",
	"policies:\n  default:\n    timeout: 10s\n  services:\n    orders:\n      timeout: 2ns\n      connect_timeout: 1000\n" +
		"      retries: {attempts: 3, per_try_timeout: 2s}\n      circuit_breaker: {error_percent_threshold: 25, sleep_window: 10s}\n" +
		"      rate_limit: {max_tokens: 200, tokens_per_fill: 200, fill_interval: 1s}\n",
	"base: &b {timeout: 3s}\npolicies:\n  services:\n    orders:\n      <<: *b\n",
	"control:\n  cmdb:\n    url: https://netbox.example.internal\n    format: netbox\n    interval: 100ms\n    fields: {ip: net.primary_ip}\n",
	"observability:\n  access_log:\n    output: /var/log/mesh/access.log\n    format: text\n    fields: [status, path]\n    sample_ratio: 0.5\n" +
		"  tracing:\n    exporter: otlp-http\n    endpoint: https://collector.example:4318/v1/traces\n    propagators: [b3]\n    queue_size: 100\n    batch_size: 10\n",
	"a: &a [*a]\n",
	"- just\n- a list\n",
	"agent: 5\npolicies: [1]\n",
}

// FuzzLoad feeds the loader a YAML file and one MESH_* environment
// variable. It must never panic, every error must be a *Error whose
// field problems are in words, and a config that loads must load again,
// unchanged, from its own effective YAML.
func FuzzLoad(f *testing.F) {
	for _, p := range []string{
		"../packaging/etc/mesh.yaml",
		"../packaging/etc/agent-example.yaml.sample",
		"../packaging/ansible/roles/mesh/templates/mesh.yaml.j2",
		"../packaging/ansible/roles/mesh/templates/agent.yaml.j2",
	} {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatalf("seed: %v", err)
		}
		f.Add(data, uint16(0), "")
	}
	for i, s := range fuzzSeeds {
		f.Add([]byte(s), uint16(i), "")
	}
	for i, env := range []string{"2", "2s", "99999", "eighty", "nowhere", "a=b,c", "pay=127.0.0.1:9191,inv", "true", "0.5", "-1s"} {
		f.Add([]byte(fuzzSeeds[2]), uint16(i*7), env)
	}

	var names []string
	for _, l := range schemaKeys(reflect.TypeOf(Config{}), "") {
		names = append(names, envNames(l.path)...)
	}
	f.Fuzz(func(t *testing.T, doc []byte, which uint16, value string) {
		for _, n := range names {
			if os.Getenv(n) != "" {
				t.Setenv(n, "")
			}
		}
		if value != "" && !strings.ContainsRune(value, 0) {
			t.Setenv(names[int(which)%len(names)], value)
		}
		file := filepath.Join(t.TempDir(), "mesh.yaml")
		if err := os.WriteFile(file, doc, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := Load(Options{File: file})
		if err != nil {
			ce, ok := err.(*Error)
			if !ok {
				t.Fatalf("error %T is not a *config.Error: %v", err, err)
			}
			if ce.Syntax == "" && len(ce.Fields) == 0 {
				t.Fatalf("error without a problem: %#v", ce)
			}
			for _, fe := range ce.Fields {
				if fe.Msg == "" || (fe.Path == "" && fe.Source == "") {
					t.Errorf("problem without a field or message: %#v", fe)
				}
				for _, w := range []string{"strconv.", "time: ", "mapstructure", "interface {}", "unconvertible", "expected type", "cannot be read: "} {
					if strings.Contains(fe.Msg, w) {
						t.Errorf("problem speaks Go (%q): %s", w, fe)
					}
				}
			}
			return
		}
		out, err := cfg.YAML()
		if err != nil {
			t.Fatalf("render: %v", err)
		}
		again := filepath.Join(t.TempDir(), "effective.yaml")
		if err := os.WriteFile(again, out, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg2, err := Load(Options{File: again})
		if err != nil {
			t.Fatalf("the effective config does not load: %v\n%s", err, out)
		}
		out2, err := cfg2.YAML()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out, out2) {
			t.Errorf("effective config changed on reload:\n%s\n---\n%s", out, out2)
		}
	})
}
