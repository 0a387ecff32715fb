// Package meshdns is the agent's small DNS responder: A queries for
// <service>.<domain> (orders.mesh) are answered with the service's virtual
// IP, so an unmodified app can `curl http://orders.mesh/`; every other
// name is forwarded to the system resolver's nameservers (resolv.conf) or
// refused. It serves UDP and TCP on one address.
package meshdns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"
)

// Options configure a Server.
type Options struct {
	// Addr is host:port for both UDP and TCP.
	Addr string
	// Domain is the mesh zone, without dots ("mesh").
	Domain string
	// Lookup returns the virtual IP of a service name.
	Lookup func(service string) (netip.Addr, bool)
	// Forward sends other names to the nameservers of ResolvConf.
	Forward    bool
	ResolvConf string
	TTL        time.Duration
	Log        zerolog.Logger
}

// Server is the responder.
type Server struct {
	o       Options
	zone    string // "mesh."
	log     zerolog.Logger
	servers []*dns.Server
	client  *dns.Client

	fwdMu   sync.Mutex
	fwd     []string // nameserver host:port, read at first forward
	fwdRead time.Time
}

// New returns a server; it binds nothing.
func New(o Options) *Server {
	if o.TTL <= 0 {
		o.TTL = 30 * time.Second
	}
	return &Server{o: o, zone: dns.Fqdn(o.Domain), log: o.Log.With().Str("component", "dns").Logger(),
		client: &dns.Client{Timeout: 2 * time.Second}}
}

// Run binds UDP and TCP on Addr and answers until ctx is done.
func (s *Server) Run(ctx context.Context) error {
	pc, err := net.ListenPacket("udp", s.o.Addr)
	if err != nil {
		return fmt.Errorf("dns: listen udp %s: %w", s.o.Addr, err)
	}
	ln, err := net.Listen("tcp", s.o.Addr)
	if err != nil {
		pc.Close()
		return fmt.Errorf("dns: listen tcp %s: %w", s.o.Addr, err)
	}
	h := dns.HandlerFunc(s.serve)
	s.servers = []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}}
	errc := make(chan error, 2)
	for _, srv := range s.servers {
		go func() { errc <- srv.ActivateAndServe() }()
	}
	s.log.Info().Str("addr", s.o.Addr).Str("domain", s.o.Domain).Bool("forward", s.o.Forward).Msg("dns responder listening")
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	for _, srv := range s.servers {
		_ = srv.Shutdown()
	}
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("dns: %w", err)
	}
	return nil
}

func (s *Server) serve(w dns.ResponseWriter, req *dns.Msg) {
	if len(req.Question) != 1 {
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeFormatError)
		_ = w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	if name == s.zone || strings.HasSuffix(name, "."+s.zone) {
		_ = w.WriteMsg(s.answer(req, q, strings.TrimSuffix(strings.TrimSuffix(name, s.zone), ".")))
		return
	}
	if !s.o.Forward {
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeRefused)
		_ = w.WriteMsg(m)
		return
	}
	_, tcp := w.RemoteAddr().(*net.TCPAddr)
	_ = w.WriteMsg(s.forward(req, tcp))
}

// answer is the reply for a name in the mesh zone.
func (s *Server) answer(req *dns.Msg, q dns.Question, service string) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	ip, ok := netip.Addr{}, false
	if service != "" && !strings.Contains(service, ".") {
		ip, ok = s.o.Lookup(service)
	}
	if !ok {
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{s.soa()}
		return m
	}
	if q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY {
		m.Answer = []dns.RR{&dns.A{
			Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: uint32(s.o.TTL / time.Second)},
			A:   ip.AsSlice(),
		}}
	} else {
		m.Ns = []dns.RR{s.soa()} // the name exists, with no record of that type
	}
	return m
}

func (s *Server) soa() dns.RR {
	return &dns.SOA{Hdr: dns.RR_Header{Name: s.zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 5},
		Ns: "ns." + s.zone, Mbox: "hostmaster." + s.zone, Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: 5}
}

// forward asks the system's nameservers, in order; SERVFAIL when none
// answers.
func (s *Server) forward(req *dns.Msg, tcp bool) *dns.Msg {
	c := *s.client
	if tcp {
		c.Net = "tcp"
	}
	for _, ns := range s.nameservers() {
		if s.isSelf(ns) {
			continue
		}
		resp, _, err := c.Exchange(req, ns)
		if err == nil && resp != nil {
			if resp.Truncated && !tcp {
				tc := c
				tc.Net = "tcp"
				if r2, _, err := tc.Exchange(req, ns); err == nil {
					return r2
				}
			}
			return resp
		}
		s.log.Debug().Err(err).Str("nameserver", ns).Msg("forward failed")
	}
	m := new(dns.Msg)
	m.SetRcode(req, dns.RcodeServerFailure)
	return m
}

// nameservers are those of resolv.conf, re-read every 30s.
func (s *Server) nameservers() []string {
	s.fwdMu.Lock()
	defer s.fwdMu.Unlock()
	if s.fwd != nil && time.Since(s.fwdRead) < 30*time.Second {
		return s.fwd
	}
	cfg, err := dns.ClientConfigFromFile(s.o.ResolvConf)
	if err != nil {
		s.log.Warn().Err(err).Str("file", s.o.ResolvConf).Msg("cannot read the system resolver's config; not forwarding")
		s.fwd, s.fwdRead = []string{}, time.Now()
		return s.fwd
	}
	out := make([]string, 0, len(cfg.Servers))
	for _, h := range cfg.Servers {
		out = append(out, net.JoinHostPort(h, cfg.Port))
	}
	s.fwd, s.fwdRead = out, time.Now()
	return out
}

// isSelf: forwarding to our own address would loop.
func (s *Server) isSelf(ns string) bool { return ns == s.o.Addr }
