package gateway

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// trustedProxies are the operator's load balancers: their X-Forwarded-For
// is believed, nobody else's.
type trustedProxies []netip.Prefix

func parseTrusted(cidrs []string) (trustedProxies, error) {
	out := make(trustedProxies, 0, len(cidrs))
	for _, c := range cidrs {
		if !strings.Contains(c, "/") {
			a, err := netip.ParseAddr(c)
			if err != nil {
				return nil, fmt.Errorf("trusted proxy %q: %w", c, err)
			}
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return nil, fmt.Errorf("trusted proxy %q: %w", c, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

func (t trustedProxies) trusted(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range t {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// clientIP is the address of the client that sent r: the peer, unless
// the peer is a trusted proxy, in which case X-Forwarded-For is read from
// the right and the first address that is not a trusted proxy is the
// client (the left-most if all are). The header a client wrote itself is
// never believed past the first untrusted hop.
func (t trustedProxies) clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	peer, err := netip.ParseAddr(host)
	if err != nil || len(t) == 0 || !t.trusted(peer) {
		return host
	}
	xff := r.Header.Values("X-Forwarded-For")
	client := host
	for i := len(xff) - 1; i >= 0; i-- {
		parts := strings.Split(xff[i], ",")
		for j := len(parts) - 1; j >= 0; j-- {
			s := strings.TrimSpace(parts[j])
			a, err := netip.ParseAddr(s)
			if err != nil {
				return client // garbage: stop at the last hop we could read
			}
			client = a.Unmap().String()
			if !t.trusted(a) {
				return client
			}
		}
	}
	return client
}

func parseAddr(s string) (netip.Addr, error) { return netip.ParseAddr(s) }
