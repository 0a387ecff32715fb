package controlplane

import (
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/daemon"
)

// flagKeys maps `mesh control` flags onto config keys.
var flagKeys = map[string]string{
	"xds-addr":                "control.xds_addr",
	"admin-addr":              "control.admin_addr",
	"consul-addr":             "consul.addr",
	"cmdb-url":                "control.cmdb.url",
	"cmdb-interval":           "control.cmdb.interval",
	"cmdb-format":             "control.cmdb.format",
	"cmdb-token-file":         "control.cmdb.token_file",
	"debounce":                "control.debounce",
	"load-reporting-interval": "control.load_reporting_interval",
	"kubeconfig":              "control.kubernetes.kubeconfig",
	"log-level":               "log.level",
	"log-format":              "log.format",
}

// NewCommand returns `mesh control`.
func NewCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "control",
		Short: "Run the xDS control plane fed by Consul and the CMDB",
		Long: "Run the control plane: watch the Consul catalog, merge CMDB machine metadata,\n" +
			"and serve Envoy v3 resources over ADS (state-of-the-world and delta) to mesh\n" +
			"agents, Envoy and gRPC proxyless clients. The CMDB token comes from\n" +
			"--cmdb-token-file or MESH_CMDB_TOKEN and is never logged.\n\n" +
			"SIGHUP (systemctl reload) re-reads the config file with the same flags and\n" +
			"applies policies, control.debounce, log.level and the control.cmdb settings\n" +
			"without dropping an xDS stream; control.xds_addr, control.admin_addr, the\n" +
			"consul section, control.kubernetes and log.format need a restart. A file\n" +
			"that does not load is reported and the running config stays.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			file, _ := cmd.Flags().GetString("config")
			return daemon.Run(config.Options{File: file, Flags: cmd.Flags(), FlagKeys: flagKeys, Role: config.RoleControl},
				func(cfg config.Config, log zerolog.Logger) (daemon.Process, error) { return New(cfg, log, Options{}) })
		},
	}
	f := cmd.Flags()
	f.String("xds-addr", "0.0.0.0:18000", "xDS gRPC listener (ADS, state-of-the-world and delta)")
	f.String("admin-addr", "127.0.0.1:19000", "admin listener: /ready, /metrics, /config_dump, /api/v1/ (mesh status), /ui/ (dashboard), /debug/pprof/")
	f.String("consul-addr", "127.0.0.1:8500", "Consul agent HTTP address (CONSUL_HTTP_ADDR)")
	f.String("cmdb-url", "", "CMDB URL: a JSON host list (generic) or NetBox's base URL (netbox); empty disables")
	f.Duration("cmdb-interval", 0, "CMDB poll interval (default 30s)")
	f.String("cmdb-format", "generic", "CMDB format: generic or netbox")
	f.String("cmdb-token-file", "", "file holding the CMDB API token (or set MESH_CMDB_TOKEN)")
	f.String("kubeconfig", "", "kubeconfig file; turns the Kubernetes source on (control.kubernetes: in a pod, set enabled instead)")
	f.Duration("debounce", 0, "at most one push per this interval; a change after a quiet interval is pushed at once (default 100ms)")
	f.Duration("load-reporting-interval", 0, "how often proxies send load reports (LRS; default 10s)")
	f.String("log-level", "info", "log level: trace, debug, info, warn, error")
	f.String("log-format", "json", "log format: json or text")
	cmd.AddCommand(newTokenCommand(), newCACommand())
	return cmd
}
