package proxy

import (
	"net"
	"net/http"
	"strings"

	"github.com/meshvm/mesh/observability"
)

// Shared, never-modified header values.
var (
	valTrailers = []string{"trailers"}
	valUpgrade  = []string{"Upgrade"}
	valHTTP     = []string{"http"}
	valHTTPS    = []string{"https"}
	valChunked  = []string{"chunked"}
)

// isHopByHop reports whether the canonical header key k is a hop-by-hop
// header by name (RFC 9110 §7.6.1, plus the obsolete Keep-Alive and
// Proxy-Connection). TE is handled separately.
func isHopByHop(k string) bool {
	switch k {
	case "Connection", "Keep-Alive", "Proxy-Connection", "Te", "Transfer-Encoding",
		"Upgrade", "Proxy-Authenticate", "Proxy-Authorization", "Trailer":
		return true
	}
	return false
}

// listedInConnection reports whether k is one of the options named by the
// Connection header values conn.
func listedInConnection(conn []string, k string) bool {
	for _, v := range conn {
		for v != "" {
			var tok string
			tok, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(strings.TrimSpace(tok), k) {
				return true
			}
		}
	}
	return false
}

// hasToken reports whether the comma-separated header values vv contain
// token (case-insensitive).
func hasToken(vv []string, token string) bool {
	return listedInConnection(vv, token)
}

// upgradeType returns the protocol an HTTP/1.1 request or response asks to
// switch to, or "" when it is not an upgrade. An h2c upgrade (deprecated by
// RFC 9113) is not relayed: such a request simply goes on as HTTP/1.1.
func upgradeType(h http.Header) string {
	conn := h["Connection"]
	if len(conn) == 0 || !hasToken(conn, "upgrade") {
		return ""
	}
	if up := h["Upgrade"]; len(up) > 0 && !strings.EqualFold(up[0], "h2c") {
		return up[0]
	}
	return ""
}

// requestHeader builds the header sent upstream: r's end-to-end headers
// (value slices are shared, never modified), with X-Forwarded-For,
// X-Forwarded-Proto and X-Request-Id added. upgrade keeps the Upgrade
// and Connection: Upgrade headers.
func requestHeader(r *http.Request, upgrade string) http.Header {
	in := r.Header
	out := make(http.Header, len(in)+3)
	conn := in["Connection"]
	for k, vv := range in {
		if isHopByHop(k) || (len(conn) > 0 && listedInConnection(conn, k)) {
			continue
		}
		out[k] = vv
	}
	if te := in["Te"]; len(te) > 0 && hasToken(te, "trailers") {
		out["Te"] = valTrailers
	}
	if upgrade != "" {
		out["Connection"] = valUpgrade
		out["Upgrade"] = []string{upgrade}
	}

	// The values the agent adds share one backing array: one allocation
	// instead of one per header.
	xff, hasXFF := "", false
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		hasXFF = true
		if prior := in["X-Forwarded-For"]; len(prior) > 0 {
			xff = strings.Join(prior, ", ") + ", " + ip
		} else {
			xff = ip
		}
	}
	needID := len(in["X-Request-Id"]) == 0
	switch {
	case hasXFF && needID:
		vals := []string{xff, observability.NewRequestID()}
		out["X-Forwarded-For"] = vals[0:1:1]
		out["X-Request-Id"] = vals[1:2:2]
	case hasXFF:
		out["X-Forwarded-For"] = []string{xff}
	case needID:
		out["X-Request-Id"] = []string{observability.NewRequestID()}
	}
	if len(in["X-Forwarded-Proto"]) == 0 {
		if r.TLS != nil {
			out["X-Forwarded-Proto"] = valHTTPS
		} else {
			out["X-Forwarded-Proto"] = valHTTP
		}
	}
	return out
}

// copyResponseHeader copies the end-to-end headers of an upstream response
// into dst, the client's response header.
func copyResponseHeader(dst, src http.Header) {
	conn := src["Connection"]
	for k, vv := range src {
		if isHopByHop(k) || (len(conn) > 0 && listedInConnection(conn, k)) {
			continue
		}
		dst[k] = vv
	}
}
