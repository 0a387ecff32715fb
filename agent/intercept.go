package agent

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/dataplane/intercept"
	"github.com/meshvm/mesh/dataplane/meshdns"
	"github.com/meshvm/mesh/dataplane/proxy"
	"github.com/meshvm/mesh/observability"
	"github.com/meshvm/mesh/virtualip"
	"github.com/meshvm/mesh/wire"
)

// interception is the agent's side of transparent interception: which
// destinations are mesh services (an index rebuilt from the table or
// Consul), and the virtual IPs the DNS responder answers.
type interception struct {
	vips        virtualip.Range
	index       atomic.Pointer[destIndex]
	prefetching sync.Map // service -> true while its first lookup runs
}

// destIndex maps original destinations to services.
type destIndex struct {
	byVIP   map[netip.Addr]string
	byAddr  map[netip.AddrPort]string
	vipOf   map[string]netip.Addr
	tcp     map[string]bool // services whose instances speak raw TCP
	builtAt time.Time
}

// bindInterception opens the intercept listeners when
// agent.interception.enabled: outbound on loopback (IPv4, and IPv6 where
// the VM has it: REDIRECT in output rewrites to 127.0.0.1 or ::1), inbound
// on every address (in prerouting it rewrites to the receiving
// interface's address).
func (a *Agent) bindInterception() ([]listener, error) {
	c := a.config().Agent
	ic := c.Interception
	if !ic.Enabled {
		return nil, nil
	}
	r, err := virtualip.ParseRange(ic.VirtualIPCIDR)
	if err != nil {
		return nil, err
	}
	a.icept = &interception{vips: r}
	a.icept.index.Store(&destIndex{})
	m, err := intercept.NewMetrics(a.registry)
	if err != nil {
		return nil, err
	}
	out := intercept.New(intercept.Options{
		Name: "intercept outbound", Route: a.routeOutbound, NewBackend: a.outboundBackend,
		Block: ic.Unknown == config.InterceptBlock, DetectTimeout: ic.DetectTimeout, Metrics: m, Log: a.base,
	})
	in := intercept.New(intercept.Options{
		Name: "intercept inbound", Route: a.routeInbound, NewBackend: a.inboundBackend,
		DetectTimeout: ic.DetectTimeout, Metrics: m, Log: a.base,
	})
	var lns []listener
	specs := []struct {
		name, addr string
		srv        *intercept.Server
		optional   bool
	}{
		{"intercept outbound", net.JoinHostPort("127.0.0.1", strconv.Itoa(ic.OutboundPort)), out, false},
		{"intercept outbound ipv6", net.JoinHostPort("::1", strconv.Itoa(ic.OutboundPort)), out, true},
		// Every address, IPv4 and IPv6 (one dual-stack socket).
		{"intercept inbound", ":" + strconv.Itoa(ic.InboundPort), in, false},
	}
	for _, s := range specs {
		ln, err := net.Listen("tcp", s.addr)
		if err != nil {
			if s.optional {
				continue
			}
			closeAll(lns)
			return nil, &listenError{name: s.name, addr: s.addr, err: err}
		}
		a.addrs.Store(s.name, ln.Addr().String())
		lns = append(lns, listener{name: s.name, ln: ln, srv: s.srv})
	}
	return lns, nil
}

type listenError struct {
	name, addr string
	err        error
}

func (e *listenError) Error() string {
	return "listen " + e.name + " on " + e.addr + ": " + e.err.Error()
}
func (e *listenError) Unwrap() error { return e.err }

// runInterception starts what interception needs besides its listeners:
// the destination index's refresh and the DNS responder.
func (a *Agent) runInterception(ctx context.Context, goRun func(string, func() error)) {
	if a.icept == nil {
		return
	}
	ic := a.config().Agent.Interception
	goRun("intercept index", func() error {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			a.prefetch(ctx)
			a.rebuildIndex()
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
		}
	})
	if ic.DNS.Enabled {
		d := meshdns.New(meshdns.Options{
			Addr: ic.DNS.Addr, Domain: ic.DNS.Domain, Forward: ic.DNS.Forward, ResolvConf: ic.DNS.ResolvConf,
			TTL: ic.DNS.TTL, Log: a.base, Lookup: a.serviceVIP,
		})
		goRun("dns", func() error { return d.Run(ctx) })
	}
}

// prefetch makes Consul-direct discovery watch every catalog service, so
// that an address the app dials is known before its first connection.
func (a *Agent) prefetch(ctx context.Context) {
	if a.handlers.Current().Table().Static {
		return
	}
	known := a.resolver.Snapshot()
	for _, name := range a.resolver.Services() {
		if _, ok := known[name]; ok || name == "consul" {
			continue
		}
		if _, busy := a.icept.prefetching.LoadOrStore(name, true); busy {
			continue // one lookup per service at a time
		}
		go func() {
			defer a.icept.prefetching.Delete(name)
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			_, _ = a.resolver.Resolve(rctx, name)
		}()
	}
}

// rebuildIndex recomputes the destination index from what the agent
// knows now: the xDS table's services (with the control plane's virtual
// IPs) or Consul's catalog and the endpoints answered so far.
func (a *Agent) rebuildIndex() *destIndex {
	idx := &destIndex{byVIP: map[netip.Addr]string{}, byAddr: map[netip.AddrPort]string{},
		vipOf: map[string]netip.Addr{}, tcp: map[string]bool{}, builtAt: time.Now()}
	t := a.handlers.Current().Table()
	eps := map[string][]endpoint.Endpoint{}
	var names []string
	if t.Static {
		for name, s := range t.Services {
			eps[name] = s.Endpoints
			names = append(names, name)
			if s.VirtualIP.IsValid() {
				idx.vipOf[name] = s.VirtualIP
			}
		}
	} else {
		eps = a.resolver.Snapshot()
		names = a.resolver.Services()
	}
	for name, ip := range a.icept.vips.Allocate(names) {
		if _, set := idx.vipOf[name]; !set {
			idx.vipOf[name] = ip
		}
	}
	for name, ip := range idx.vipOf {
		idx.byVIP[ip] = name
	}
	for name, list := range eps {
		for _, ep := range list {
			ap, err := netip.ParseAddrPort(ep.Addr)
			if err != nil {
				continue
			}
			idx.byAddr[ap] = name
			if p, err := strconv.Atoi(ep.Meta[wire.MetaAppPort]); err == nil && p > 0 && p < 65536 {
				idx.byAddr[netip.AddrPortFrom(ap.Addr(), uint16(p))] = name
			}
			if ep.Protocol == endpoint.TCP {
				idx.tcp[name] = true
			}
		}
	}
	a.icept.index.Store(idx)
	return idx
}

// serviceVIP answers the DNS responder.
func (a *Agent) serviceVIP(service string) (netip.Addr, bool) {
	ip, ok := a.icept.index.Load().vipOf[service]
	if !ok {
		ip, ok = a.rebuildIndex().vipOf[service]
	}
	return ip, ok
}

// routeOutbound maps an app's original destination to a service: a
// virtual IP, an instance's address (its agent's inbound port or its app
// port), or a TLS server name <service>.<domain>.
func (a *Agent) routeOutbound(dst netip.AddrPort, sni string) intercept.Route {
	idx := a.icept.index.Load()
	find := func(idx *destIndex) (string, bool) {
		if sni != "" {
			domain := "." + a.config().Agent.Interception.DNS.Domain
			name := strings.TrimSuffix(strings.ToLower(sni), domain)
			_, ok := idx.vipOf[name]
			return name, ok
		}
		if name, ok := idx.byVIP[dst.Addr()]; ok {
			return name, true
		}
		name, ok := idx.byAddr[dst]
		return name, ok
	}
	name, ok := find(idx)
	if !ok && time.Since(idx.builtAt) > 100*time.Millisecond {
		idx = a.rebuildIndex()
		name, ok = find(idx)
	}
	if !ok {
		return intercept.Route{}
	}
	return intercept.Route{Service: name, TCP: idx.tcp[name]}
}

// routeInbound: a connection to the app's port goes through the inbound
// policies; any other port is not the mesh's and passes.
func (a *Agent) routeInbound(dst netip.AddrPort, _ string) intercept.Route {
	c := a.config().Agent
	if int(dst.Port()) != c.AppPort {
		return intercept.Route{}
	}
	return intercept.Route{Service: c.Service, TCP: c.AppProtocol == config.AppProtocolTCP}
}

func (a *Agent) outboundBackend(service string, kind intercept.Kind) (intercept.Backend, error) {
	if kind == intercept.KindTCP {
		return a.upstreamRelay(service)
	}
	svc := a.config().Agent.Service
	return proxy.NewServer(a.obs.Instrument(observability.Outbound, svc, a.handlers.Upstream(service)), a.base), nil
}

func (a *Agent) inboundBackend(_ string, kind intercept.Kind) (intercept.Backend, error) {
	c := a.config().Agent
	app := appAddr(c)
	if kind == intercept.KindTCP {
		return a.inboundRelay(app)
	}
	return proxy.NewServer(a.obs.Instrument(observability.Inbound, c.Service, a.handlers.Inbound(app)), a.base), nil
}

// interceptionDump is what /config_dump shows of interception: every
// service's virtual IP and the instance addresses that map to services.
func (a *Agent) interceptionDump() map[string]any {
	idx := a.icept.index.Load()
	vips := make(map[string]string, len(idx.vipOf))
	for name, ip := range idx.vipOf {
		vips[name] = ip.String()
	}
	addrs := make(map[string]string, len(idx.byAddr))
	for ap, name := range idx.byAddr {
		addrs[ap.String()] = name
	}
	return map[string]any{"virtual_ips": vips, "addresses": addrs, "built_at": idx.builtAt}
}
