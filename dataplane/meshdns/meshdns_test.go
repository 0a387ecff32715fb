package meshdns

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func start(t *testing.T, o Options) string {
	t.Helper()
	o.Addr = freeAddr(t)
	o.Log = zerolog.Nop()
	s := New(o)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", o.Addr); err == nil {
			c.Close()
			return o.Addr
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("dns server did not start")
	return ""
}

func query(t *testing.T, addr, name string, qtype uint16, netw string) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	c := &dns.Client{Net: netw, Timeout: 3 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("query %s over %s: %v", name, netw, err)
	}
	return r
}

func TestMeshNames(t *testing.T) {
	vip := netip.MustParseAddr("240.1.2.3")
	addr := start(t, Options{Domain: "mesh", Lookup: func(s string) (netip.Addr, bool) { return vip, s == "orders" }})
	for _, netw := range []string{"udp", "tcp"} {
		r := query(t, addr, "orders.mesh", dns.TypeA, netw)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "240.1.2.3" {
			t.Fatalf("%s: orders.mesh: %v", netw, r)
		}
	}
	if r := query(t, addr, "ORDERS.Mesh", dns.TypeA, "udp"); len(r.Answer) != 1 {
		t.Fatalf("names are case-insensitive: %v", r)
	}
	if r := query(t, addr, "nope.mesh", dns.TypeA, "udp"); r.Rcode != dns.RcodeNameError {
		t.Fatalf("unknown service: %v", r)
	}
	if r := query(t, addr, "orders.mesh", dns.TypeAAAA, "udp"); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
		t.Fatalf("AAAA of a service: want NOERROR, no answer: %v", r)
	}
}

// TestForward: other names go to the nameserver resolv.conf names (here a
// second responder answering its own zone).
func TestForward(t *testing.T) {
	upstream := start(t, Options{Domain: "corp", Lookup: func(string) (netip.Addr, bool) {
		return netip.MustParseAddr("10.1.1.1"), true
	}})
	host, port, _ := net.SplitHostPort(upstream)
	rc := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(rc, []byte("nameserver "+host+"\noptions timeout:1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// resolv.conf has no port: point the responder at the upstream's by
	// rewriting the default port through the file is impossible, so the
	// test checks forwarding with ClientConfig's port set to the upstream.
	s := New(Options{Domain: "mesh", Forward: true, ResolvConf: rc, Lookup: func(string) (netip.Addr, bool) { return netip.Addr{}, false }})
	s.fwd = []string{net.JoinHostPort(host, port)}
	s.fwdRead = time.Now()
	m := new(dns.Msg)
	m.SetQuestion("db.corp.", dns.TypeA)
	r := s.forward(m, false)
	if len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "10.1.1.1" {
		t.Fatalf("forwarded answer: %v", r)
	}
	off := start(t, Options{Domain: "mesh", Lookup: func(string) (netip.Addr, bool) { return netip.Addr{}, false }})
	if r := query(t, off, "db.corp", dns.TypeA, "udp"); r.Rcode != dns.RcodeRefused {
		t.Fatalf("forwarding off: want REFUSED, got %v", r)
	}
}
