package observability

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/pprof"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewRegistry returns a Prometheus registry with the Go runtime and process
// collectors; each role adds its own metrics to it.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// NewAdminMux returns the admin endpoints every role serves: /metrics from
// reg (OpenMetrics, with trace exemplars, to scrapers that ask for it),
// /debug/pprof/, and /ready (ReadyHandler: 200 only while ready() says so,
// with every condition in the body). Roles add their own handlers (e.g.
// /config_dump) to the returned mux.
func NewAdminMux(reg *prometheus.Registry, ready func() Readiness) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg, EnableOpenMetrics: true}))
	mux.HandleFunc("GET /ready", ReadyHandler(ready))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// WriteJSON writes v as indented JSON in the config's language (Plain:
// snake_case keys, durations as "3s"), for admin endpoints.
func WriteJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	writeIndented(w, Plain(v))
}

func writeIndented(w http.ResponseWriter, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		_, _ = fmt.Fprintf(w, "\n{\"error\": %q}\n", err.Error())
	}
}
