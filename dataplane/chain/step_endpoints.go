package chain

import (
	"net/http"

	"github.com/meshvm/mesh/dataplane/proxy"
)

// endpoints resolves the upstream's endpoint set (the table's, or the live
// resolver's): a service with none routable is 503 no-healthy-endpoint.
type endpoints struct{ u *upstream }

func buildEndpoints(t *UpstreamTarget) (Step, error) { return &endpoints{u: t.u}, nil }

func (*endpoints) Name() string { return "endpoints" }

func (s *endpoints) Serve(x *Exchange, next Next) error {
	set, err := s.u.endpoints(x.R.Context())
	if err != nil {
		return s.u.svc.countTimeout(resolveError(s.u.name, err))
	}
	if len(set.eps) == 0 {
		return Refuse(http.StatusServiceUnavailable, proxy.ReasonNoHealthyEndpoint, nil)
	}
	x.set = set
	return next.Serve(x)
}
