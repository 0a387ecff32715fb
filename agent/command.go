package agent

import (
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/daemon"
	"github.com/meshvm/mesh/wire"
)

// flagKeys maps `mesh agent` flags onto config keys.
var flagKeys = map[string]string{
	"service":         "agent.service",
	"app-port":        "agent.app_port",
	"app-address":     "agent.app_address",
	"app-health":      "agent.app_health",
	"app-protocol":    "agent.app_protocol",
	"inbound-addr":    "agent.inbound_addr",
	"outbound-addr":   "agent.outbound_addr",
	"admin-addr":      "agent.admin_addr",
	"advertise-addr":  "agent.advertise_addr",
	"control-plane":   "agent.control_plane",
	"consul-addr":     "consul.addr",
	"node":            "agent.node",
	"upstream":        "agent.upstreams",
	"tag":             "agent.tags",
	"cache-dir":       "agent.cache_dir",
	"join-token-file": "agent.join_token_file",
	"drain-period":    "agent.drain_period",
	"zone":            "agent.locality.zone",
	"region":          "agent.locality.region",
	"log-level":       "log.level",
	"log-format":      "log.format",
}

// NewCommand returns `mesh agent`.
func NewCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the sidecar proxy next to one app instance",
		Long: "Run the sidecar next to one app: inbound traffic goes to the app, the app's\n" +
			"outbound calls go to other services' agents, and the app is registered in Consul.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			file, _ := cmd.Flags().GetString("config")
			return daemon.Run(config.Options{File: file, Flags: cmd.Flags(), FlagKeys: flagKeys, Role: config.RoleAgent},
				func(cfg config.Config, log zerolog.Logger) (daemon.Process, error) { return New(cfg, log) })
		},
	}
	f := cmd.Flags()
	f.String("service", "", "service name the app is registered and called under (required)")
	f.Int("app-port", 0, "port the app listens on (required)")
	f.String("app-address", "127.0.0.1", "address the app listens on")
	f.String("app-health", "", "HTTP path of the app's health check (default: a TCP check)")
	f.String("app-protocol", "auto", "what the app speaks: http1, http2 (h2c), grpc, tcp, or auto (h2c probe, else HTTP/1.1)")
	f.String("inbound-addr", wire.DefaultInboundAddr, "listener for traffic to the app")
	f.String("outbound-addr", wire.DefaultOutboundAddr, "listener for the app's calls to other services")
	f.String("admin-addr", "127.0.0.1:15000", "admin listener: /ready, /metrics, /config_dump, /debug/pprof/")
	f.String("advertise-addr", "", "IP other agents reach this one on (default: the inbound host)")
	f.StringSlice("control-plane", nil, "xDS servers, host:port[,host:port]")
	f.String("consul-addr", "127.0.0.1:8500", "Consul agent HTTP address (CONSUL_HTTP_ADDR)")
	f.String("node", "", "node name (default: the hostname)")
	f.StringArray("upstream", nil, "per-upstream local listener SERVICE=HOST:PORT[,tcp] (repeatable; tcp: a raw TCP relay)")
	f.StringArray("tag", nil, "Consul tag for the registration (repeatable)")
	f.String("cache-dir", "/var/lib/mesh", "directory for state kept across restarts")
	f.String("join-token-file", "", "file holding the join token for the agent's first certificate (agent.join_token_file)")
	f.Duration("drain-period", 0, "time to keep serving after deregistering on SIGTERM (default 5s)")
	f.String("zone", "", "zone of this VM (locality-aware load balancing)")
	f.String("region", "", "region of this VM")
	f.String("log-level", "info", "log level: trace, debug, info, warn, error")
	f.String("log-format", "json", "log format: json or text")
	return cmd
}
