package controlplane

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"time"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/meshapi"
	"github.com/meshvm/mesh/observability"
)

// status is /api/v1/status: every service of the model and every
// connected proxy with its sync state. ?service=NAME keeps that service
// only, with its endpoints and policy (the dashboard's service page).
func (c *Control) status(only string) meshapi.Status {
	st := meshapi.Status{GeneratedAt: time.Now().UTC(), Ready: c.Ready(), Proxies: c.xds.Proxies(), Services: []meshapi.Service{}}
	if m := c.Model(); m != nil {
		for _, s := range m.Services {
			if only != "" && s.Name != only {
				continue
			}
			st.Services = append(st.Services, serviceStatus(s, only != ""))
		}
	}
	st.InSync = st.Ready
	for _, p := range st.Proxies {
		if p.State != meshapi.InSync {
			st.InSync = false
		}
	}
	return st
}

func serviceStatus(s model.Service, detail bool) meshapi.Service {
	out := meshapi.Service{Name: s.Name, Instances: len(s.Endpoints), Localities: []string{}}
	locs := map[string]bool{}
	protos := map[string]bool{}
	for _, e := range s.Endpoints {
		switch e.Health {
		case model.Healthy:
			out.Healthy++
		case model.Draining:
			out.Draining++
		}
		loc := meshapi.LocalityString(e.Locality.Region, e.Locality.Zone)
		if loc != "" {
			locs[loc] = true
		}
		protos[e.Metadata.Meta[config.MetaAppProtocol]] = true
		if detail {
			out.Endpoints = append(out.Endpoints, meshapi.Endpoint{ID: e.ID, Node: e.Node,
				Address: fmt.Sprintf("%s:%d", e.Address, e.Port), Health: string(e.Health), Locality: loc})
		}
	}
	for l := range locs {
		out.Localities = append(out.Localities, l)
	}
	sort.Strings(out.Localities)
	if len(protos) == 1 {
		for p := range protos {
			out.Protocol = p
		}
	}
	if out.Protocol == "" {
		out.Protocol = config.AppProtocolAuto
	}
	if detail {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		if err := enc.Encode(observability.Plain(s.Policy)); err == nil {
			out.Policy = json.RawMessage(bytes.TrimSpace(buf.Bytes()))
		}
	}
	return out
}

func (c *Control) overview() meshapi.Overview {
	return meshapi.Overview{Status: c.status(""), Traffic: c.load.Traffic()}
}

func (c *Control) serveStatus(w http.ResponseWriter, r *http.Request) {
	observability.WriteJSON(w, c.status(r.URL.Query().Get("service")))
}

func (c *Control) serveTraffic(w http.ResponseWriter, _ *http.Request) {
	observability.WriteJSON(w, c.load.Traffic())
}

// serveEvents streams the overview as server-sent events: one at once,
// then one whenever it changed, checked every second, and a comment line
// every 15 s so idle proxies between the browser and us keep the stream.
func (c *Control) serveEvents(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	var last []byte
	lastWrite := time.Time{}
	var stop <-chan struct{}
	if ctx := c.events.Load(); ctx != nil {
		stop = (*ctx).Done()
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		o := c.overview()
		// Compare without the timestamps, which change every time.
		o.Status.GeneratedAt, o.Traffic.GeneratedAt = time.Time{}, time.Time{}
		key, err := json.Marshal(o)
		if err != nil {
			return
		}
		switch {
		case !bytes.Equal(key, last):
			now := time.Now().UTC()
			o.Status.GeneratedAt, o.Traffic.GeneratedAt = now, now
			b, _ := json.Marshal(o)
			if _, err := fmt.Fprintf(w, "event: overview\ndata: %s\n\n", b); err != nil {
				return
			}
			fl.Flush()
			last, lastWrite = key, time.Now()
		case time.Since(lastWrite) > 15*time.Second:
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return
			}
			fl.Flush()
			lastWrite = time.Now()
		}
		select {
		case <-r.Context().Done():
			return
		case <-stop:
			return
		case <-t.C:
		}
	}
}
