package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/meshvm/mesh/config"
)

// goInternals are fragments of Go error texts that a user must never see.
var goInternals = []string{
	"strconv.", "time: ", "invalid syntax", "mapstructure", "interface {}", "unconvertible",
	"expected type", "cannot parse value", "yaml: unmarshal", "reflect",
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// loadErr loads opts and returns its *config.Error, failing the test when
// the config loads or the error is of another type.
func loadErr(t *testing.T, opts config.Options) *config.Error {
	t.Helper()
	_, err := config.Load(opts)
	if err == nil {
		t.Fatal("config loaded, want an error")
	}
	ce, ok := err.(*config.Error)
	if !ok {
		t.Fatalf("error %T %v, want a *config.Error", err, err)
	}
	for _, w := range goInternals {
		if strings.Contains(ce.Error(), w) {
			t.Errorf("error speaks Go (%q):\n%s", w, ce)
		}
	}
	return ce
}

// field is the problem reported for path, failing the test if none is.
func field(t *testing.T, ce *config.Error, path string) config.FieldError {
	t.Helper()
	for _, f := range ce.Fields {
		if f.Path == path {
			return f
		}
	}
	t.Fatalf("no problem reported for %s:\n%s", path, ce)
	return config.FieldError{}
}

// TestDurationWithoutUnit checks that a bare number for a duration, which
// used to be read as nanoseconds, is refused in the file, the environment
// and flags, naming the field and the fix.
func TestDurationWithoutUnit(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, path, want string
		line                   int
	}{
		{"drain period", "agent:\n  drain_period: 2\n", "agent.drain_period", `"2" has no unit; write e.g. 2s or 500ms`, 2},
		{"quoted", "agent:\n  drain_period: \"2\"\n", "agent.drain_period", `"2" has no unit; write e.g. 2s or 500ms`, 2},
		{"health interval", "agent:\n  health_interval: 1\n", "agent.health_interval", `"1" has no unit; write e.g. 1s`, 2},
		{"connect timeout", "policies:\n  default:\n    connect_timeout: 1000\n", "policies.default.connect_timeout", `"1000" has no unit`, 3},
		{"service timeout", "policies:\n  services:\n    orders:\n      timeout: 2\n", "policies.services.orders.timeout", `"2" has no unit`, 4},
		{"fraction", "control:\n  debounce: 0.5\n", "control.debounce", `"0.5" has no unit`, 2},
		{"not a duration", "control:\n  cmdb:\n    timeout: 5 seconds\n", "control.cmdb.timeout", `"5 seconds" is not a duration; write e.g. 10s`, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ce := loadErr(t, config.Options{File: writeFile(t, tc.yaml)})
			f := field(t, ce, tc.path)
			if !strings.Contains(f.Msg, tc.want) || f.Line != tc.line {
				t.Errorf("got line %d %q, want line %d %q", f.Line, f.Msg, tc.line, tc.want)
			}
		})
	}
	t.Run("zero needs no unit", func(t *testing.T) {
		c, err := config.Load(config.Options{File: writeFile(t, "agent:\n  drain_period: 0\nobservability:\n  access_log:\n    flush_interval: 0\n")})
		if err != nil {
			t.Fatal(err)
		}
		if c.Agent.DrainPeriod != 0 || c.Observability.AccessLog.FlushInterval != 0 {
			t.Errorf("drain %s flush %s, want 0", c.Agent.DrainPeriod, c.Observability.AccessLog.FlushInterval)
		}
	})
	t.Run("env", func(t *testing.T) {
		t.Setenv("MESH_AGENT_DRAIN_PERIOD", "2")
		ce := loadErr(t, config.Options{File: writeFile(t, "log:\n  level: info\n")})
		f := field(t, ce, "agent.drain_period")
		want := `env MESH_AGENT_DRAIN_PERIOD: agent.drain_period: "2" has no unit; write e.g. 2s or 500ms`
		if !strings.Contains(ce.Error(), want) || f.Source != "env MESH_AGENT_DRAIN_PERIOD" {
			t.Errorf("want %q in:\n%s", want, ce)
		}
	})
	t.Run("flag", func(t *testing.T) {
		// A duration flag refuses "2" while parsing; FlagError words it.
		fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
		fs.Duration("drain-period", 0, "")
		err := fs.Parse([]string{"--drain-period", "2"})
		ce, ok := config.FlagError(err)
		if !ok {
			t.Fatalf("FlagError(%v) not a config error", err)
		}
		want := `flag --drain-period: "2" has no unit; write e.g. 2s or 500ms`
		if !strings.Contains(ce.Error(), want) {
			t.Errorf("want %q in:\n%s", want, ce)
		}
		if _, ok := config.FlagError(errors.New("unknown flag: --bogus")); ok {
			t.Error("FlagError took an unknown flag for a bad value")
		}
	})
	t.Run("string flag for a duration key", func(t *testing.T) {
		fs := pflag.NewFlagSet("control", pflag.ContinueOnError)
		fs.String("debounce", "", "")
		if err := fs.Parse([]string{"--debounce", "100"}); err != nil {
			t.Fatal(err)
		}
		ce := loadErr(t, config.Options{Flags: fs, FlagKeys: map[string]string{"debounce": "control.debounce"}})
		want := `flag --debounce: control.debounce: "100" has no unit`
		if !strings.Contains(ce.Error(), want) {
			t.Errorf("want %q in:\n%s", want, ce)
		}
	})
}

// TestDurationFloors checks that durations shorter than their field's floor
// are refused, and the floors themselves accepted.
func TestDurationFloors(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, path, want string
	}{
		{"timeout of 2ns", "policies:\n  services:\n    orders:\n      timeout: 2ns\n", "policies.services.orders.timeout", "2ns is below the minimum of 1ms; write e.g. 15s"},
		{"connect timeout", "policies:\n  default:\n    connect_timeout: 999us\n", "policies.default.connect_timeout", "below the minimum of 1ms"},
		{"health interval", "agent:\n  health_interval: 500ms\n", "agent.health_interval", "500ms is below the minimum of 1s; write e.g. 5s"},
		{"resync interval", "agent:\n  resync_interval: 10ms\n", "agent.resync_interval", "below the minimum of 100ms"},
		{"cmdb interval", "control:\n  cmdb:\n    interval: 10ms\n", "control.cmdb.interval", "below the minimum of 100ms"},
		{"fill interval", "policies:\n  default:\n    rate_limit: {max_tokens: 10, tokens_per_fill: 10, fill_interval: 10ms}\n", "policies.default.rate_limit.fill_interval", "below the minimum of 50ms"},
		{"negative", "agent:\n  drain_period: -1s\n", "agent.drain_period", "must not be negative, got -1s; write e.g. 5s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ce := loadErr(t, config.Options{File: writeFile(t, tc.yaml)})
			if f := field(t, ce, tc.path); !strings.Contains(f.Msg, tc.want) || f.Line == 0 {
				t.Errorf("got line %d %q, want %q", f.Line, f.Msg, tc.want)
			}
			if len(ce.Fields) != 1 {
				t.Errorf("want one problem, got:\n%s", ce)
			}
		})
	}
	t.Run("floors accepted", func(t *testing.T) {
		c, err := config.Load(config.Options{File: writeFile(t, "agent:\n  health_interval: 1s\n  resync_interval: 100ms\n"+
			"policies:\n  default:\n    timeout: 1ms\n    connect_timeout: 1ms\n    rate_limit: {max_tokens: 1, tokens_per_fill: 1, fill_interval: 50ms}\n")})
		if err != nil {
			t.Fatal(err)
		}
		if c.Policies.Default.Timeout != time.Millisecond || c.Agent.HealthInterval != time.Second {
			t.Errorf("decoded %+v", c.Policies.Default)
		}
	})
}

// TestErrorsNameTheirSource checks that a value from the environment or a
// flag is reported as such, not at the line of the file value it replaced.
func TestErrorsNameTheirSource(t *testing.T) {
	file := writeFile(t, "agent:\n  service: orders\n  app_port: 8080\n")
	t.Run("env", func(t *testing.T) {
		t.Setenv("MESH_AGENT_APP_PORT", "99999")
		ce := loadErr(t, config.Options{File: file})
		f := field(t, ce, "agent.app_port")
		if f.Source != "env MESH_AGENT_APP_PORT" || f.Line != 0 {
			t.Errorf("source %q line %d, want the env variable and no line", f.Source, f.Line)
		}
		want := "env MESH_AGENT_APP_PORT: agent.app_port: must be a port between 1 and 65535, got 99999"
		if !strings.Contains(ce.Error(), want) || strings.Contains(ce.Error(), file+":3") {
			t.Errorf("want %q and no file line in:\n%s", want, ce)
		}
	})
	t.Run("env of another type", func(t *testing.T) {
		t.Setenv("MESH_AGENT_APP_PORT", "eighty")
		ce := loadErr(t, config.Options{File: file})
		want := `env MESH_AGENT_APP_PORT: agent.app_port: "eighty" is not a whole number; write e.g. 8080`
		if !strings.Contains(ce.Error(), want) {
			t.Errorf("want %q in:\n%s", want, ce)
		}
	})
	t.Run("consul's variable", func(t *testing.T) {
		t.Setenv("CONSUL_HTTP_ADDR", "nowhere")
		ce := loadErr(t, config.Options{File: file})
		if f := field(t, ce, "consul.addr"); f.Source != "env CONSUL_HTTP_ADDR" {
			t.Errorf("source %q, want env CONSUL_HTTP_ADDR", f.Source)
		}
	})
	t.Run("flag", func(t *testing.T) {
		fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
		fs.Int("app-port", 0, "")
		fs.StringArray("upstream", nil, "")
		if err := fs.Parse([]string{"--app-port", "99999", "--upstream", "pay=127.0.0.1:9191", "--upstream", "orders"}); err != nil {
			t.Fatal(err)
		}
		ce := loadErr(t, config.Options{File: file, Flags: fs,
			FlagKeys: map[string]string{"app-port": "agent.app_port", "upstream": "agent.upstreams"}})
		for _, want := range []string{
			"flag --app-port: agent.app_port: must be a port between 1 and 65535, got 99999",
			`flag --upstream: agent.upstreams: value 2: "orders" is not SERVICE=HOST:PORT`,
		} {
			if !strings.Contains(ce.Error(), want) {
				t.Errorf("want %q in:\n%s", want, ce)
			}
		}
	})
	t.Run("file", func(t *testing.T) {
		ce := loadErr(t, config.Options{File: writeFile(t, "agent:\n  service: orders\n  app_port: 99999\n")})
		if !strings.Contains(ce.Error(), ".yaml:3: agent.app_port: must be a port between 1 and 65535, got 99999") {
			t.Errorf("no file line in:\n%s", ce)
		}
	})
	t.Run("lists from the environment", func(t *testing.T) {
		t.Setenv("MESH_AGENT_UPSTREAMS", "pay=127.0.0.1:9191,inv=127.0.0.1:9192")
		t.Setenv("MESH_AGENT_TAGS", "a,b")
		c, err := config.Load(config.Options{File: file})
		if err != nil {
			t.Fatal(err)
		}
		if len(c.Agent.Upstreams) != 2 || c.Agent.Upstreams[1] != (config.Upstream{Service: "inv", Listen: "127.0.0.1:9192"}) || len(c.Agent.Tags) != 2 {
			t.Errorf("upstreams %v tags %v", c.Agent.Upstreams, c.Agent.Tags)
		}
	})
	t.Run("an empty section does not hide the environment", func(t *testing.T) {
		t.Setenv("MESH_AGENT_CONTROL_PLANE", "01")
		ce := loadErr(t, config.Options{File: writeFile(t, "agent:\n")})
		if f := field(t, ce, "agent.control_plane[0]"); f.Source != "env MESH_AGENT_CONTROL_PLANE" {
			t.Errorf("source %q, want the env variable", f.Source)
		}
	})
	t.Run("a good env value replaces a bad file value", func(t *testing.T) {
		t.Setenv("MESH_AGENT_APP_PORT", "9090")
		ce := loadErr(t, config.Options{File: writeFile(t, "agent:\n  service: orders\n  app_port: eighty\n")})
		if len(ce.Fields) != 1 || ce.Fields[0].Line != 3 {
			t.Errorf("want only the file's line 3:\n%s", ce)
		}
	})
}

// TestEveryProblemReported checks that a file with many mistakes reports
// each one, with its line, field path, value and an example, in words.
func TestEveryProblemReported(t *testing.T) {
	file := writeFile(t, `agent:
  service: orders
  app_port: eighty
  drain_period: 2
  inbound_adr: 0.0.0.0:15006
  outbound_addr: nowhere
  tags: {a: b}
policies:
  services:
    orders:
      timeout: 2ns
      retries: {attempts: three}
observability:
  access_log:
    enabled: maybe
    sample_ratio: half
`)
	ce := loadErr(t, config.Options{File: file, Role: config.RoleAgent})
	want := []struct {
		path string
		line int
		msg  string
	}{
		{"agent.app_port", 3, `"eighty" is not a whole number; write e.g. 8080`},
		{"agent.drain_period", 4, `"2" has no unit; write e.g. 2s or 500ms`},
		{"agent.inbound_adr", 5, `unknown field (did you mean "inbound_addr"?)`},
		{"agent.outbound_addr", 6, `"nowhere" is not HOST:PORT: missing port in address; write e.g. 127.0.0.1:15001`},
		{"agent.tags", 7, "a mapping is not a list"},
		{"policies.services.orders.timeout", 11, "2ns is below the minimum of 1ms; write e.g. 15s"},
		{"policies.services.orders.retries.attempts", 12, `"three" is not a whole number; write e.g. 2`},
		{"observability.access_log.enabled", 15, `"maybe" is not true or false`},
		{"observability.access_log.sample_ratio", 16, `"half" is not a number; write e.g. 1`},
	}
	if len(ce.Fields) != len(want) {
		t.Errorf("%d problems reported, want %d:\n%s", len(ce.Fields), len(want), ce)
	}
	for i, w := range want {
		f := field(t, ce, w.path)
		if f.Line != w.line || !strings.Contains(f.Msg, w.msg) {
			t.Errorf("%s: line %d %q, want line %d %q", w.path, f.Line, f.Msg, w.line, w.msg)
		}
		if i < len(ce.Fields) && ce.Fields[i].Path != w.path {
			t.Errorf("problem %d is %s, want %s (file order)", i, ce.Fields[i].Path, w.path)
		}
	}
	t.Log(ce)
}

// TestRequiredNamesTheWays checks that a missing required value says how
// to set it.
func TestRequiredNamesTheWays(t *testing.T) {
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	fs.String("service", "", "")
	fs.Int("app-port", 0, "")
	if err := fs.Parse([]string{"--service", "web"}); err != nil {
		t.Fatal(err)
	}
	ce := loadErr(t, config.Options{Flags: fs, Role: config.RoleAgent,
		FlagKeys: map[string]string{"service": "agent.service", "app-port": "agent.app_port"}})
	want := "agent.app_port: is required; set --app-port, MESH_AGENT_APP_PORT or agent.app_port in the config file"
	if len(ce.Fields) != 1 || !strings.Contains(ce.Error(), want) {
		t.Errorf("want only %q:\n%s", want, ce)
	}
}
