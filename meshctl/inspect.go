package meshctl

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
	"text/tabwriter"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	// The typed configs mesh control's resources may carry, registered so
	// protojson can read their Any fields.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/least_request/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/random/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/round_robin/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"

	"github.com/meshvm/mesh/meshapi"
	"github.com/meshvm/mesh/wire"
)

// NewInspectCommand returns `mesh inspect`.
func NewInspectCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "inspect [NODE] [--service NAME]",
		Short: "Show what one proxy was sent, or who calls a service and how well",
		Long: "mesh inspect NODE shows what mesh control sent one connected proxy: its\n" +
			"listeners, routes, clusters (with their policies) and endpoints (with health\n" +
			"and locality), and its sync state. mesh inspect --service NAME shows who calls\n" +
			"the service and whom it calls, with rates, error ratios and latencies from the\n" +
			"proxies' load reports.",
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, out, err := flags(cmd)
			if err != nil {
				return err
			}
			svc, _ := cmd.Flags().GetString("service")
			switch {
			case svc != "" && len(args) == 0:
				return inspectService(cmd.Context(), c, svc, out, cmd.OutOrStdout())
			case svc == "" && len(args) == 1:
				in, err := InspectNode(cmd.Context(), c, args[0])
				if err != nil {
					return err
				}
				if out == "json" {
					return writeJSON(cmd.OutOrStdout(), in)
				}
				return WriteInspect(cmd.OutOrStdout(), in)
			}
			return fmt.Errorf("name a NODE or --service NAME (one of them)")
		},
	}
	commonFlags(cmd)
	cmd.Flags().String("service", "", "show who calls this service and whom it calls")
	return cmd
}

// Inspect is what one proxy was sent, in readable form.
type Inspect struct {
	Node      string            `json:"node"`
	Service   string            `json:"service,omitempty"`
	Kind      string            `json:"kind,omitempty"`
	Locality  string            `json:"locality,omitempty"`
	State     string            `json:"state,omitempty"`
	Reason    string            `json:"reason,omitempty"`
	Versions  map[string]string `json:"versions"`
	Listeners []Listener        `json:"listeners"`
	Routes    []Route           `json:"routes"`
	Clusters  []Cluster         `json:"clusters"`
	Endpoints []Endpoint        `json:"endpoints"`
}

// Listener is one listener: where it listens and what it does.
type Listener struct {
	Name    string `json:"name"`
	Address string `json:"address,omitempty"`
	// Route is the route configuration it uses (RDS name or inline).
	Route string `json:"route,omitempty"`
	// Filters are its HTTP filters (or network filters for TCP), in order.
	Filters []string `json:"filters"`
	// Policies are the callee-side policies it enforces, one line each.
	Policies []string `json:"policies,omitempty"`
}

// Route is one virtual host of a route configuration.
type Route struct {
	Config  string   `json:"config"`
	Name    string   `json:"name"`
	Domains []string `json:"domains"`
	Cluster string   `json:"cluster"`
	// Policies: timeout, retries.
	Policies []string `json:"policies,omitempty"`
}

// Cluster is one upstream cluster and its policies.
type Cluster struct {
	Name     string   `json:"name"`
	Type     string   `json:"type"`
	LB       string   `json:"lb"`
	Protocol string   `json:"protocol,omitempty"`
	Policies []string `json:"policies,omitempty"`
}

// Endpoint is one endpoint of a cluster's load assignment.
type Endpoint struct {
	Cluster  string `json:"cluster"`
	Address  string `json:"address"`
	Health   string `json:"health"`
	Locality string `json:"locality,omitempty"`
	Weight   uint32 `json:"weight,omitempty"`
	ID       string `json:"id,omitempty"`
}

// nodeDump is /config_dump?node=ID.
type nodeDump struct {
	Node struct {
		ID       string `json:"id"`
		Service  string `json:"service"`
		Locality struct {
			Region string `json:"region"`
			Zone   string `json:"zone"`
		} `json:"locality"`
	} `json:"node"`
	Versions  map[string]string            `json:"versions"`
	Resources map[string][]json.RawMessage `json:"resources"`
}

// InspectNode reads one node's resources and sync state from mesh control.
func InspectNode(ctx context.Context, c *client, id string) (Inspect, error) {
	var d nodeDump
	if err := c.get(ctx, meshapi.ConfigDumpPath+"?node="+url.QueryEscape(id), &d); err != nil {
		return Inspect{}, err
	}
	res := map[string][]proto.Message{}
	for kind, list := range d.Resources {
		for i, raw := range list {
			var m proto.Message
			switch kind {
			case "cluster":
				m = &clusterv3.Cluster{}
			case "endpoint":
				m = &endpointv3.ClusterLoadAssignment{}
			case "listener":
				m = &listenerv3.Listener{}
			case "route":
				m = &routev3.RouteConfiguration{}
			default:
				continue
			}
			if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(raw, m); err != nil {
				return Inspect{}, fmt.Errorf("decode %s %d of node %s: %w", kind, i, id, err)
			}
			res[kind] = append(res[kind], m)
		}
	}
	in := Summarize(res)
	in.Node, in.Service, in.Versions = d.Node.ID, d.Node.Service, d.Versions
	in.Locality = meshapi.LocalityString(d.Node.Locality.Region, d.Node.Locality.Zone)
	var st meshapi.Status
	if err := c.get(ctx, meshapi.StatusPath, &st); err == nil {
		for _, p := range st.Proxies {
			if p.Node == id {
				in.Kind, in.State, in.Reason = p.Kind, p.State, p.Reason
			}
		}
	}
	return in, nil
}

// Summarize turns a node's resources (by type: cluster, endpoint,
// listener, route) into their readable form, each list sorted.
func Summarize(res map[string][]proto.Message) Inspect {
	in := Inspect{Listeners: []Listener{}, Routes: []Route{}, Clusters: []Cluster{}, Endpoints: []Endpoint{}}
	for _, m := range res["listener"] {
		in.Listeners = append(in.Listeners, listenerOf(m.(*listenerv3.Listener)))
	}
	for _, m := range res["route"] {
		rc := m.(*routev3.RouteConfiguration)
		in.Routes = append(in.Routes, routesOf(rc.GetName(), rc.GetVirtualHosts())...)
	}
	for _, m := range res["cluster"] {
		in.Clusters = append(in.Clusters, clusterOf(m.(*clusterv3.Cluster)))
	}
	for _, m := range res["endpoint"] {
		in.Endpoints = append(in.Endpoints, endpointsOf(m.(*endpointv3.ClusterLoadAssignment))...)
	}
	sort.Slice(in.Listeners, func(i, j int) bool { return in.Listeners[i].Name < in.Listeners[j].Name })
	sort.Slice(in.Routes, func(i, j int) bool {
		if in.Routes[i].Config != in.Routes[j].Config {
			return in.Routes[i].Config < in.Routes[j].Config
		}
		return in.Routes[i].Name < in.Routes[j].Name
	})
	sort.Slice(in.Clusters, func(i, j int) bool { return in.Clusters[i].Name < in.Clusters[j].Name })
	sort.Slice(in.Endpoints, func(i, j int) bool {
		if in.Endpoints[i].Cluster != in.Endpoints[j].Cluster {
			return in.Endpoints[i].Cluster < in.Endpoints[j].Cluster
		}
		return in.Endpoints[i].Address < in.Endpoints[j].Address
	})
	return in
}

func listenerOf(l *listenerv3.Listener) Listener {
	out := Listener{Name: l.GetName(), Filters: []string{}}
	if sa := l.GetAddress().GetSocketAddress(); sa != nil {
		out.Address = fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue())
	}
	var hcms []*hcmv3.HttpConnectionManager
	if api := l.GetApiListener().GetApiListener(); api != nil {
		h := &hcmv3.HttpConnectionManager{}
		if api.UnmarshalTo(h) == nil {
			hcms = append(hcms, h)
		}
	}
	for _, fc := range l.GetFilterChains() {
		for _, f := range fc.GetFilters() {
			h := &hcmv3.HttpConnectionManager{}
			if tc := f.GetTypedConfig(); tc != nil && tc.MessageIs(h) && tc.UnmarshalTo(h) == nil {
				hcms = append(hcms, h)
				continue
			}
			out.Filters = append(out.Filters, f.GetName())
		}
	}
	for _, h := range hcms {
		switch {
		case h.GetRds() != nil:
			out.Route = h.GetRds().GetRouteConfigName()
		case h.GetRouteConfig() != nil:
			out.Route = h.GetRouteConfig().GetName() + " (inline)"
		}
		for _, f := range h.GetHttpFilters() {
			out.Filters = append(out.Filters, f.GetName())
			if p := httpFilterPolicy(f.GetName()); p != "" {
				out.Policies = append(out.Policies, p)
			}
		}
	}
	return out
}

// httpFilterPolicy summarises the HTTP filters that are policies.
func httpFilterPolicy(name string) string {
	switch name {
	case wire.LocalRateLimitFilter:
		return "rate limit (local token bucket)"
	case wire.JWTAuthnFilter:
		return "JWT authentication"
	case "envoy.filters.http.rbac":
		return "authorization (RBAC)"
	}
	return ""
}

func routesOf(config string, vhs []*routev3.VirtualHost) []Route {
	var out []Route
	for _, vh := range vhs {
		r := Route{Config: config, Name: vh.GetName(), Domains: vh.GetDomains()}
		for _, rt := range vh.GetRoutes() {
			a := rt.GetRoute()
			if a == nil {
				continue
			}
			r.Cluster = a.GetCluster()
			if t := a.GetTimeout(); t != nil && t.AsDuration() > 0 {
				r.Policies = append(r.Policies, "timeout "+t.AsDuration().String())
			}
			if rp := a.GetRetryPolicy(); rp != nil {
				p := fmt.Sprintf("retries %d on %s", rp.GetNumRetries().GetValue(), rp.GetRetryOn())
				if pt := rp.GetPerTryTimeout(); pt != nil && pt.AsDuration() > 0 {
					p += ", per try " + pt.AsDuration().String()
				}
				r.Policies = append(r.Policies, p)
			}
			break // one route per virtual host
		}
		out = append(out, r)
	}
	return out
}

func clusterOf(c *clusterv3.Cluster) Cluster {
	out := Cluster{Name: c.GetName(), Type: c.GetType().String(), LB: strings.ToLower(c.GetLbPolicy().String())}
	if p := c.GetLoadBalancingPolicy().GetPolicies(); len(p) > 0 {
		name := p[0].GetTypedExtensionConfig().GetName()
		out.LB = name[strings.LastIndex(name, ".")+1:]
	}
	md := c.GetMetadata().GetFilterMetadata()
	if p := md["mesh.protocol"].GetFields()["app_protocol"].GetStringValue(); p != "" {
		out.Protocol = p
	}
	if t := c.GetConnectTimeout(); t != nil {
		out.Policies = append(out.Policies, "connect timeout "+t.AsDuration().String())
	}
	for _, th := range c.GetCircuitBreakers().GetThresholds() {
		p := fmt.Sprintf("limits: %d connections, %d pending, %d requests", th.GetMaxConnections().GetValue(),
			th.GetMaxPendingRequests().GetValue(), th.GetMaxRequests().GetValue())
		if rb := th.GetRetryBudget(); rb != nil {
			p += fmt.Sprintf(", retry budget %.0f%% (min %d)", rb.GetBudgetPercent().GetValue(), rb.GetMinRetryConcurrency().GetValue())
		}
		out.Policies = append(out.Policies, p)
	}
	if g := md[wire.GovernanceNamespace]; g != nil {
		out.Policies = append(out.Policies, "circuit breaker: "+structLine(g))
	}
	if od := c.GetOutlierDetection(); od != nil {
		out.Policies = append(out.Policies, fmt.Sprintf("outlier detection: %d consecutive 5xx, every %s, eject %s, at most %d%%",
			od.GetConsecutive_5Xx().GetValue(), od.GetInterval().AsDuration(), od.GetBaseEjectionTime().AsDuration(), od.GetMaxEjectionPercent().GetValue()))
	}
	return out
}

// structLine is a Struct as "k=v, k=v", keys sorted.
func structLine(s *structpb.Struct) string {
	keys := make([]string, 0, len(s.GetFields()))
	for k := range s.GetFields() {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		v := s.GetFields()[k]
		var txt string
		switch x := v.GetKind().(type) {
		case *structpb.Value_StringValue:
			txt = x.StringValue
		case *structpb.Value_NumberValue:
			txt = fmt.Sprintf("%g", x.NumberValue)
		default:
			b, _ := protojson.Marshal(v)
			txt = string(b)
		}
		parts = append(parts, k+"="+txt)
	}
	return strings.Join(parts, ", ")
}

func endpointsOf(cla *endpointv3.ClusterLoadAssignment) []Endpoint {
	var out []Endpoint
	for _, le := range cla.GetEndpoints() {
		loc := meshapi.LocalityString(le.GetLocality().GetRegion(), le.GetLocality().GetZone())
		for _, lb := range le.GetLbEndpoints() {
			e := Endpoint{Cluster: cla.GetClusterName(), Health: strings.ToLower(lb.GetHealthStatus().String()), Locality: loc,
				Weight: lb.GetLoadBalancingWeight().GetValue()}
			if sa := lb.GetEndpoint().GetAddress().GetSocketAddress(); sa != nil {
				e.Address = fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue())
			}
			e.ID = lb.GetMetadata().GetFilterMetadata()[wire.EndpointNamespace].GetFields()["id"].GetStringValue()
			out = append(out, e)
		}
	}
	return out
}

// WriteInspect writes in as readable sections.
func WriteInspect(w io.Writer, in Inspect) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "NODE %s  kind %s  service %s  locality %s  state %s\n", in.Node, dash(in.Kind), dash(in.Service), dash(in.Locality), dash(strings.ToUpper(in.State)))
	if in.Reason != "" {
		fmt.Fprintf(tw, "  reason: %s\n", in.Reason)
	}
	fmt.Fprintf(tw, "  versions: cluster %s, endpoint %s, listener %s, route %s\n",
		short(in.Versions["cluster"]), short(in.Versions["endpoint"]), short(in.Versions["listener"]), short(in.Versions["route"]))
	fmt.Fprintln(tw, "\nLISTENER\tADDRESS\tROUTE\tFILTERS\tPOLICIES")
	for _, l := range in.Listeners {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", l.Name, dash(l.Address), dash(l.Route), dash(strings.Join(l.Filters, ",")), dash(strings.Join(l.Policies, "; ")))
	}
	fmt.Fprintln(tw, "\nROUTE CONFIG\tVIRTUAL HOST\tCLUSTER\tDOMAINS\tPOLICIES")
	for _, r := range in.Routes {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Config, r.Name, dash(r.Cluster), strings.Join(r.Domains, ","), dash(strings.Join(r.Policies, "; ")))
	}
	fmt.Fprintln(tw, "\nCLUSTER\tTYPE\tLB\tPROTOCOL\tPOLICIES")
	for _, c := range in.Clusters {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.Name, c.Type, dash(c.LB), dash(c.Protocol), dash(strings.Join(c.Policies, "; ")))
	}
	fmt.Fprintln(tw, "\nENDPOINT\tCLUSTER\tHEALTH\tLOCALITY\tWEIGHT\tID")
	for _, e := range in.Endpoints {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", e.Address, e.Cluster, e.Health, dash(e.Locality), e.Weight, dash(e.ID))
	}
	return tw.Flush()
}

// ServiceTraffic is who calls a service and whom it calls.
type ServiceTraffic struct {
	Service       string         `json:"service"`
	WindowSeconds float64        `json:"window_seconds"`
	Callers       []meshapi.Edge `json:"callers"`
	Callees       []meshapi.Edge `json:"callees"`
}

func inspectService(ctx context.Context, c *client, svc, out string, w io.Writer) error {
	var tr meshapi.Traffic
	if err := c.get(ctx, meshapi.TrafficPath, &tr); err != nil {
		return err
	}
	st := ServiceTraffic{Service: svc, WindowSeconds: tr.WindowSeconds, Callers: []meshapi.Edge{}, Callees: []meshapi.Edge{}}
	for _, e := range tr.Edges {
		if e.Callee == svc {
			st.Callers = append(st.Callers, e)
		}
		if e.Caller == svc {
			st.Callees = append(st.Callees, e)
		}
	}
	if out == "json" {
		return writeJSON(w, st)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "SERVICE %s  (rates over the last %gs; totals since mesh control started)\n\n", svc, tr.WindowSeconds)
	edges := func(title, who string, list []meshapi.Edge, name func(meshapi.Edge) string) {
		fmt.Fprintf(tw, "%s\tREQ/S\tERRORS\tP50\tP99\tIN FLIGHT\tTOTAL\tTOTAL ERRORS\n", title)
		if len(list) == 0 {
			fmt.Fprintf(tw, "(no %s reported)\n", who)
		}
		for _, e := range list {
			fmt.Fprintf(tw, "%s\t%.2f\t%.1f%%\t%.1fms\t%.1fms\t%d\t%d\t%d\n", name(e), e.RPS, 100*e.ErrorRatio, e.P50Ms, e.P99Ms,
				e.InProgress, e.Total.Issued, e.Total.Errored)
		}
		fmt.Fprintln(tw)
	}
	edges("CALLER", "callers", st.Callers, func(e meshapi.Edge) string { return e.Caller })
	edges("CALLEE", "callees", st.Callees, func(e meshapi.Edge) string { return e.Callee })
	return tw.Flush()
}
