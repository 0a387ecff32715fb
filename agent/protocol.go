package agent

import (
	"context"
	"net"
	"strconv"
	"time"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/dataplane/proxy"
)

// probeInterval is how often an app_protocol auto agent retries the probe
// while its app does not answer.
const probeInterval = time.Second

// appAddr is where the app listens.
func appAddr(c config.Agent) string {
	return net.JoinHostPort(c.AppAddress, strconv.Itoa(c.AppPort))
}

// registeredProtocol is the app protocol the agent registers: the
// configured one, or what the probe found for auto ("auto" until then).
func (a *Agent) registeredProtocol(c config.Agent) string {
	if c.AppProtocol != "" && c.AppProtocol != config.AppProtocolAuto {
		return c.AppProtocol
	}
	if p := endpoint.Protocol(a.probed.Load()); p != endpoint.Unknown {
		return p.String()
	}
	return config.AppProtocolAuto
}

// setupAppProtocol tells the forwarder what the app speaks when the
// config says so.
func (a *Agent) setupAppProtocol() {
	c := a.config().Agent
	if p := endpoint.ParseProtocol(c.AppProtocol); p != endpoint.Unknown {
		a.forwarder.SetAppProtocol(appAddr(c), p)
	}
}

// probeApp resolves app_protocol auto: it probes the app (h2c prior
// knowledge, else HTTP/1.1) until it answers, then has the forwarder send
// what the app speaks and re-registers with the result, so that callers'
// agents convert before the hop. Until then requests go to the app in
// the protocol they came in, as they would to an unknown app.
func (a *Agent) probeApp(ctx context.Context) error {
	c := a.config().Agent
	if c.AppProtocol != "" && c.AppProtocol != config.AppProtocolAuto {
		return nil
	}
	addr := appAddr(c)
	for {
		p, err := proxy.ProbeProtocol(ctx, addr)
		if err == nil {
			a.probed.Store(uint32(p))
			a.forwarder.SetAppProtocol(addr, p)
			a.log.Info().Str("app", addr).Str("app_protocol", p.String()).Msg("app protocol probed")
			if a.reg != nil {
				a.reg.update(a.registrationSpec(a.config()))
			}
			return nil
		}
		a.log.Debug().Err(err).Msg("app protocol probe: the app does not answer yet")
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(probeInterval):
		}
	}
}
