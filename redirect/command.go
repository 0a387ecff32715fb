package redirect

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/user"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/meshvm/mesh/config"
)

// ProxyUser is the account the packaged agent runs as.
const ProxyUser = "mesh"

// NewCommand returns `mesh redirect-traffic`.
func NewCommand() *cobra.Command {
	var (
		undo, dryRun, ifEnabled, redirectDNS, noInbound, noOutbound bool
		proxyUID, backend                                           string
		inPort, outPort, dnsPort                                    int
		excludePorts, inboundPorts, excludeCIDRs                    []string
		excludeUIDs                                                 []string
	)
	cmd := &cobra.Command{
		Use:   "redirect-traffic",
		Short: "Install (or --undo) the netfilter rules of transparent interception on this VM",
		Long: "Redirect this VM's TCP traffic into the local agent's intercept listeners: the app's\n" +
			"outbound connections to --outbound-port, connections from the network to --inbound-port,\n" +
			"and with --redirect-dns its DNS queries to the agent's responder. The agent's own user\n" +
			"(--proxy-uid), loopback destinations, SSH, Consul and mesh ports, and the --exclude-*\n" +
			"ports, CIDRs and users are left alone. All rules live in the nftables table inet mesh,\n" +
			"replaced whole on every run; --undo deletes it. With --config, the agent's\n" +
			"agent.interception section gives the ports and exclusions and its listener ports are\n" +
			"excluded too; --if-enabled then does nothing unless agent.interception.enabled is true.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			file, _ := cmd.Flags().GetString("config")
			var cfg *config.Config
			if file != "" {
				c, err := config.Load(config.Options{File: file, Role: config.RoleAny})
				if err != nil {
					return err
				}
				cfg = c
			}
			out := cmd.OutOrStdout()
			if backend != "nftables" && backend != "iptables" {
				return usage(fmt.Sprintf("--backend %q is not nftables or iptables", backend))
			}
			iptables := backend == "iptables"
			if ifEnabled {
				if cfg == nil {
					return usage("--if-enabled needs --config FILE")
				}
				if !cfg.Agent.Interception.Enabled {
					if undo {
						// Rules from an earlier, enabled config must not
						// outlive the agent either.
						return removeIfNotDry(dryRun, iptables, out)
					}
					fmt.Fprintln(out, "agent.interception.enabled is false: no rules installed")
					return nil
				}
			}
			if undo {
				return removeIfNotDry(dryRun, iptables, out)
			}
			s := Spec{NoInbound: noInbound, NoOutbound: noOutbound}
			f := cmd.Flags()
			if cfg != nil {
				ic := cfg.Agent.Interception
				s.InboundPort, s.OutboundPort = uint16(ic.InboundPort), uint16(ic.OutboundPort)
				if ic.DNS.Enabled && !f.Changed("redirect-dns") {
					redirectDNS = true // the responder runs: send the app's queries to it
				}
				if ic.DNS.Enabled && redirectDNS && !f.Changed("dns-port") {
					_, p, _ := net.SplitHostPort(ic.DNS.Addr)
					n, _ := strconv.Atoi(p)
					dnsPort = n
				}
				excludePorts = append(excludePorts, ic.ExcludePorts...)
				excludeCIDRs = append(excludeCIDRs, ic.ExcludeCIDRs...)
				for _, u := range ic.ExcludeUIDs {
					excludeUIDs = append(excludeUIDs, strconv.Itoa(u))
				}
				for _, addr := range agentAddrs(cfg.Agent) {
					if _, p, err := net.SplitHostPort(addr); err == nil {
						excludePorts = append(excludePorts, p)
					}
				}
			}
			if cfg == nil || f.Changed("inbound-port") {
				s.InboundPort = uint16(inPort)
			}
			if cfg == nil || f.Changed("outbound-port") {
				s.OutboundPort = uint16(outPort)
			}
			if redirectDNS {
				s.DNSPort = uint16(dnsPort)
			}
			var err error
			if s.ProxyUID, err = lookupUID(proxyUID); err != nil {
				return err
			}
			extra, err := ParsePorts(excludePorts)
			if err != nil {
				return usage("--exclude-port: " + err.Error())
			}
			s.ExcludePorts = dedupPorts(append(append([]PortRange{}, DefaultExcludedPorts...), extra...))
			if s.InboundPorts, err = ParsePorts(inboundPorts); err != nil {
				return usage("--inbound-ports: " + err.Error())
			}
			for _, c := range excludeCIDRs {
				p, err := netip.ParsePrefix(c)
				if err != nil {
					a, aerr := netip.ParseAddr(c)
					if aerr != nil {
						return usage(fmt.Sprintf("--exclude-cidr %q is not a CIDR or an address", c))
					}
					p = netip.PrefixFrom(a, a.BitLen())
				}
				s.ExcludeCIDRs = append(s.ExcludeCIDRs, p.Masked())
			}
			for _, u := range excludeUIDs {
				uid, err := lookupUID(u)
				if err != nil {
					return err
				}
				if uid != s.ProxyUID {
					s.ExcludeUIDs = append(s.ExcludeUIDs, uid)
				}
			}
			if err := s.Validate(); err != nil {
				return usage(err.Error())
			}
			if dryRun {
				text := s.Text()
				if iptables {
					text = "# iptables-restore --noflush\n" + s.IptablesText(false) + "# ip6tables-restore --noflush\n" + s.IptablesText(true)
				}
				_, err := fmt.Fprint(out, text)
				return err
			}
			where := "table inet " + TableName
			if iptables {
				where = "iptables chains " + IptablesOutput + ", " + IptablesPrerouting
				err = InstallIptables(s)
			} else {
				err = Install(s)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "installed %s (outbound -> :%d, inbound -> :%d, proxy uid %d)\n", where, s.OutboundPort, s.InboundPort, s.ProxyUID)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&backend, "backend", "nftables", "nftables (table inet mesh, one transaction) or iptables (chains MESH_OUTPUT/MESH_PREROUTING in the nat table, IPv4 and IPv6)")
	f.BoolVar(&undo, "undo", false, "remove the rules (delete table inet mesh)")
	f.BoolVar(&dryRun, "dry-run", false, "print the rules in nft syntax instead of installing them")
	f.BoolVar(&ifEnabled, "if-enabled", false, "with --config: do nothing unless agent.interception.enabled (with --undo: always remove)")
	f.StringVar(&proxyUID, "proxy-uid", ProxyUser, "user (name or uid) the agent runs as; its connections are never redirected")
	f.IntVar(&inPort, "inbound-port", DefaultInboundPort, "agent's inbound intercept listener (agent.interception.inbound_port)")
	f.IntVar(&outPort, "outbound-port", DefaultOutboundPort, "agent's outbound intercept listener (agent.interception.outbound_port)")
	f.BoolVar(&redirectDNS, "redirect-dns", false, "redirect the app's DNS queries (UDP and TCP 53) to the agent's responder (default with --config: agent.interception.dns.enabled)")
	f.IntVar(&dnsPort, "dns-port", DefaultDNSPort, "the agent's DNS responder port (agent.interception.dns.addr)")
	f.StringArrayVar(&excludePorts, "exclude-port", nil, "destination port or range N-M left alone both ways, added to the defaults (repeatable, comma-separated)")
	f.StringArrayVar(&inboundPorts, "inbound-ports", nil, "only redirect inbound connections to these ports (default: every port not excluded)")
	f.StringArrayVar(&excludeCIDRs, "exclude-cidr", nil, "destination CIDR the app reaches directly (repeatable)")
	f.StringArrayVar(&excludeUIDs, "exclude-uid", nil, "user (name or uid) whose connections are left alone (repeatable)")
	f.BoolVar(&noInbound, "no-inbound", false, "do not redirect inbound connections")
	f.BoolVar(&noOutbound, "no-outbound", false, "do not redirect the app's outbound connections")
	return cmd
}

func removeIfNotDry(dry, iptables bool, out interface{ Write([]byte) (int, error) }) error {
	what := "table inet " + TableName
	if iptables {
		what = "iptables chains " + IptablesOutput + ", " + IptablesPrerouting
	}
	if dry {
		_, err := fmt.Fprintf(out, "would remove %s\n", what)
		return err
	}
	remove := Remove
	if iptables {
		remove = RemoveIptables
	}
	if err := remove(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(out, "removed %s\n", what)
	return err
}

// agentAddrs are the agent's own listen addresses: never redirected.
func agentAddrs(a config.Agent) []string {
	out := []string{a.InboundAddr, a.OutboundAddr, a.AdminAddr, a.Interception.DNS.Addr}
	for _, u := range a.Upstreams {
		out = append(out, u.Listen)
	}
	return out
}

func lookupUID(s string) (uint32, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return uint32(n), nil
	}
	u, err := user.Lookup(s)
	if err != nil {
		var unknown user.UnknownUserError
		if errors.As(err, &unknown) {
			return 0, usage(fmt.Sprintf("user %q does not exist; pass --proxy-uid with the agent's user (name or uid)", s))
		}
		return 0, fmt.Errorf("look up user %q: %w", s, err)
	}
	n, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("user %q has uid %q: %w", s, u.Uid, err)
	}
	return uint32(n), nil
}

func dedupPorts(ps []PortRange) []PortRange {
	seen := map[PortRange]bool{}
	var out []PortRange
	for _, p := range ps {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

// usage is a bad-flags error: exit code 2 (config.Error is what main maps).
func usage(msg string) error { return &config.Error{Syntax: msg} }
