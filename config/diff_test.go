package config

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func loadYAML(t *testing.T, role Role, body string) Config {
	t.Helper()
	p := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(Options{File: p, Role: role})
	if err != nil {
		t.Fatalf("load:\n%s\n%v", body, err)
	}
	return *c
}

func changeLines(cs []Change) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.String()
	}
	return out
}

const agentBase = `
consul: {addr: "127.0.0.1:8500"}
agent:
  service: orders
  app_port: 8080
  tags: [v1]
  meta: {team: shop}
policies:
  default: {timeout: 10s}
`

func TestDiffAgent(t *testing.T) {
	old := loadYAML(t, RoleAgent, agentBase)
	for _, tc := range []struct {
		name, from, to string
		want           []string
	}{
		{"same file", "", "", nil},
		{"comment and order only", "", "\n# a comment\n", nil},
		{"default written out", "  tags: [v1]", "  tags: [v1]\n  drain_period: 5s", nil},
		{"app_port needs a restart", "  app_port: 8080", "  app_port: 8081",
			[]string{"agent.app_port: 8080 -> 8081 (restart)"}},
		{"tags reload", "  tags: [v1]", "  tags: [v1, v2]",
			[]string{"agent.tags: [v1] -> [v1, v2] (reload)"}},
		{"meta key added reloads", "  meta: {team: shop}", "  meta: {team: shop, tier: gold}",
			[]string{"agent.meta.tier: <unset> -> gold (reload)"}},
		{"policy reloads", "  default: {timeout: 10s}", "  default: {timeout: 3s}",
			[]string{"policies.default.timeout: 10s -> 3s (reload)"}},
		{"upstream needs a restart", "  tags: [v1]", "  tags: [v1]\n  upstreams: [{service: pay, listen: \"127.0.0.1:9191\"}]",
			[]string{"agent.upstreams: [] -> [{service: pay, listen: 127.0.0.1:9191}] (restart)"}},
		{"locality field needs a restart", "  tags: [v1]", "  tags: [v1]\n  locality: {zone: a}",
			[]string{"agent.locality.zone: \"\" -> a (restart)"}},
		{"token is redacted", `consul: {addr: "127.0.0.1:8500"}`, `consul: {addr: "127.0.0.1:8500", token: s3cret}`,
			[]string{`consul.token: "" -> <redacted> (restart)`}},
		{"access log fields reload, output restarts", "policies:",
			"observability: {access_log: {output: /var/log/a.log, fields: [status]}}\npolicies:",
			[]string{"observability.access_log.fields: [] -> [status] (reload)",
				"observability.access_log.output: stdout -> /var/log/a.log (restart)"}},
		{"the control section is not the agent's", "policies:", "control: {xds_addr: \"0.0.0.0:18001\"}\npolicies:", nil},
		{"both kinds", "  app_port: 8080\n  tags: [v1]", "  app_port: 9090\n  tags: []",
			[]string{"agent.app_port: 8080 -> 9090 (restart)", "agent.tags: [v1] -> [] (reload)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := agentBase + tc.to
			if tc.from != "" {
				body = strings.Replace(agentBase, tc.from, tc.to, 1)
			}
			next := loadYAML(t, RoleAgent, body)
			got := changeLines(Diff(RoleAgent, old, next))
			if !slices.Equal(got, tc.want) {
				t.Errorf("diff:\n got %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestDiffControl(t *testing.T) {
	base := `
control: {xds_addr: "0.0.0.0:18000"}
policies:
  default: {timeout: 10s}
  services:
    orders: {retries: {attempts: 3}}
`
	old := loadYAML(t, RoleControl, base)
	for _, tc := range []struct {
		name, from, to string
		want           []string
	}{
		{"service policy reloads", "attempts: 3", "attempts: 4",
			[]string{"policies.services.orders.retries.attempts: 3 -> 4 (reload)"}},
		{"xds_addr needs a restart", "0.0.0.0:18000", "0.0.0.0:18001",
			[]string{"control.xds_addr: 0.0.0.0:18000 -> 0.0.0.0:18001 (restart)"}},
		{"cmdb reloads", `control: {xds_addr: "0.0.0.0:18000"}`, `control: {xds_addr: "0.0.0.0:18000", cmdb: {url: "http://cmdb.example"}}`,
			[]string{`control.cmdb.url: "" -> http://cmdb.example (reload)`}},
		{"log level reloads", "policies:", "log: {level: debug}\npolicies:",
			[]string{"log.level: info -> debug (reload)"}},
		{"log format needs a restart", "policies:", "log: {format: text}\npolicies:",
			[]string{"log.format: json -> text (restart)"}},
		{"a new service's policy reloads", "    orders: {retries: {attempts: 3}}",
			"    orders: {retries: {attempts: 3}}\n    pay: {timeout: 1s}",
			nil}, // checked below: several lines, all reload
		{"the agent section is not the control plane's", "policies:", "agent: {tags: [x]}\npolicies:", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next := loadYAML(t, RoleControl, strings.Replace(base, tc.from, tc.to, 1))
			changes := Diff(RoleControl, old, next)
			if tc.name == "a new service's policy reloads" {
				if len(changes) == 0 {
					t.Fatal("no change reported for a new service policy")
				}
				for _, c := range changes {
					if !strings.HasPrefix(c.Path, "policies.services.pay.") || c.Restart || c.Old != "<unset>" {
						t.Errorf("unexpected change %s", c)
					}
				}
				return
			}
			if got := changeLines(changes); !slices.Equal(got, tc.want) {
				t.Errorf("diff:\n got %q\nwant %q", got, tc.want)
			}
		})
	}
}

// The reload code keeps exactly what RestartOnly reports, and takes the rest.
func TestKeepRestartOnly(t *testing.T) {
	old := loadYAML(t, RoleAgent, agentBase)
	next := loadYAML(t, RoleAgent, strings.NewReplacer("app_port: 8080", "app_port: 9090", "[v1]", "[v2]").Replace(agentBase))
	if got := RestartOnly(RoleAgent, old, next); !slices.Equal(got, []string{"agent.app_port"}) {
		t.Fatalf("RestartOnly = %q, want [agent.app_port]", got)
	}
	kept := KeepRestartOnly(RoleAgent, old, next)
	if kept.Agent.AppPort != 8080 || !slices.Equal(kept.Agent.Tags, []string{"v2"}) {
		t.Errorf("kept app_port %d tags %v, want 8080 and [v2]", kept.Agent.AppPort, kept.Agent.Tags)
	}
	if len(RestartOnly(RoleAgent, old, kept)) != 0 {
		t.Errorf("after KeepRestartOnly a restart-only setting still differs: %v", RestartOnly(RoleAgent, old, kept))
	}
	if next.Agent.AppPort != 9090 {
		t.Error("KeepRestartOnly changed its argument")
	}
}

// Every restart-only path names real settings of its role's sections, so
// a renamed field cannot silently turn a restart into a reload.
func TestRestartTablesNameSettings(t *testing.T) {
	leaves := map[string]leaf{}
	flatten(reflect.ValueOf(Default()), "", false, leaves)
	for _, role := range []Role{RoleAgent, RoleControl} {
		seen := map[string]bool{}
		for _, s := range restartTable(role) {
			if seen[s.path] {
				t.Errorf("role %d: %s listed twice", role, s.path)
			}
			seen[s.path] = true
			if !inSections(role, s.path) {
				t.Errorf("role %d: %s is outside the role's sections", role, s.path)
			}
			found := false
			for p := range leaves {
				if p == s.path || strings.HasPrefix(p, s.path+".") {
					found = true
				}
			}
			if !found {
				t.Errorf("role %d: %s is no setting", role, s.path)
			}
			// The field changed through the table is the one named.
			changed := changedBy(s)
			if len(changed) == 0 {
				t.Errorf("role %d: changing %s's field changes no setting", role, s.path)
			}
			for _, p := range changed {
				if p != s.path && !strings.HasPrefix(p, s.path+".") {
					t.Errorf("role %d: %s's field is %s", role, s.path, p)
				}
			}
		}
	}
}

// changedBy changes s's field in a default config and returns the paths
// of the settings that differ from the default then.
func changedBy(s restartSetting) []string {
	c := Default()
	perturb(reflect.ValueOf(s.field(&c)).Elem())
	a, b := map[string]leaf{}, map[string]leaf{}
	flatten(reflect.ValueOf(Default()), "", false, a)
	flatten(reflect.ValueOf(c), "", false, b)
	var out []string
	for _, p := range unionKeys(a, b) {
		if !reflect.DeepEqual(a[p], b[p]) {
			out = append(out, p)
		}
	}
	return out
}

func perturb(v reflect.Value) {
	switch v.Kind() {
	case reflect.String:
		v.SetString(v.String() + "x")
	case reflect.Int, reflect.Int64:
		v.SetInt(v.Int() + 1)
	case reflect.Bool:
		v.SetBool(!v.Bool())
	case reflect.Slice:
		v.Set(reflect.Append(v, reflect.New(v.Type().Elem()).Elem()))
	case reflect.Struct:
		perturb(v.Field(0))
	}
}
