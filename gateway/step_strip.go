package gateway

import (
	"net"
	"net/http"
	"strings"

	"github.com/meshvm/mesh/dataplane/chain"
	"github.com/meshvm/mesh/wire"
)

// strip removes what a client must not be able to say about itself: the
// headers the edge sets from verified credentials (claims, API-key
// subjects, the mesh peer identity), and X-Forwarded-* unless the peer is
// a trusted proxy. It finds the client IP (X-Forwarded-For read through
// trusted proxies only), and refuses with 421 a request whose Host asks
// for a client certificate that its TLS handshake (another SNI) did not.
type strip struct {
	headers []string
	trusted trustedProxies
	tls     *edgeTLS
}

func buildStrip(g *Gateway, s *served) chain.Step {
	hs := []string{wire.PeerIdentityHeader}
	if s.auth != nil {
		hs = append(hs, s.auth.stripped...)
	}
	for i := range hs {
		hs[i] = http.CanonicalHeaderKey(hs[i])
	}
	return &strip{headers: hs, trusted: g.trusted, tls: g.tlsConf}
}

func (*strip) Name() string { return "strip-headers" }

// ReasonMisdirected is the x-mesh-reason of a request for a host its TLS
// handshake was not for, where that matters (client certificates).
const ReasonMisdirected = "misdirected-request"

func (s *strip) Serve(x *chain.Exchange, next chain.Next) error {
	r := x.R
	h := r.Header
	for _, k := range s.headers {
		delete(h, k)
	}
	e := edgeOf(x)
	e.clientIP = s.trusted.clientIP(r)
	if !s.isTrusted(r) {
		delete(h, "X-Forwarded-For")
		delete(h, "X-Forwarded-Proto")
		delete(h, "X-Forwarded-Host")
		delete(h, "Forwarded")
		delete(h, "X-Real-Ip")
	}
	if r.TLS != nil && s.tls != nil && len(s.tls.clientCAHosts) > 0 {
		host := strings.ToLower(hostOnly(r.Host))
		if s.tls.needsClientCert(host) && !strings.EqualFold(r.TLS.ServerName, host) {
			return chain.Refuse(http.StatusMisdirectedRequest, ReasonMisdirected, nil)
		}
	}
	return next.Serve(x)
}

func (s *strip) isTrusted(r *http.Request) bool {
	if len(s.trusted) == 0 {
		return false
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	a, err := parseAddr(host)
	return err == nil && s.trusted.trusted(a)
}

func hostOnly(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		return host
	}
	return h
}
