// Package redirect builds and installs the netfilter rules of transparent
// interception (`mesh redirect-traffic`): an app's outbound TCP
// connections go to the agent's outbound intercept listener, connections
// arriving from the network go to its inbound intercept listener, and
// optionally the app's DNS queries go to the agent's DNS responder. The
// agent's own traffic (by UID), SSH, Consul, the mesh's own ports,
// loopback destinations and configured CIDRs, ports and UIDs are left
// alone.
//
// Every rule lives in one nftables table of its own (inet mesh) with two
// NAT chains; installing replaces that table in one netlink transaction
// (so installing twice yields the same ruleset), and removing deletes it
// whole, leaving every other table untouched. The same rule list renders
// as nft syntax for --dry-run.
package redirect

import (
	"fmt"
	"net/netip"
	"strings"
)

// TableName is the nftables table (family inet) holding every rule.
const TableName = "mesh"

// Chain names inside the table.
const (
	ChainOutput     = "output"
	ChainPrerouting = "prerouting"
)

// Default ports of the agent's intercept listeners (agent.interception).
const (
	DefaultInboundPort  = 15008
	DefaultOutboundPort = 15002
	DefaultDNSPort      = 15053
)

// PortRange is a destination port or an inclusive range of them.
type PortRange struct{ Lo, Hi uint16 }

func (p PortRange) String() string {
	if p.Lo == p.Hi {
		return fmt.Sprint(p.Lo)
	}
	return fmt.Sprintf("%d-%d", p.Lo, p.Hi)
}

// DefaultExcludedPorts are never redirected either way: SSH, Consul
// (server RPC, Serf LAN/WAN, HTTP, HTTPS, gRPC, DNS), the agent's
// listeners (15000-15010: admin, outbound, inbound and the intercept
// ones) and the control plane's (xDS 18000, admin 19000).
var DefaultExcludedPorts = []PortRange{
	{22, 22}, {8300, 8302}, {8500, 8502}, {8600, 8600}, {15000, 15010}, {18000, 18000}, {19000, 19000},
}

// Spec is what to install on one VM.
type Spec struct {
	// ProxyUID is the agent's user: its connections are never redirected.
	ProxyUID uint32
	// InboundPort and OutboundPort are the agent's intercept listeners.
	InboundPort, OutboundPort uint16
	// DNSPort, when not 0, receives the app's DNS queries (UDP and TCP 53).
	DNSPort uint16
	// ExcludePorts are destination ports left alone both ways.
	ExcludePorts []PortRange
	// InboundPorts, when set, limits inbound redirection to these ports
	// (else every TCP port not excluded).
	InboundPorts []PortRange
	// ExcludeCIDRs are destinations the app reaches directly.
	ExcludeCIDRs []netip.Prefix
	// ExcludeUIDs are users whose connections are left alone.
	ExcludeUIDs []uint32
	// NoInbound and NoOutbound turn one direction off.
	NoInbound, NoOutbound bool
}

// Validate reports what is wrong with s, naming the flag.
func (s Spec) Validate() error {
	var problems []string
	if !s.NoInbound && s.InboundPort == 0 {
		problems = append(problems, "--inbound-port must be a port between 1 and 65535")
	}
	if !s.NoOutbound && s.OutboundPort == 0 {
		problems = append(problems, "--outbound-port must be a port between 1 and 65535")
	}
	if !s.NoInbound && !s.NoOutbound && s.InboundPort == s.OutboundPort {
		problems = append(problems, fmt.Sprintf("--inbound-port and --outbound-port must differ, both are %d", s.InboundPort))
	}
	for _, p := range append(append([]PortRange{}, s.ExcludePorts...), s.InboundPorts...) {
		if p.Lo == 0 || p.Hi < p.Lo {
			problems = append(problems, fmt.Sprintf("port range %s is not N or N-M with 1 <= N <= M", p))
		}
	}
	for _, p := range s.ExcludeCIDRs {
		if !p.IsValid() {
			problems = append(problems, "an --exclude-cidr is not a CIDR")
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("redirect-traffic: %s", strings.Join(problems, "; "))
	}
	return nil
}

// ParsePorts parses "22,8300-8302" into ranges.
func ParsePorts(items []string) ([]PortRange, error) {
	var out []PortRange
	for _, item := range items {
		for _, s := range strings.Split(item, ",") {
			s = strings.TrimSpace(s)
			if s == "" {
				continue
			}
			lo, hi, isRange := strings.Cut(s, "-")
			var p PortRange
			a, err := parsePort(lo)
			if err != nil {
				return nil, fmt.Errorf("port %q: %w", s, err)
			}
			p.Lo, p.Hi = a, a
			if isRange {
				if p.Hi, err = parsePort(hi); err != nil {
					return nil, fmt.Errorf("port range %q: %w", s, err)
				}
				if p.Hi < p.Lo {
					return nil, fmt.Errorf("port range %q: the end is below the start", s)
				}
			}
			out = append(out, p)
		}
	}
	return out, nil
}

func parsePort(s string) (uint16, error) {
	var n int
	if _, err := fmt.Sscanf(s, "%d", &n); err != nil || fmt.Sprint(n) != s || n < 1 || n > 65535 {
		return 0, fmt.Errorf("%q is not a port between 1 and 65535", s)
	}
	return uint16(n), nil
}

// rule is one nftables rule as an ordered list of terms (matches, then a
// verdict); it renders both as nft syntax and as expressions.
type rule struct {
	chain string
	terms []term
}

// term kinds.
type termKind uint8

const (
	tUID      termKind = iota // meta skuid N
	tDport                    // tcp|udp dport N[-M]
	tDaddr                    // ip|ip6 daddr P (neg: !=)
	tL4                       // meta l4proto tcp
	tIifLo                    // iifname "lo"
	tReturn                   // return
	tRedirect                 // redirect to :N
)

type term struct {
	kind   termKind
	neg    bool
	proto  byte // 6 tcp, 17 udp
	ports  PortRange
	prefix netip.Prefix
	uid    uint32
}

const (
	protoTCP = 6
	protoUDP = 17
)

func (t term) String() string {
	switch t.kind {
	case tUID:
		return fmt.Sprintf("meta skuid %d", t.uid)
	case tDport:
		return fmt.Sprintf("%s dport %s", protoName(t.proto), t.ports)
	case tDaddr:
		fam := "ip"
		if t.prefix.Addr().Is6() {
			fam = "ip6"
		}
		op := ""
		if t.neg {
			op = "!= "
		}
		if t.prefix.IsSingleIP() {
			return fmt.Sprintf("%s daddr %s%s", fam, op, t.prefix.Addr())
		}
		return fmt.Sprintf("%s daddr %s%s", fam, op, t.prefix.Masked())
	case tL4:
		return "meta l4proto " + protoName(t.proto)
	case tIifLo:
		return `iifname "lo"`
	case tReturn:
		return "return"
	case tRedirect:
		return fmt.Sprintf("redirect to :%d", t.ports.Lo)
	}
	return "?"
}

func protoName(p byte) string {
	if p == protoUDP {
		return "udp"
	}
	return "tcp"
}

func (r rule) String() string {
	parts := make([]string, len(r.terms))
	for i, t := range r.terms {
		parts[i] = t.String()
	}
	return strings.Join(parts, " ")
}

var (
	loopback4 = netip.MustParsePrefix("127.0.0.0/8")
	loopback6 = netip.MustParsePrefix("::1/128")
)

// rules is the whole ruleset of s, in order, per chain.
func (s Spec) rules() []rule {
	var out []rule
	add := func(chain string, terms ...term) { out = append(out, rule{chain: chain, terms: terms}) }
	ret := term{kind: tReturn}
	if !s.NoOutbound {
		// The agent's own connections first: it must never be sent back
		// into itself.
		for _, uid := range append([]uint32{s.ProxyUID}, s.ExcludeUIDs...) {
			add(ChainOutput, term{kind: tUID, uid: uid}, ret)
		}
		if s.DNSPort != 0 {
			// Before the loopback exception: the system resolver is often
			// 127.0.0.53.
			for _, p := range []byte{protoUDP, protoTCP} {
				add(ChainOutput, term{kind: tDport, proto: p, ports: PortRange{53, 53}}, term{kind: tRedirect, ports: PortRange{s.DNSPort, s.DNSPort}})
			}
		}
		// The app talking to itself on loopback (and to the explicit
		// outbound listener) is not intercepted. A call to the VM's own
		// non-loopback address is, and goes through the outbound and then
		// the inbound policies like any call to the service.
		add(ChainOutput, term{kind: tDaddr, prefix: loopback4}, ret)
		add(ChainOutput, term{kind: tDaddr, prefix: loopback6}, ret)
		for _, p := range s.ExcludePorts {
			add(ChainOutput, term{kind: tDport, proto: protoTCP, ports: p}, ret)
		}
		for _, c := range s.ExcludeCIDRs {
			add(ChainOutput, term{kind: tDaddr, prefix: c}, ret)
		}
		add(ChainOutput, term{kind: tL4, proto: protoTCP}, term{kind: tRedirect, ports: PortRange{s.OutboundPort, s.OutboundPort}})
	}
	if !s.NoInbound {
		add(ChainPrerouting, term{kind: tIifLo}, ret)
		for _, p := range s.ExcludePorts {
			add(ChainPrerouting, term{kind: tDport, proto: protoTCP, ports: p}, ret)
		}
		redirect := term{kind: tRedirect, ports: PortRange{s.InboundPort, s.InboundPort}}
		if len(s.InboundPorts) > 0 {
			for _, p := range s.InboundPorts {
				add(ChainPrerouting, term{kind: tDport, proto: protoTCP, ports: p}, redirect)
			}
		} else {
			add(ChainPrerouting, term{kind: tL4, proto: protoTCP}, redirect)
		}
	}
	return out
}

// Text is the ruleset of s in nft syntax, as `nft list table inet mesh`
// prints it once installed; `nft -f` accepts it.
func (s Spec) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", TableName)
	rules := s.rules()
	first := true
	for _, ch := range s.chains() {
		if !first {
			b.WriteString("\n")
		}
		first = false
		fmt.Fprintf(&b, "\tchain %s {\n\t\ttype nat hook %s priority %s; policy accept;\n", ch.name, ch.hook, ch.priorityText)
		for _, r := range rules {
			if r.chain == ch.name {
				fmt.Fprintf(&b, "\t\t%s\n", r)
			}
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

type chainSpec struct {
	name, hook, priorityText string
	priority                 int32
}

// chains are the base chains s needs, in the order nft lists them (by
// creation).
func (s Spec) chains() []chainSpec {
	var out []chainSpec
	if !s.NoOutbound {
		out = append(out, chainSpec{name: ChainOutput, hook: "output", priorityText: "-100", priority: -100})
	}
	if !s.NoInbound {
		out = append(out, chainSpec{name: ChainPrerouting, hook: "prerouting", priorityText: "dstnat", priority: -100})
	}
	return out
}
