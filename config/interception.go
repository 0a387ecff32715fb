package config

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Interception configures transparent interception (agent.interception):
// the agent's intercept listeners, which receive the connections
// `mesh redirect-traffic` redirects, and its DNS responder for
// <service>.mesh names.
type Interception struct {
	// Enabled opens the intercept listeners; the systemd unit installs
	// the rules only then (mesh redirect-traffic --if-enabled).
	Enabled bool `mapstructure:"enabled" yaml:"enabled"`
	// InboundPort receives connections from the network (to any port not
	// excluded); they go through the inbound policies to the app.
	InboundPort int `mapstructure:"inbound_port" yaml:"inbound_port"`
	// OutboundPort (on loopback) receives the app's own connections.
	OutboundPort int `mapstructure:"outbound_port" yaml:"outbound_port"`
	// Unknown is what happens to a connection whose original destination
	// is no mesh service: pass (connect it there unchanged) or block
	// (close it).
	Unknown string `mapstructure:"unknown" yaml:"unknown"`
	// DetectTimeout is how long the agent waits for a client's first bytes
	// to tell HTTP from TLS from other TCP; a client that says nothing
	// first (server-speaks-first protocols) is relayed as TCP after it.
	DetectTimeout time.Duration `mapstructure:"detect_timeout" yaml:"detect_timeout"`
	// VirtualIPCIDR is the range service virtual IPs come from when the
	// agent computes them itself (no control plane); it must equal the
	// control plane's control.virtual_ips.cidr.
	VirtualIPCIDR string `mapstructure:"virtual_ip_cidr" yaml:"virtual_ip_cidr"`
	// ExcludePorts, ExcludeCIDRs and ExcludeUIDs are added to
	// redirect-traffic's exclusions when it reads this file.
	ExcludePorts []string `mapstructure:"exclude_ports" yaml:"exclude_ports"`
	ExcludeCIDRs []string `mapstructure:"exclude_cidrs" yaml:"exclude_cidrs"`
	ExcludeUIDs  []int    `mapstructure:"exclude_uids" yaml:"exclude_uids"`
	// DNS is the responder for <service>.mesh.
	DNS InterceptionDNS `mapstructure:"dns" yaml:"dns"`
}

// InterceptionDNS configures the agent's DNS responder.
type InterceptionDNS struct {
	// Enabled starts the responder (UDP and TCP on Addr).
	Enabled bool `mapstructure:"enabled" yaml:"enabled"`
	// Addr is where it listens; redirect-traffic --redirect-dns sends
	// the app's port-53 queries to its port.
	Addr string `mapstructure:"addr" yaml:"addr"`
	// Domain is the zone answered from the mesh (default mesh:
	// orders.mesh).
	Domain string `mapstructure:"domain" yaml:"domain"`
	// Forward sends every other name to the nameservers of ResolvConf;
	// false answers REFUSED.
	Forward bool `mapstructure:"forward" yaml:"forward"`
	// ResolvConf is the system resolver's config (default
	// /etc/resolv.conf).
	ResolvConf string `mapstructure:"resolv_conf" yaml:"resolv_conf"`
	// TTL of the answers.
	TTL time.Duration `mapstructure:"ttl" yaml:"ttl"`
}

// Unknown-destination actions (agent.interception.unknown).
const (
	InterceptPass  = "pass"
	InterceptBlock = "block"
)

// DefaultVirtualIPCIDR is the range virtual IPs come from, as Consul's.
const DefaultVirtualIPCIDR = "240.0.0.0/4"

// DefaultInterception is agent.interception before the file applies.
func DefaultInterception() Interception {
	return Interception{
		InboundPort:   15008,
		OutboundPort:  15002,
		Unknown:       InterceptPass,
		DetectTimeout: 300 * time.Millisecond,
		VirtualIPCIDR: DefaultVirtualIPCIDR,
		ExcludePorts:  []string{},
		ExcludeCIDRs:  []string{},
		ExcludeUIDs:   []int{},
		DNS: InterceptionDNS{
			Addr:       "127.0.0.1:15053",
			Domain:     "mesh",
			Forward:    true,
			ResolvConf: "/etc/resolv.conf",
			TTL:        30 * time.Second,
		},
	}
}

func (c *Interception) validate(v *validator) {
	const p = "agent.interception."
	v.check(p+"inbound_port", c.InboundPort > 0 && c.InboundPort < 65536, "must be a port between 1 and 65535, got %d; write e.g. 15008", c.InboundPort)
	v.check(p+"outbound_port", c.OutboundPort > 0 && c.OutboundPort < 65536, "must be a port between 1 and 65535, got %d; write e.g. 15002", c.OutboundPort)
	v.check(p+"outbound_port", c.OutboundPort != c.InboundPort, "must differ from inbound_port (%d)", c.InboundPort)
	v.oneOf(p+"unknown", c.Unknown, InterceptPass, InterceptBlock)
	v.positive(p+"detect_timeout", c.DetectTimeout)
	if pr, err := netip.ParsePrefix(c.VirtualIPCIDR); err != nil || !pr.Addr().Is4() || pr.Bits() > 24 {
		v.add(p+"virtual_ip_cidr", "%q is not an IPv4 CIDR of at least 256 addresses; write e.g. 240.0.0.0/4", c.VirtualIPCIDR)
	}
	for i, s := range c.ExcludePorts {
		v.check(fmt.Sprintf("%sexclude_ports[%d]", p, i), portOrRange(s), "%q is not a port or a range N-M; write e.g. 5432 or 9000-9100", s)
	}
	for i, s := range c.ExcludeCIDRs {
		_, err := netip.ParsePrefix(s)
		v.check(fmt.Sprintf("%sexclude_cidrs[%d]", p, i), err == nil, "%q is not a CIDR; write e.g. 10.20.0.0/16", s)
	}
	for i, n := range c.ExcludeUIDs {
		v.check(fmt.Sprintf("%sexclude_uids[%d]", p, i), n >= 0, "must not be negative, got %d", n)
	}
	if c.DNS.Enabled {
		v.hostPort(p+"dns.addr", c.DNS.Addr)
		v.check(p+"dns.domain", c.DNS.Domain != "" && !strings.HasPrefix(c.DNS.Domain, ".") && !strings.HasSuffix(c.DNS.Domain, "."),
			"%q is not a domain; write e.g. mesh", c.DNS.Domain)
		v.positive(p+"dns.ttl", c.DNS.TTL)
	}
}

func portOrRange(s string) bool {
	lo, hi, isRange := strings.Cut(s, "-")
	a, err := strconv.Atoi(lo)
	if err != nil || a < 1 || a > 65535 {
		return false
	}
	if !isRange {
		return true
	}
	b, err := strconv.Atoi(hi)
	return err == nil && b >= a && b <= 65535
}

// VirtualIPs configures the control plane's allocation of service virtual
// IPs (control.virtual_ips).
type VirtualIPs struct {
	// CIDR is the range they come from (default 240.0.0.0/4, as Consul).
	CIDR string `mapstructure:"cidr" yaml:"cidr"`
}

func (c *VirtualIPs) validate(v *validator) {
	if pr, err := netip.ParsePrefix(c.CIDR); err != nil || !pr.Addr().Is4() || pr.Bits() > 24 {
		v.add("control.virtual_ips.cidr", "%q is not an IPv4 CIDR of at least 256 addresses; write e.g. 240.0.0.0/4", c.CIDR)
	}
}
