package agent

import (
	"context"
	"fmt"
	"net"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/dataplane/tcpproxy"
	"github.com/meshvm/mesh/observability"
)

// tcpMetrics returns the TCP relays' metrics, registered once.
func (a *Agent) tcpMetrics() (*tcpproxy.Metrics, error) {
	a.tcpOnce.Do(func() { a.tcpM, a.tcpErr = tcpproxy.NewMetrics(a.registry) })
	return a.tcpM, a.tcpErr
}

// upstreamRelay is the TCP relay of a `protocol: tcp` upstream listener:
// each connection goes to one endpoint of service (its agent's inbound
// listener), picked under the service's policy from the current table
// (xDS) or Consul.
func (a *Agent) upstreamRelay(service string) (*tcpproxy.Relay, error) {
	m, err := a.tcpMetrics()
	if err != nil {
		return nil, err
	}
	c := a.config().Agent
	r, err := tcpproxy.New(tcpproxy.Options{
		Direction: observability.Outbound, LocalService: c.Service, Service: service,
		Endpoints: func(ctx context.Context) ([]endpoint.Endpoint, config.Policy, error) {
			t := a.handlers.Current().Table()
			pol := t.Policy(service)
			var eps []endpoint.Endpoint
			var err error
			if t.Static {
				eps, err = t.Resolve(ctx, service)
			} else {
				eps, err = a.resolver.Resolve(ctx, service)
			}
			return eps, pol, err
		},
		IdleTimeout: c.TCPIdleTimeout,
		Log:         a.base,
		Observe:     a.obs.LogTCP,
		Metrics:     m,
		WrapDial: func(d func(context.Context, string, string) (net.Conn, error)) func(context.Context, string, string) (net.Conn, error) {
			return a.dialer.Wrap(d)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", service, err)
	}
	return r, nil
}

// inboundRelay is the inbound listener of a tcp app: every connection goes
// to the app at app (host:port).
func (a *Agent) inboundRelay(app string) (*tcpproxy.Relay, error) {
	m, err := a.tcpMetrics()
	if err != nil {
		return nil, err
	}
	c := a.config().Agent
	eps := []endpoint.Endpoint{{Addr: app, Protocol: endpoint.TCP}}
	pol := config.DefaultPolicy()
	pol.OutlierDetection = config.OutlierDetection{} // one app: nothing to eject it for
	r, err := tcpproxy.New(tcpproxy.Options{
		Direction: observability.Inbound, LocalService: c.Service, Service: c.Service,
		Endpoints: func(context.Context) ([]endpoint.Endpoint, config.Policy, error) {
			return eps, pol, nil
		},
		IdleTimeout: c.TCPIdleTimeout,
		Log:         a.base,
		Observe:     a.obs.LogTCP,
		Metrics:     m,
		Limits: func() tcpproxy.Limits {
			in := a.handlers.Current().Table().Inbound
			return tcpproxy.Limits{RateLimit: in.RateLimit, MaxConns: in.MaxRequests}
		},
		Authorize: a.authorizeConn,
	})
	if err != nil {
		return nil, fmt.Errorf("inbound: %w", err)
	}
	return r, nil
}
