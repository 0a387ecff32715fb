package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	neturl "net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/meshvm/mesh/observability"
	"github.com/meshvm/mesh/registration"
)

// Readiness is what /ready answers: the agent is ready while its listeners
// serve (not draining) and Consul holds its registration. The control
// plane's config and the app's reachability are reported but do not make
// it unready (docs/decisions.md, "What /ready waits for").
func (a *Agent) Readiness() observability.Readiness {
	conds := []observability.Condition{a.listenersCondition(), a.registrationCondition(),
		a.controlPlaneCondition(), a.app.condition()}
	if a.ident != nil {
		conds = append(conds, a.ident.Condition())
	}
	return observability.NewReadiness(conds...)
}

// Ready reports whether every listener is up and the app is registered.
func (a *Agent) Ready() bool { return a.Readiness().Ready }

func (a *Agent) listenersCondition() observability.Condition {
	c := observability.Condition{Name: "listeners", Required: true}
	switch {
	case a.draining.Load():
		c.Detail = "draining: shutting down"
	case !a.listening.Load():
		c.Detail = "not serving yet"
	default:
		c.OK = true
		var parts []string
		for _, name := range a.listenerNames() {
			parts = append(parts, name+" "+a.Addr(name))
		}
		c.Detail = strings.Join(parts, ", ")
	}
	return c
}

// listenerNames is every listener in bind order.
func (a *Agent) listenerNames() []string {
	names := []string{"inbound", "outbound"}
	for _, u := range a.config().Agent.Upstreams {
		names = append(names, "upstream "+u.Service)
	}
	return append(names, "admin")
}

func (a *Agent) registrationCondition() observability.Condition {
	c := observability.Condition{Name: "consul_registration", Required: true}
	// Run sets a.reg and a.xds before it stores listening: read them only
	// after it.
	if !a.listening.Load() || a.reg == nil {
		c.Detail = "not started"
		return c
	}
	c.OK = a.reg.registered()
	err := a.reg.err()
	addr := a.config().Consul.Addr
	switch {
	case c.OK && err == nil:
		c.Detail = "registered as " + a.reg.id() + " in consul at " + addr
	case c.OK:
		c.Detail = fmt.Sprintf("registered as %s; consul at %s unreachable since: %v", a.reg.id(), addr, err)
	case a.draining.Load():
		c.Detail = "deregistered (shutting down)"
	case err != nil:
		c.Detail = fmt.Sprintf("not registered: %v", err)
	case a.awaitingCert.Load():
		c.Detail = "not registered: mtls strict, waiting for a certificate from mesh control"
	default:
		c.Detail = "registering in consul at " + addr
	}
	return c
}

func (a *Agent) controlPlaneCondition() observability.Condition {
	c := observability.Condition{Name: "control_plane"}
	if len(a.config().Agent.ControlPlane) == 0 {
		c.OK = true
		c.Detail = "none configured: routing by consul-direct discovery"
		return c
	}
	t := a.handlers.Current().Table()
	if !a.listening.Load() || a.xds == nil {
		c.Detail = "not started"
		return c
	}
	st := a.xds.State()
	switch {
	case t.Static && st.Connected:
		c.OK = true
		c.Detail = fmt.Sprintf("config %s from %s", t.Version, st.Server)
	case t.Static:
		c.OK = true
		c.Detail = fmt.Sprintf("not connected; routing by the last good config %s", t.Version)
	case st.Connected:
		c.Detail = fmt.Sprintf("connected to %s, no config yet; routing by consul-direct discovery", st.Server)
	default:
		c.Detail = "not connected, no config yet; routing by consul-direct discovery"
	}
	if st.LastNack != "" {
		c.Detail += "; last update rejected: " + st.LastNack
	}
	return c
}

// appCheck probes the app the way Consul's check does (HTTP GET of its
// health path, else a TCP connect), every health interval, for /ready and
// the log: a change of state is logged once.
type appCheck struct {
	a      *Agent
	client *http.Client
	state  atomic.Pointer[appState]
}

type appState struct {
	ok     bool
	detail string
}

func newAppCheck(a *Agent) *appCheck {
	return &appCheck{a: a, client: &http.Client{
		Transport:     &http.Transport{DisableKeepAlives: true, Proxy: nil},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

func (c *appCheck) condition() observability.Condition {
	cond := observability.Condition{Name: "app", Detail: "not checked yet"}
	if s := c.state.Load(); s != nil {
		cond.OK, cond.Detail = s.ok, s.detail
	}
	return cond
}

// run probes until ctx is done.
func (c *appCheck) run(ctx context.Context) error {
	for {
		interval := c.a.config().Agent.HealthInterval
		if interval <= 0 {
			interval = registration.DefaultHealthInterval
		}
		c.check(ctx, min(interval, 5*time.Second))
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// check probes once and logs when the state changed.
func (c *appCheck) check(ctx context.Context, timeout time.Duration) {
	ac := c.a.config().Agent
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	addr := net.JoinHostPort(ac.AppAddress, strconv.Itoa(ac.AppPort))
	next := &appState{}
	if ac.AppHealth != "" {
		url := "http://" + addr + ac.AppHealth
		next.detail, next.ok = c.probeHTTP(ctx, url)
	} else {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			next.detail = "TCP " + addr + ": " + err.Error()
		} else {
			conn.Close()
			next.ok, next.detail = true, "TCP "+addr+": connected"
		}
	}
	if parent.Err() != nil {
		return // shutting down: not a result
	}
	prev := c.state.Swap(next)
	log := c.a.log
	switch {
	case next.ok && prev == nil:
		log.Info().Str("check", next.detail).Msg("app reachable")
	case next.ok && !prev.ok:
		log.Info().Str("check", next.detail).Msg("app reachable again")
	case !next.ok && (prev == nil || prev.ok):
		log.Warn().Str("check", next.detail).
			Msg("app not reachable; /ready reports it but stays ready: consul's health check keeps callers away")
	}
}

func (c *appCheck) probeHTTP(ctx context.Context, url string) (string, bool) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "GET " + url + ": " + err.Error(), false
	}
	req.Header.Set("User-Agent", "mesh-agent app check")
	resp, err := c.client.Do(req)
	if err != nil {
		if ue, ok := errors.AsType[*neturl.Error](err); ok {
			err = ue.Err
		}
		return "GET " + url + ": " + err.Error(), false
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	// As Consul's HTTP check: 2xx passes, anything else does not.
	return "GET " + url + ": " + resp.Status, resp.StatusCode >= 200 && resp.StatusCode < 300
}
