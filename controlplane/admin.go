package controlplane

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"sort"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/controlplane/source"
	"github.com/meshvm/mesh/controlplane/xds"
)

// adminHandler serves /ready, /metrics, /config_dump and /debug/pprof/.
func (c *Control) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		if !c.Ready() {
			http.Error(w, "waiting for the first view of every required source", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(c.reg, promhttp.HandlerOpts{Registry: c.reg}))
	mux.HandleFunc("GET /config_dump", c.configDump)
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// dump is /config_dump without ?node: the model, the sources and the
// connected nodes.
type dump struct {
	Ready   bool                     `json:"ready"`
	Sources map[string]source.Status `json:"sources"`
	Nodes   []xds.NodeInfo           `json:"nodes"`
	Model   *model.Model             `json:"model"`
}

// nodeDump is /config_dump?node=ID: one node's resources as protobuf JSON,
// by type (cluster, endpoint, listener, route), sorted by name.
type nodeDump struct {
	xds.NodeInfo
	Resources map[string][]json.RawMessage `json:"resources"`
}

func (c *Control) configDump(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	id := r.URL.Query().Get("node")
	if id == "" {
		d := dump{Ready: c.Ready(), Sources: map[string]source.Status{}, Nodes: c.xds.Nodes(), Model: c.Model()}
		for _, s := range c.sources {
			if !active(s) {
				continue
			}
			d.Sources[s.Name()] = s.Status()
		}
		_ = enc.Encode(d)
		return
	}
	info, res, ok := c.xds.NodeResources(id)
	if !ok {
		w.WriteHeader(http.StatusNotFound)
		_ = enc.Encode(map[string]string{"error": "no connected node " + id})
		return
	}
	d := nodeDump{NodeInfo: info, Resources: map[string][]json.RawMessage{}}
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
