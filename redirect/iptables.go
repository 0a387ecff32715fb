package redirect

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
)

// The iptables fallback, for hosts where only iptables is managed (or
// nftables cannot do inet NAT): the same rule list as two chains of our
// own in the nat table, MESH_OUTPUT and MESH_PREROUTING, entered by one
// jump each from OUTPUT and PREROUTING, for IPv4 (iptables) and IPv6
// (ip6tables). Installing removes our jumps, then loads the chains with
// iptables-restore --noflush (which empties chains it declares) and adds
// the jumps back, so installing twice gives the same rules; removing
// deletes the jumps and the chains and nothing else. Unlike the nftables
// table this is not one transaction.

// iptables chain names.
const (
	IptablesOutput     = "MESH_OUTPUT"
	IptablesPrerouting = "MESH_PREROUTING"
)

// IptablesText is the iptables-restore input of s for one family.
func (s Spec) IptablesText(v6 bool) string {
	var b strings.Builder
	b.WriteString("*nat\n")
	chains := s.chains()
	for _, ch := range chains {
		fmt.Fprintf(&b, ":%s - [0:0]\n", iptChain(ch.name))
	}
	for _, r := range s.rules() {
		line, ok := r.iptables(v6)
		if ok {
			fmt.Fprintf(&b, "-A %s %s\n", iptChain(r.chain), line)
		}
	}
	for _, ch := range chains {
		fmt.Fprintf(&b, "-A %s -j %s\n", strings.ToUpper(ch.hook), iptChain(ch.name))
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

func iptChain(name string) string {
	if name == ChainPrerouting {
		return IptablesPrerouting
	}
	return IptablesOutput
}

// iptables renders r as iptables match and target arguments; false when
// the rule does not apply to the family (an address of the other one).
func (r rule) iptables(v6 bool) (string, bool) {
	var parts []string
	for _, t := range r.terms {
		switch t.kind {
		case tUID:
			parts = append(parts, fmt.Sprintf("-m owner --uid-owner %d", t.uid))
		case tDport:
			ports := t.ports.String()
			if t.ports.Lo != t.ports.Hi {
				ports = fmt.Sprintf("%d:%d", t.ports.Lo, t.ports.Hi)
			}
			parts = append(parts, fmt.Sprintf("-p %s -m %s --dport %s", protoName(t.proto), protoName(t.proto), ports))
		case tDaddr:
			if t.prefix.Addr().Is6() != v6 {
				return "", false
			}
			neg := ""
			if t.neg {
				neg = "! "
			}
			parts = append(parts, fmt.Sprintf("%s-d %s", neg, t.prefix.Masked()))
		case tL4:
			parts = append(parts, "-p "+protoName(t.proto))
		case tIifLo:
			parts = append(parts, "-i lo")
		case tReturn:
			parts = append(parts, "-j RETURN")
		case tRedirect:
			parts = append(parts, fmt.Sprintf("-j REDIRECT --to-ports %d", t.ports.Lo))
		}
	}
	return strings.Join(parts, " "), true
}

// InstallIptables installs s with iptables and ip6tables.
func InstallIptables(s Spec) error {
	if err := s.Validate(); err != nil {
		return err
	}
	for _, v6 := range []bool{false, true} {
		tool := iptablesTool(v6)
		if err := dropJumps(tool, s); err != nil {
			return err
		}
		cmd := exec.Command(tool+"-restore", "--noflush")
		cmd.Stdin = strings.NewReader(s.IptablesText(v6))
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s-restore: %w: %s", tool, err, bytes.TrimSpace(out))
		}
	}
	return nil
}

// RemoveIptables deletes our jumps and chains in both families.
func RemoveIptables() error {
	all := Spec{}
	for _, v6 := range []bool{false, true} {
		tool := iptablesTool(v6)
		if err := dropJumps(tool, all); err != nil {
			return err
		}
		for _, ch := range []string{IptablesOutput, IptablesPrerouting} {
			if !chainExists(tool, ch) {
				continue
			}
			for _, op := range []string{"-F", "-X"} {
				if out, err := exec.Command(tool, "-w", "-t", "nat", op, ch).CombinedOutput(); err != nil {
					return fmt.Errorf("%s -t nat %s %s: %w: %s", tool, op, ch, err, bytes.TrimSpace(out))
				}
			}
		}
	}
	return nil
}

func iptablesTool(v6 bool) string {
	if v6 {
		return "ip6tables"
	}
	return "iptables"
}

// dropJumps deletes every jump from OUTPUT and PREROUTING into our chains.
func dropJumps(tool string, _ Spec) error {
	for _, j := range []struct{ from, to string }{{"OUTPUT", IptablesOutput}, {"PREROUTING", IptablesPrerouting}} {
		if !chainExists(tool, j.to) {
			continue
		}
		for range 100 {
			if exec.Command(tool, "-w", "-t", "nat", "-C", j.from, "-j", j.to).Run() != nil {
				break
			}
			if out, err := exec.Command(tool, "-w", "-t", "nat", "-D", j.from, "-j", j.to).CombinedOutput(); err != nil {
				return fmt.Errorf("%s -t nat -D %s -j %s: %w: %s", tool, j.from, j.to, err, bytes.TrimSpace(out))
			}
		}
	}
	return nil
}

func chainExists(tool, chain string) bool {
	return exec.Command(tool, "-w", "-t", "nat", "-S", chain).Run() == nil
}
