package redirect

import (
	"net/netip"
	"strings"
	"testing"
)

func TestText(t *testing.T) {
	s := Spec{ProxyUID: 999, InboundPort: 15008, OutboundPort: 15002, DNSPort: 15053,
		ExcludePorts: []PortRange{{22, 22}, {8300, 8302}}, ExcludeCIDRs: []netip.Prefix{netip.MustParsePrefix("10.20.0.0/14")},
		ExcludeUIDs: []uint32{0}}
	want := `table inet mesh {
	chain output {
		type nat hook output priority -100; policy accept;
		meta skuid 999 return
		meta skuid 0 return
		udp dport 53 redirect to :15053
		tcp dport 53 redirect to :15053
		ip daddr 127.0.0.0/8 return
		ip6 daddr ::1 return
		tcp dport 22 return
		tcp dport 8300-8302 return
		ip daddr 10.20.0.0/14 return
		meta l4proto tcp redirect to :15002
	}

	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		iifname "lo" return
		tcp dport 22 return
		tcp dport 8300-8302 return
		meta l4proto tcp redirect to :15008
	}
}
`
	if got := s.Text(); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	only := Spec{ProxyUID: 1, InboundPort: 15008, NoOutbound: true, InboundPorts: []PortRange{{8080, 8080}}}
	if got := only.Text(); strings.Contains(got, "chain output") || !strings.Contains(got, "tcp dport 8080 redirect to :15008") {
		t.Fatalf("inbound only, port 8080:\n%s", got)
	}
}

// TestExprsForEveryTerm: every rule renders to expressions (the install
// path), ending in a verdict.
func TestExprsForEveryTerm(t *testing.T) {
	s := Spec{ProxyUID: 1, InboundPort: 2, OutboundPort: 3, DNSPort: 4, ExcludePorts: []PortRange{{5, 6}},
		ExcludeCIDRs: []netip.Prefix{netip.MustParsePrefix("fd00::/7"), netip.MustParsePrefix("10.0.0.1/32")}}
	for _, r := range s.rules() {
		if len(r.exprs()) < 2 {
			t.Fatalf("rule %q: %d expressions", r, len(r.exprs()))
		}
	}
}

func TestIptablesText(t *testing.T) {
	s := Spec{ProxyUID: 999, InboundPort: 15008, OutboundPort: 15002,
		ExcludePorts: []PortRange{{8300, 8302}},
		ExcludeCIDRs: []netip.Prefix{netip.MustParsePrefix("10.20.0.0/14"), netip.MustParsePrefix("fd00::/8")}}
	v4, v6 := s.IptablesText(false), s.IptablesText(true)
	for _, want := range []string{"-A MESH_OUTPUT -m owner --uid-owner 999 -j RETURN", "-A MESH_OUTPUT -d 127.0.0.0/8 -j RETURN",
		"-A MESH_OUTPUT -p tcp -m tcp --dport 8300:8302 -j RETURN", "-A MESH_OUTPUT -d 10.20.0.0/14 -j RETURN",
		"-A MESH_PREROUTING -p tcp -j REDIRECT --to-ports 15008", "-A OUTPUT -j MESH_OUTPUT", "-A PREROUTING -j MESH_PREROUTING"} {
		if !strings.Contains(v4, want) {
			t.Errorf("IPv4 lacks %q:\n%s", want, v4)
		}
	}
	if strings.Contains(v4, "fd00::") || strings.Contains(v6, "10.20.") || strings.Contains(v6, "127.0.0.0") || !strings.Contains(v6, "-d ::1/128 -j RETURN") {
		t.Errorf("addresses in the wrong family:\n%s\n%s", v4, v6)
	}
}

func TestParsePortsAndValidate(t *testing.T) {
	got, err := ParsePorts([]string{"22,8300-8302", " 9000 "})
	if err != nil || len(got) != 3 || got[1] != (PortRange{8300, 8302}) {
		t.Fatalf("%v %v", got, err)
	}
	for _, bad := range []string{"0", "65536", "9-8", "x", "1-"} {
		if _, err := ParsePorts([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if err := (Spec{InboundPort: 15002, OutboundPort: 15002}).Validate(); err == nil || !strings.Contains(err.Error(), "must differ") {
		t.Fatalf("same ports: %v", err)
	}
	if err := (Spec{InboundPort: 15008}).Validate(); err == nil || !strings.Contains(err.Error(), "--outbound-port") {
		t.Fatalf("no outbound port: %v", err)
	}
}
