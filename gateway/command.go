package gateway

import (
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/daemon"
	"github.com/meshvm/mesh/wire"
)

// flagKeys maps `mesh gateway` flags onto config keys.
var flagKeys = map[string]string{
	"https-addr":      "gateway.https_addr",
	"http-addr":       "gateway.http_addr",
	"admin-addr":      "gateway.admin_addr",
	"advertise-addr":  "gateway.advertise_addr",
	"control-plane":   "gateway.control_plane",
	"consul-addr":     "consul.addr",
	"join-token-file": "gateway.join_token_file",
	"node":            "gateway.node",
	"name":            "gateway.name",
	"cache-dir":       "gateway.cache_dir",
	"drain-period":    "gateway.drain_period",
	"log-level":       "log.level",
	"log-format":      "log.format",
}

// NewCommand returns `mesh gateway`.
func NewCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "Run the edge gateway: TLS, authentication and routing into the mesh",
		Long: "Run the edge gateway: it terminates TLS (files by SNI, or ACME), authenticates requests\n" +
			"once (JWT, API keys), limits abusive clients and routes into the mesh, with routes and\n" +
			"authentication pushed by mesh control.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			file, _ := cmd.Flags().GetString("config")
			return daemon.Run(config.Options{File: file, Flags: cmd.Flags(), FlagKeys: flagKeys, Role: config.RoleGateway},
				func(cfg config.Config, log zerolog.Logger) (daemon.Process, error) { return New(cfg, log) })
		},
	}
	cmd.AddCommand(newHashKeyCommand())
	f := cmd.Flags()
	f.String("https-addr", wire.DefaultGatewayHTTPSAddr, "HTTPS listener")
	f.String("http-addr", wire.DefaultGatewayHTTPAddr, "HTTP listener: redirects to HTTPS, answers ACME HTTP-01 (empty: none)")
	f.String("admin-addr", "127.0.0.1:15000", "admin listener: /ready, /metrics, /config_dump, /debug/pprof/")
	f.String("advertise-addr", "", "IP registered in Consul (default: the HTTPS listener's, else the first non-loopback)")
	f.StringSlice("control-plane", nil, "xDS servers, host:port[,host:port]")
	f.String("consul-addr", "127.0.0.1:8500", "Consul agent HTTP address (CONSUL_HTTP_ADDR)")
	f.String("join-token-file", "", "file holding the join token for the gateway's mesh identity")
	f.String("node", "", "node name (default: the hostname)")
	f.String("name", "mesh-gateway", "service name the gateway registers under")
	f.String("cache-dir", "/var/lib/mesh", "directory for the last good control-plane config and ACME state")
	f.Duration("drain-period", 0, "time to keep serving after deregistering on SIGTERM (default 5s)")
	f.String("log-level", "info", "log level: trace, debug, info, warn, error")
	f.String("log-format", "json", "log format: json or text")
	return cmd
}
