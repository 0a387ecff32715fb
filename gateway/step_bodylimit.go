package gateway

import (
	"net/http"

	"github.com/meshvm/mesh/dataplane/chain"
)

// ReasonBodyTooLarge is the x-mesh-reason of a request whose declared body
// is over limits.max_body_bytes.
const ReasonBodyTooLarge = "body-too-large"

// bodyLimit refuses with 413 a request whose Content-Length is over the
// limit, and cuts a body without a length (chunked, HTTP/2 DATA) that
// grows past it: the upstream sees the request fail, never more bytes.
type bodyLimit struct{ max int64 }

func buildBodyLimit(g *Gateway, _ *served) chain.Step {
	if g.cfg.Gateway.Limits.MaxBodyBytes <= 0 {
		return nil
	}
	return &bodyLimit{max: g.cfg.Gateway.Limits.MaxBodyBytes}
}

func (*bodyLimit) Name() string { return "body-limit" }

func (s *bodyLimit) Serve(x *chain.Exchange, next chain.Next) error {
	r := x.R
	if r.ContentLength > s.max {
		x.W.Header().Set("Connection", "close")
		return chain.Refuse(http.StatusRequestEntityTooLarge, ReasonBodyTooLarge, nil)
	}
	if r.ContentLength < 0 && r.Body != nil && r.Body != http.NoBody {
		r.Body = http.MaxBytesReader(x.W, r.Body, s.max)
	}
	return next.Serve(x)
}
