package config

import (
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// A setting a running process cannot change: field returns a pointer to it
// inside a Config, so one table both detects a change and keeps the
// running value.
type restartSetting struct {
	path  string
	field func(c *Config) any
}

// agentRestartOnly are the settings a running `mesh agent` cannot apply on
// reload: its sockets, its identity and registration address, where it
// gets its config, its Consul connection, its log format (every component
// holds a logger) and the observability settings that build its access log
// output and trace exporter. The rest (policies, tags, meta, health check,
// drain and shutdown timing, log level, access log fields and sampling,
// trace sampling) a reload applies.
var agentRestartOnly = []restartSetting{
	{"agent.service", func(c *Config) any { return &c.Agent.Service }},
	{"agent.app_port", func(c *Config) any { return &c.Agent.AppPort }},
	{"agent.app_address", func(c *Config) any { return &c.Agent.AppAddress }},
	{"agent.app_protocol", func(c *Config) any { return &c.Agent.AppProtocol }},
	{"agent.tcp_idle_timeout", func(c *Config) any { return &c.Agent.TCPIdleTimeout }},
	{"agent.inbound_addr", func(c *Config) any { return &c.Agent.InboundAddr }},
	{"agent.outbound_addr", func(c *Config) any { return &c.Agent.OutboundAddr }},
	{"agent.admin_addr", func(c *Config) any { return &c.Agent.AdminAddr }},
	{"agent.advertise_addr", func(c *Config) any { return &c.Agent.AdvertiseAddr }},
	{"agent.node", func(c *Config) any { return &c.Agent.Node }},
	{"agent.upstreams", func(c *Config) any { return &c.Agent.Upstreams }},
	{"agent.dependencies", func(c *Config) any { return &c.Agent.Dependencies }},
	{"agent.on_demand", func(c *Config) any { return &c.Agent.OnDemand }},
	{"agent.control_plane", func(c *Config) any { return &c.Agent.ControlPlane }},
	{"agent.cache_dir", func(c *Config) any { return &c.Agent.CacheDir }},
	{"agent.join_token_file", func(c *Config) any { return &c.Agent.JoinTokenFile }},
	{"agent.identity_credential", func(c *Config) any { return &c.Agent.IdentityCredential }},
	{"agent.control_plane_ca_file", func(c *Config) any { return &c.Agent.ControlPlaneCAFile }},
	{"agent.identity_dir", func(c *Config) any { return &c.Agent.IdentityDir }},
	{"agent.locality", func(c *Config) any { return &c.Agent.Locality }},
	{"agent.tls", func(c *Config) any { return &c.Agent.TLS }},
	{"agent.interception", func(c *Config) any { return &c.Agent.Interception }},
	{"consul.addr", func(c *Config) any { return &c.Consul.Addr }},
	{"consul.token", func(c *Config) any { return &c.Consul.Token }},
	{"consul.datacenter", func(c *Config) any { return &c.Consul.Datacenter }},
	{"log.format", func(c *Config) any { return &c.Log.Format }},
	{"observability.access_log.enabled", func(c *Config) any { return &c.Observability.AccessLog.Enabled }},
	{"observability.access_log.output", func(c *Config) any { return &c.Observability.AccessLog.Output }},
	{"observability.access_log.format", func(c *Config) any { return &c.Observability.AccessLog.Format }},
	{"observability.access_log.flush_interval", func(c *Config) any { return &c.Observability.AccessLog.FlushInterval }},
	{"observability.tracing.exporter", func(c *Config) any { return &c.Observability.Tracing.Exporter }},
	{"observability.tracing.endpoint", func(c *Config) any { return &c.Observability.Tracing.Endpoint }},
	{"observability.tracing.propagators", func(c *Config) any { return &c.Observability.Tracing.Propagators }},
	{"observability.tracing.queue_size", func(c *Config) any { return &c.Observability.Tracing.QueueSize }},
	{"observability.tracing.batch_size", func(c *Config) any { return &c.Observability.Tracing.BatchSize }},
	{"observability.tracing.batch_timeout", func(c *Config) any { return &c.Observability.Tracing.BatchTimeout }},
	{"observability.tracing.export_timeout", func(c *Config) any { return &c.Observability.Tracing.ExportTimeout }},
}

// controlRestartOnly are the settings a running `mesh control` cannot
// apply on reload: its listening sockets, its Consul connection (the
// source's blocking queries hold it) and the log format. Policies,
// control.debounce, log.level and the whole control.cmdb section a reload
// applies.
var controlRestartOnly = []restartSetting{
	{"control.xds_addr", func(c *Config) any { return &c.Control.XDSAddr }},
	{"control.admin_addr", func(c *Config) any { return &c.Control.AdminAddr }},
	{"control.ca", func(c *Config) any { return &c.Control.CA }},
	{"control.xds", func(c *Config) any { return &c.Control.XDS }},
	{"consul.addr", func(c *Config) any { return &c.Consul.Addr }},
	{"consul.token", func(c *Config) any { return &c.Consul.Token }},
	{"consul.datacenter", func(c *Config) any { return &c.Consul.Datacenter }},
	{"log.format", func(c *Config) any { return &c.Log.Format }},
	{"control.kubernetes", func(c *Config) any { return &c.Control.Kubernetes }},
}

// gatewayRestartOnly: the gateway applies the log level on reload; its
// section (listeners, TLS, limits) needs a restart (certificate files are
// re-read as they change, without one).
var gatewayRestartOnly = []restartSetting{
	{"gateway", func(c *Config) any { return &c.Gateway }},
	{"observability", func(c *Config) any { return &c.Observability }},
}

// roleSections are the top-level sections each role reads; a change
// elsewhere has no effect on it.
var roleSections = map[Role][]string{
	RoleAgent:   {"log", "consul", "agent", "policies", "observability"},
	RoleControl: {"log", "consul", "control", "policies"},
	RoleGateway: {"log", "consul", "gateway", "observability"},
}

func restartTable(role Role) []restartSetting {
	switch role {
	case RoleAgent:
		return agentRestartOnly
	case RoleControl:
		return controlRestartOnly
	case RoleGateway:
		return gatewayRestartOnly
	}
	return nil
}

// RestartOnly returns the paths of role's restart-only settings that
// differ between old and next: what a reload from old to next cannot
// apply. The agent and the control plane report these on reload, and
// `mesh config diff` classifies changes with them.
func RestartOnly(role Role, old, next Config) []string {
	var out []string
	for _, s := range restartTable(role) {
		if !reflect.DeepEqual(reflect.ValueOf(s.field(&old)).Elem().Interface(),
			reflect.ValueOf(s.field(&next)).Elem().Interface()) {
			out = append(out, s.path)
		}
	}
	return out
}

// KeepRestartOnly returns next with old's values of role's restart-only
// settings: the config a running process of role is in after a reload.
func KeepRestartOnly(role Role, old, next Config) Config {
	for _, s := range restartTable(role) {
		reflect.ValueOf(s.field(&next)).Elem().Set(reflect.ValueOf(s.field(&old)).Elem())
	}
	return next
}

// Change is one effective setting that differs between two configs.
type Change struct {
	// Path is the dotted setting, e.g. "agent.app_port" or
	// "policies.services.orders.timeout".
	Path string
	// Old and New are the values as YAML would show them; secrets are
	// "<redacted>", "<unset>" is a map entry only one side has.
	Old, New string
	// Restart is true when a reload cannot apply the change.
	Restart bool
}

func (c Change) String() string {
	how := "reload"
	if c.Restart {
		how = "restart"
	}
	return fmt.Sprintf("%s: %s -> %s (%s)", c.Path, c.Old, c.New, how)
}

// Diff lists the effective settings of role that differ between old and
// next, sorted by path, each marked reload or restart.
func Diff(role Role, old, next Config) []Change {
	a, b := map[string]leaf{}, map[string]leaf{}
	flatten(reflect.ValueOf(old), "", false, a)
	flatten(reflect.ValueOf(next), "", false, b)
	restart := RestartOnly(role, old, next)
	var out []Change
	for _, path := range unionKeys(a, b) {
		if !inSections(role, path) {
			continue
		}
		x, okx := a[path]
		y, oky := b[path]
		if okx && oky && reflect.DeepEqual(x.value, y.value) {
			continue
		}
		c := Change{Path: path, Old: x.shown(okx), New: y.shown(oky)}
		for _, r := range restart {
			if path == r || strings.HasPrefix(path, r+".") {
				c.Restart = true
			}
		}
		out = append(out, c)
	}
	return out
}

// leaf is one setting: its value (compared) and whether it is a secret.
type leaf struct {
	value  any
	secret bool
}

func (l leaf) shown(ok bool) string {
	switch {
	case !ok:
		return "<unset>"
	case l.secret && !reflect.ValueOf(l.value).IsZero():
		return "<redacted>"
	}
	return format(reflect.ValueOf(l.value))
}

func inSections(role Role, path string) bool {
	sections, ok := roleSections[role]
	if !ok {
		return true
	}
	top, _, _ := strings.Cut(path, ".")
	return slices.Contains(sections, top)
}

func unionKeys(a, b map[string]leaf) []string {
	seen := map[string]bool{}
	var keys []string
	for _, m := range []map[string]leaf{a, b} {
		for k := range m {
			if !seen[k] {
				seen[k] = true
				keys = append(keys, k)
			}
		}
	}
	sort.Strings(keys)
	return keys
}

var durationType = reflect.TypeOf(time.Duration(0))

// flatten records every setting under v by its dotted path: structs by
// their yaml names, string-keyed maps key by key; lists and scalars are
// one setting each.
func flatten(v reflect.Value, path string, secret bool, out map[string]leaf) {
	switch {
	case v.Kind() == reflect.Struct:
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "" || name == "-" || !f.IsExported() {
				continue
			}
			flatten(v.Field(i), joinPath(path, name), f.Tag.Get("secret") == "true", out)
		}
	case v.Kind() == reflect.Map && v.Type().Key().Kind() == reflect.String:
		for _, k := range v.MapKeys() {
			flatten(v.MapIndex(k), joinPath(path, k.String()), secret, out)
		}
	default:
		out[path] = leaf{value: v.Interface(), secret: secret}
	}
}

// format shows a value in one line, YAML flow style.
func format(v reflect.Value) string {
	switch {
	case v.Type() == durationType:
		return time.Duration(v.Int()).String()
	case v.Kind() == reflect.Slice:
		parts := make([]string, v.Len())
		for i := range parts {
			parts[i] = format(v.Index(i))
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case v.Kind() == reflect.Struct:
		var parts []string
		t := v.Type()
		for i := range t.NumField() {
			name, opts, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
			if name == "" || name == "-" || (strings.Contains(opts, "omitempty") && v.Field(i).IsZero()) {
				continue
			}
			parts = append(parts, name+": "+format(v.Field(i)))
		}
		return "{" + strings.Join(parts, ", ") + "}"
	case v.Kind() == reflect.Map:
		keys := v.MapKeys()
		sort.Slice(keys, func(i, j int) bool { return fmt.Sprint(keys[i]) < fmt.Sprint(keys[j]) })
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = fmt.Sprint(k) + ": " + format(v.MapIndex(k))
		}
		return "{" + strings.Join(parts, ", ") + "}"
	case v.Kind() == reflect.String:
		if v.String() == "" {
			return `""`
		}
		return v.String()
	}
	return fmt.Sprint(v.Interface())
}

// Exit codes of `mesh config diff`, besides 2 for an invalid file.
const (
	DiffNone    = 0 // no effective change
	DiffReload  = 3 // every change applies on reload (SIGHUP)
	DiffRestart = 4 // at least one change needs a restart
)

// ExitStatus ends a command with its code and no error message: main
// exits with ExitCode() and prints nothing.
type ExitStatus int

func (e ExitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// ExitCode is the process exit code.
func (e ExitStatus) ExitCode() int { return int(e) }

// newDiffCommand returns `mesh config diff OLD NEW`.
func newDiffCommand() *cobra.Command {
	var role string
	cmd := &cobra.Command{
		Use:   "diff OLD NEW",
		Short: "Show what changes between two config files and whether a reload applies it",
		Long: "Load both files (with MESH_* environment variables applied, as the running\n" +
			"process would) and print each effective setting that differs as\n" +
			"  path: old -> new (reload|restart)\n" +
			"Exit status: 0 no effective change, 3 every change applies on reload\n" +
			"(systemctl reload), 4 at least one needs a restart, 2 a file is invalid.\n" +
			"Without --role, a file whose agent section names a service is an agent's.",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := parseRole(role)
			if err != nil {
				return err
			}
			cfgs := make([]*Config, 2)
			for i, f := range args {
				if cfgs[i], err = Load(Options{File: f, Role: r}); err != nil {
					return err
				}
			}
			if r == RoleAny {
				r = RoleControl
				if cfgs[1].Agent.Service != "" {
					r = RoleAgent
				}
			}
			changes := Diff(r, *cfgs[0], *cfgs[1])
			code := DiffNone
			for _, c := range changes {
				if _, err := fmt.Fprintln(cmd.OutOrStdout(), c); err != nil {
					return err
				}
				code = max(code, DiffReload)
				if c.Restart {
					code = DiffRestart
				}
			}
			if code != DiffNone {
				return ExitStatus(code)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&role, "role", "", "the role reading the files: agent or control (default: agent if the new file names agent.service)")
	return cmd
}
