// Package route decides where a request goes: which service (from the
// Host or :authority, an absolute-form request URI, or the listener it
// came in on) and which of its healthy endpoints, round robin. It then
// hands the request to a proxy.Forwarder.
package route

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/agent/endpoint"
	"github.com/meshvm/mesh/agent/proxy"
)

// ServiceName extracts the mesh service name from a Host or :authority
// value: "orders", "orders.mesh", "orders.service.consul" and
// "orders.service.<dc>.consul", with or without a port, in any case. It
// returns "" when host names no service.
func ServiceName(host string) string {
	host = stripPort(host)
	host = strings.TrimSuffix(host, ".") // fully qualified
	if host == "" {
		return ""
	}
	host = strings.ToLower(host) // does not allocate when already lower case
	if name, ok := strings.CutSuffix(host, ".mesh"); ok {
		return name
	}
	if rest, ok := strings.CutSuffix(host, ".consul"); ok {
		// orders.service or orders.service.<dc>
		if name, ok := strings.CutSuffix(rest, ".service"); ok {
			return name
		}
		if i := strings.LastIndexByte(rest, '.'); i > 0 {
			if name, ok := strings.CutSuffix(rest[:i], ".service"); ok {
				return name
			}
		}
		return ""
	}
	return host
}

// stripPort removes a :port suffix, keeping IPv6 literals intact.
func stripPort(host string) string {
	if strings.HasPrefix(host, "[") {
		if i := strings.IndexByte(host, ']'); i > 0 {
			return host[1:i]
		}
		return host
	}
	if i := strings.LastIndexByte(host, ':'); i >= 0 && strings.IndexByte(host, ':') == i {
		return host[:i]
	}
	return host
}

// picker balances requests over a service's endpoints round robin, with one
// atomic counter per service. The service map is copy-on-write, so the
// request path reads it without locks or allocations.
type picker struct {
	mu       sync.Mutex // serialises writers of counters
	counters atomic.Pointer[map[string]*atomic.Uint64]
}

func (p *picker) counter(service string) *atomic.Uint64 {
	if m := p.counters.Load(); m != nil {
		if c, ok := (*m)[service]; ok {
			return c
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	old := p.counters.Load()
	if old != nil {
		if c, ok := (*old)[service]; ok {
			return c
		}
	}
	next := make(map[string]*atomic.Uint64, 1)
	if old != nil {
		for k, v := range *old {
			next[k] = v
		}
	}
	c := new(atomic.Uint64)
	next[service] = c
	p.counters.Store(&next)
	return c
}

// forwardTo sends r to one of service's healthy endpoints, trying the next
// one once when the first cannot be connected to, and renders the mesh's
// own errors.
func forwardTo(w http.ResponseWriter, r *http.Request, service string, res endpoint.Resolver, fwd *proxy.Forwarder, p *picker, log *zerolog.Logger) {
	eps, err := res.Resolve(r.Context(), service)
	if err != nil {
		var perr *proxy.Error
		switch {
		case errors.Is(err, endpoint.ErrUnknownService):
			perr = &proxy.Error{Status: http.StatusServiceUnavailable, Reason: proxy.ReasonNoRoute, Err: err}
		case errors.Is(err, context.DeadlineExceeded):
			perr = &proxy.Error{Status: http.StatusGatewayTimeout, Reason: proxy.ReasonTimeout, Err: fmt.Errorf("resolve %s: %w", service, err)}
		case errors.Is(err, context.Canceled):
			perr = &proxy.Error{Status: proxy.StatusClientClosedRequest, Reason: proxy.ReasonClientCancelled, Err: err}
		default:
			perr = &proxy.Error{Status: http.StatusServiceUnavailable, Reason: proxy.ReasonNoHealthyEndpoint, Err: fmt.Errorf("resolve %s: %w", service, err)}
		}
		log.Debug().Err(err).Str("service", service).Msg("resolve failed")
		proxy.WriteError(w, r, perr)
		return
	}
	if len(eps) == 0 {
		proxy.WriteError(w, r, &proxy.Error{Status: http.StatusServiceUnavailable, Reason: proxy.ReasonNoHealthyEndpoint})
		return
	}
	n := p.counter(service).Add(1) - 1
	first := eps[n%uint64(len(eps))]
	err = fwd.Forward(w, r, first.Addr)
	if err != nil && proxy.Retryable(err) && len(eps) > 1 {
		log.Debug().Err(err).Str("service", service).Str("endpoint", first.Addr).Msg("connect failed, trying next endpoint")
		err = fwd.Forward(w, r, eps[(n+1)%uint64(len(eps))].Addr)
	}
	if err != nil {
		log.Debug().Err(err).Str("service", service).Msg("forward failed")
		proxy.WriteError(w, r, err)
	}
}

// outbound routes by Host/:authority or absolute-form URI.
type outbound struct {
	res  endpoint.Resolver
	fwd  *proxy.Forwarder
	log  zerolog.Logger
	pick picker
}

// NewOutbound returns the handler of the agent's outbound listener: it
// routes each request to the service named by its Host or :authority
// ("orders", "orders.mesh", "orders.service.consul",
// "orders.service.<dc>.consul", any port, any case) or by its
// absolute-form URI (clients using HTTP_PROXY), to that service's healthy
// endpoints in turn. An unknown service gets 503 no-route, a service
// without healthy endpoints 503 no-healthy-endpoint.
func NewOutbound(res endpoint.Resolver, fwd *proxy.Forwarder, log zerolog.Logger) http.Handler {
	return &outbound{res: res, fwd: fwd, log: log.With().Str("component", "route").Str("listener", "outbound").Logger()}
}

func (o *outbound) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	host := r.Host // absolute-form: net/http takes it from the URI
	if r.URL.Host != "" {
		host = r.URL.Host
	}
	service := ServiceName(host)
	if service == "" {
		proxy.WriteError(w, r, &proxy.Error{Status: http.StatusServiceUnavailable, Reason: proxy.ReasonNoRoute,
			Err: fmt.Errorf("no service in host %q", host)})
		return
	}
	forwardTo(w, r, service, o.res, o.fwd, &o.pick, &o.log)
}

// upstream sends everything to one service.
type upstream struct {
	service string
	res     endpoint.Resolver
	fwd     *proxy.Forwarder
	log     zerolog.Logger
	pick    picker
}

// NewUpstream returns the handler of a per-upstream listener: every
// request (HTTP/1.1, h2c, gRPC alike) goes to service, whatever its Host.
func NewUpstream(service string, res endpoint.Resolver, fwd *proxy.Forwarder, log zerolog.Logger) http.Handler {
	return &upstream{service: service, res: res, fwd: fwd,
		log: log.With().Str("component", "route").Str("listener", "upstream").Str("service", service).Logger()}
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	forwardTo(w, r, u.service, u.res, u.fwd, &u.pick, &u.log)
}

// inbound sends everything to the local app.
type inbound struct {
	appAddr string
	fwd     *proxy.Forwarder
	log     zerolog.Logger
}

// NewInbound returns the handler of the agent's inbound listener: it
// forwards everything to the app at appAddr (host:port).
func NewInbound(appAddr string, fwd *proxy.Forwarder, log zerolog.Logger) http.Handler {
	return &inbound{appAddr: appAddr, fwd: fwd, log: log.With().Str("component", "route").Str("listener", "inbound").Logger()}
}

func (in *inbound) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := in.fwd.Forward(w, r, in.appAddr); err != nil {
		in.log.Debug().Err(err).Str("app", in.appAddr).Msg("forward to app failed")
		proxy.WriteError(w, r, err)
	}
}
