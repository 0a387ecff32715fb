package gateway

import (
	"net/http"
	"strings"

	"github.com/meshvm/mesh/buildinfo"
	"github.com/meshvm/mesh/observability"
)

func (g *Gateway) adminHandler() http.Handler {
	mux := observability.NewAdminMux(g.registry, g.Readiness)
	mux.HandleFunc("GET /config_dump", func(w http.ResponseWriter, _ *http.Request) {
		observability.WriteJSON(w, g.configDump())
	})
	return mux
}

// Readiness: ready while the listeners serve (not draining) and Consul
// holds the registration. Whether the control plane answered is reported
// but does not make the gateway unready: a gateway started from its
// cached config serves it.
func (g *Gateway) Readiness() observability.Readiness {
	ls := observability.Condition{Name: "listeners", Required: true}
	switch {
	case g.draining.Load():
		ls.Detail = "draining: shutting down"
	case !g.listening.Load():
		ls.Detail = "not serving yet"
	default:
		ls.OK = true
		var parts []string
		for _, n := range []string{"https", "http", "admin"} {
			if a := g.Addr(n); a != "" {
				parts = append(parts, n+" "+a)
			}
		}
		ls.Detail = strings.Join(parts, ", ")
	}
	reg := observability.Condition{Name: "consul_registration", Required: true}
	if g.listening.Load() && g.reg != nil {
		reg.OK = g.reg.Registered()
		reg.Detail = "registering as " + g.reg.ID()
		if reg.OK {
			reg.Detail = "registered as " + g.reg.ID()
		} else if err := g.reg.Err(); err != nil {
			reg.Detail = "not registered: " + err.Error()
		}
	} else {
		reg.Detail = "not started"
	}
	cp := observability.Condition{Name: "control_plane", OK: true, Detail: "none configured"}
	if g.xds != nil {
		st := g.xds.State()
		cp.OK = st.Connected || g.served.Load().version != "none"
		cp.Detail = "config " + g.served.Load().version
		if st.Connected {
			cp.Detail += " from " + st.Server
		} else {
			cp.Detail += "; not connected"
		}
	}
	conds := []observability.Condition{ls, reg, cp}
	if g.ident != nil {
		conds = append(conds, g.ident.Condition())
	}
	return observability.NewReadiness(conds...)
}

// configDump is what the gateway serves now: version, listeners, routes,
// services and their endpoints, the edge steps, certificate expiries.
func (g *Gateway) configDump() map[string]any {
	s := g.served.Load()
	listeners := map[string]string{}
	g.addrs.Range(func(k, v any) bool { listeners[k.(string)] = v.(string); return true })
	var routes []map[string]any
	if s.routes != nil {
		for _, vh := range s.routes.VirtualHosts() {
			for _, rt := range vh.Routes {
				routes = append(routes, map[string]any{"virtual_host": vh.Name, "name": routeName(rt), "cluster": rt.Cluster,
					"weighted": rt.Clusters, "kind": rt.Kind, "jwt_requirement": rt.JWT.RequirementName})
			}
		}
	}
	services := map[string]any{}
	for name, svc := range s.table.Services {
		services[name] = map[string]any{"endpoints": svc.Endpoints, "policy": svc.Policy}
	}
	var providers []string
	if s.auth != nil {
		for _, p := range s.auth.providers {
			providers = append(providers, p.name)
		}
	}
	cfg := g.cfg
	dump := map[string]any{
		"version":       buildinfo.Version,
		"ready":         g.Readiness().Ready,
		"node":          g.node,
		"config":        map[string]any{"log": cfg.Log, "consul": cfg.Consul, "gateway": cfg.Gateway, "observability": cfg.Observability},
		"listeners":     listeners,
		"served":        s.version,
		"routes":        routes,
		"services":      services,
		"jwt_providers": providers,
		"edge_steps":    s.edge.Steps(),
		"certificates":  g.certs.Expiries(),
		"governance":    g.state.Status(),
		"identity":      g.identityDump(),
	}
	if g.xds != nil {
		dump["xds"] = g.xds.State()
	}
	return dump
}
