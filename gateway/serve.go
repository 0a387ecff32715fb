package gateway

import (
	"net/http"
	"strconv"
	"time"

	"github.com/meshvm/mesh/observability"
)

// serveHTTPS is the HTTPS listener's handler (inside observability's
// Instrument, which starts the trace and writes the access log): the
// current config's edge path, then the per-route metrics.
func (g *Gateway) serveHTTPS(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	e := &edgeRequest{routeLabel: "none"}
	g.served.Load().edge.Serve(w, r, e)
	g.record(r, e, start)
}

// serveHTTP is the HTTP listener's: ACME HTTP-01 challenges are answered
// before it (certstore); then, when the control plane sent the HTTP
// listener, the routes (whose :scheme http twins redirect to HTTPS unless
// the route allows plain HTTP), else a redirect to HTTPS for everything.
func (g *Gateway) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if s := g.served.Load(); s.plainHTTP {
		start := time.Now()
		e := &edgeRequest{routeLabel: "none"}
		s.edge.Serve(w, r, e)
		g.record(r, e, start)
		return
	}
	host := hostOnly(r.Host)
	target := "https://" + host
	if p := portOf(g.Addr("https")); p != 443 && p != 0 && g.cfg.Gateway.HTTPSAddr != "" && portOf(g.cfg.Gateway.HTTPSAddr) != 443 {
		target += ":" + strconv.Itoa(p)
	}
	observability.RecordFrom(r.Context()).SetReason("https-redirect")
	http.Redirect(w, r, target+r.URL.RequestURI(), http.StatusPermanentRedirect)
}

func (g *Gateway) record(r *http.Request, e *edgeRequest, start time.Time) {
	rec := observability.RecordFrom(r.Context())
	status := rec.Status()
	if status == 0 {
		status = http.StatusOK
	}
	reason := rec.Reason
	if reason == "" {
		reason = "none"
	}
	g.metrics.requests.WithLabelValues(e.routeLabel, strconv.Itoa(status/100)+"xx", reason).Inc()
	g.metrics.duration.WithLabelValues(e.routeLabel).Observe(time.Since(start).Seconds())
	if e.authDetail != "" {
		g.log.Debug().Str("route", e.routeLabel).Str("client_ip", e.clientIP).Str("reason", rec.Reason).
			Str("detail", e.authDetail).Str("request_id", rec.RequestID()).Msg("credentials refused")
	}
}
