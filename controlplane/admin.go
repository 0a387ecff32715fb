package controlplane

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/pprof"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/controlplane/source"
	"github.com/meshvm/mesh/controlplane/xds"
	"github.com/meshvm/mesh/dashboard"
	"github.com/meshvm/mesh/meshapi"
	"github.com/meshvm/mesh/observability"
)

// adminHandler serves /ready, /metrics, /config_dump, the JSON API mesh
// status and the dashboard read (/api/v1/, package meshapi), the
// dashboard (/ui/) and /debug/pprof/.
func (c *Control) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", observability.ReadyHandler(c.Readiness))
	mux.Handle("GET /metrics", promhttp.HandlerFor(c.reg, promhttp.HandlerOpts{Registry: c.reg}))
	mux.HandleFunc("GET /config_dump", c.configDump)
	mux.HandleFunc("GET "+meshapi.StatusPath, c.serveStatus)
	mux.HandleFunc("GET "+meshapi.TrafficPath, c.serveTraffic)
	mux.HandleFunc("GET "+meshapi.EventsPath, c.serveEvents)
	mux.Handle("GET /ui/", http.StripPrefix("/ui", dashboard.Handler()))
	mux.Handle("GET /ui", http.RedirectHandler("/ui/", http.StatusFound))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// Readiness is what /ready answers: ready once the first model is served
// over xDS (which waits for the first view of Consul). Each source's
// state is reported too; a source failing later does not make the control
// plane unready, since its last good view keeps being served.
func (c *Control) Readiness() observability.Readiness {
	conds := []observability.Condition{c.xdsCondition()}
	for i, s := range c.sources {
		if !active(s) {
			continue
		}
		conds = append(conds, sourceCondition(s, i == 0))
	}
	return observability.NewReadiness(conds...)
}

func (c *Control) xdsCondition() observability.Condition {
	cond := observability.Condition{Name: "xds", Required: true}
	m := c.Model()
	if !c.Ready() || m == nil {
		cond.Detail = "listening; waiting for the first view of " + c.sources[0].Name()
		return cond
	}
	services, _ := m.Counts()
	cond.OK = true
	cond.Detail = fmt.Sprintf("serving %d services to %d nodes", services, len(c.xds.Nodes()))
	return cond
}

// sourceCondition is a source's state: synced (it has read its origin),
// failing (its last good view stays in force), or waiting for its first
// read; required is whether the first model waited for it.
func sourceCondition(s source.Source, required bool) observability.Condition {
	st := s.Status()
	cond := observability.Condition{Name: "source " + s.Name(), OK: !st.LastSuccess.IsZero() && st.LastError == ""}
	switch {
	case cond.OK:
		cond.Detail = "synced, last read " + st.LastSuccess.UTC().Format(time.RFC3339)
	case st.LastSuccess.IsZero() && st.LastError == "":
		cond.Detail = "waiting for its first read"
	case st.LastSuccess.IsZero():
		cond.Detail = "failing before its first read: " + st.LastError
	default:
		cond.Detail = fmt.Sprintf("failing, serving its last good view (read %s): %s",
			st.LastSuccess.UTC().Format(time.RFC3339), st.LastError)
	}
	if required {
		cond.Detail += " (the first model waits for it)"
	}
	return cond
}

// dump is /config_dump without ?node: the model, the sources and the
// connected nodes.
type dump struct {
	Ready   bool                     `json:"ready"`
	Sources map[string]source.Status `json:"sources"`
	Nodes   []xds.NodeInfo           `json:"nodes"`
	Model   *model.Model             `json:"model"`
	// CA is the CA's roots, the xDS server certificate and how many
	// certificates were issued (never a key).
	CA *caDump `json:"ca,omitempty"`
	// Authorization is control.authorization in force, per callee.
	Authorization []config.Authorization `json:"authorization"`
}

// nodeDump is /config_dump?node=ID: one node's resources as protobuf JSON,
// by type (cluster, endpoint, listener, route), sorted by name.
type nodeDump struct {
	xds.NodeInfo
	Resources map[string][]json.RawMessage `json:"resources"`
	// Secrets names the SDS secrets the node is served (not their
	// content).
	Secrets []string `json:"secrets,omitempty"`
}

func (c *Control) configDump(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("node")
	if id == "" {
		d := dump{Ready: c.Ready(), Sources: map[string]source.Status{}, Nodes: c.xds.Nodes(), Model: c.Model(), CA: c.prot.dump(),
			Authorization: c.config().Control.Authorization}
		for _, s := range c.sources {
			if !active(s) {
				continue
			}
			d.Sources[s.Name()] = s.Status()
		}
		// In the config's language: policies' durations as "3s".
		observability.WriteJSON(w, d)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	info, res, ok := c.xds.NodeResources(id)
	if !ok {
		w.WriteHeader(http.StatusNotFound)
		_ = enc.Encode(map[string]string{"error": "no connected node " + id})
		return
	}
	d := nodeDump{NodeInfo: info, Resources: map[string][]json.RawMessage{}, Secrets: c.xds.NodeSecrets(id)}
	for kind, set := range res {
		names := make([]string, 0, len(set))
		for n := range set {
			names = append(names, n)
		}
		sort.Strings(names)
		list := make([]json.RawMessage, 0, len(names))
		for _, n := range names {
			b, err := protojson.Marshal(set[n])
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			list = append(list, b)
		}
		d.Resources[kind] = list
	}
	_ = enc.Encode(d)
}
