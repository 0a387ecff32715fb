package chain_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshvm/mesh/dataplane/chain"
	"github.com/meshvm/mesh/dataplane/proxy"
	"github.com/meshvm/mesh/dataplane/table"
	"github.com/meshvm/mesh/dataplane/xdsconf"
	"github.com/meshvm/mesh/wire"
	"github.com/meshvm/mesh/xdsclient"
)

// The traffic-management tests run the agent's outbound path from
// standard xDS resources, as mesh control sends them for a service "b"
// with subsets: one EDS cluster and load assignment per cluster ("b",
// "b/v1", "b/v2"...), and the mesh_outbound virtual host "b" with the
// traffic routes in order before the catch-all. dataplane/xdsconf reads
// them into the table, the chain serves it, and real HTTP apps answer.

// echoApp answers with its name as the body and, as headers, what it was
// sent: X-App, X-Path (path and query), X-Host, X-Canary. ?sleep=<duration>
// delays the answer; ?status=<code> sets its status.
func echoApp(t testing.TB, host, name string) string {
	return serve(t, host, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if d, err := time.ParseDuration(r.URL.Query().Get("sleep")); err == nil && !sleep(r.Context(), d) {
			return
		}
		h := w.Header()
		h.Set("X-App", name)
		h.Set("X-Path", r.URL.RequestURI())
		h.Set("X-Host", r.Host)
		h.Set("X-Canary", r.Header.Get("X-Canary"))
		if code, err := strconv.Atoi(r.URL.Query().Get("status")); err == nil {
			w.WriteHeader(code)
		}
		_, _ = io.WriteString(w, name)
	}))
}

// trafficResources are the resources of service "b": a cluster and load
// assignment per entry of clusters (name → endpoint addresses), and the
// virtual host "b" with routes, then (catchAll) the catch-all to "b".
func trafficResources(t testing.TB, version string, clusters map[string][]string, catchAll bool, routes ...*routev3.Route) xdsclient.Resources {
	t.Helper()
	res := xdsclient.Resources{
		Clusters:  map[string]*clusterv3.Cluster{},
		Endpoints: map[string]*endpointv3.ClusterLoadAssignment{},
		Routes:    map[string]*routev3.RouteConfiguration{},
		Versions:  map[string]string{resource.RouteType: version},
	}
	for name, addrs := range clusters {
		res.Clusters[name] = &clusterv3.Cluster{
			Name:                 name,
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{ServiceName: name},
			ConnectTimeout:       durationpb.New(time.Second),
		}
		cla := &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{}}}
		for _, a := range addrs {
			host, port, err := net.SplitHostPort(a)
			if err != nil {
				t.Fatal(err)
			}
			p, _ := strconv.Atoi(port)
			cla.Endpoints[0].LbEndpoints = append(cla.Endpoints[0].LbEndpoints, &endpointv3.LbEndpoint{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{
					Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p)}}},
				}}},
			})
		}
		res.Endpoints[name] = cla
	}
	if catchAll {
		routes = append(routes, &routev3.Route{Name: "b", Match: prefixMatch("/"), Action: forwardTo("b", nil)})
	}
	res.Routes[wire.OutboundRoute] = &routev3.RouteConfiguration{Name: wire.OutboundRoute, VirtualHosts: []*routev3.VirtualHost{{
		Name: "b", Domains: []string{"b", "b:*", "b.mesh", "b.mesh:*"}, Routes: routes,
	}}}
	return res
}

func prefixMatch(p string) *routev3.RouteMatch {
	return &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: p}}
}

func forwardTo(cluster string, mod func(*routev3.RouteAction)) *routev3.Route_Route {
	a := &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster}}
	if mod != nil {
		mod(a)
	}
	return &routev3.Route_Route{Route: a}
}

// split is a route from every path to the clusters, with weights
// ("b/v1", 90, "b/v2", 10).
func split(name string, cw ...any) *routev3.Route {
	w := &routev3.WeightedCluster{}
	for i := 0; i < len(cw); i += 2 {
		w.Clusters = append(w.Clusters, &routev3.WeightedCluster_ClusterWeight{Name: cw[i].(string), Weight: wrapperspb.UInt32(uint32(cw[i+1].(int)))})
	}
	return &routev3.Route{Name: name, Match: prefixMatch("/"), Action: &routev3.Route_Route{Route: &routev3.RouteAction{
		ClusterSpecifier: &routev3.RouteAction_WeightedClusters{WeightedClusters: w},
	}}}
}

// translate is the agent's reading of res.
func translate(t testing.TB, res xdsclient.Resources) *table.Table {
	t.Helper()
	tbl, err := xdsconf.Translate(res)
	if err != nil {
		t.Fatal(err)
	}
	return tbl
}

// A canary split 90/10 over subsets sends 10% ± 3% of 5,000 requests to
// the canary; each subset has governance state of its own.
func TestRouteWeightedSplit(t *testing.T) {
	v1, v2 := echoApp(t, hostB1, "v1"), echoApp(t, hostB2, "v2")
	res := trafficResources(t, "1", map[string][]string{"b": {v1, v2}, "b/v1": {v1}, "b/v2": {v2}}, true, split("canary", "b/v1", 90, "b/v2", 10))
	c := startCaller(t, translate(t, res), chain.Local{Service: "a"})
	const n = 5000
	got := (loadBodies(client(c.outbound, 16), "http://b/orders", n, 16))
	share := float64(got["v2"]) / n
	t.Logf("%d requests: %v (canary share %.3f)", n, got, share)
	if got["v1"]+got["v2"] != n {
		t.Fatalf("not every request was served by a subset: %v", got)
	}
	if share < 0.07 || share > 0.13 {
		t.Errorf("canary share %.3f, want 0.10 ± 0.03", share)
	}
	st := c.st.Status()
	for _, sub := range []string{"b/v1", "b/v2"} {
		if _, ok := st[sub]; !ok {
			t.Errorf("no governance state for %s: %v", sub, st)
		}
	}
	_, outbound := c.sw.Current().Steps("b")
	if len(outbound) == 0 || outbound[0] != "route" {
		t.Errorf("b's outbound steps %v, want route first", outbound)
	}
	if _, outbound := c.sw.Current().Steps("b/v2"); len(outbound) > 0 && outbound[0] == "route" {
		t.Errorf("b/v2 has no routes of its own, yet its steps are %v", outbound)
	}
}

// loadBodies sends n requests from conns callers and counts the answers
// by the app that served them (its name), others by status and reason.
func loadBodies(c *http.Client, url string, n, conns int) map[string]int {
	out := map[string]int{}
	for _, r := range load(c, url, n, conns) {
		if r.err == nil && r.status == http.StatusOK {
			out[r.from]++
		} else {
			out[key(r)]++
		}
	}
	return out
}

// Weights changed live (new tables swapped in under load, 90/10 → 50/50 →
// 10/90 → 100/0 → ... → 0/100, nine changes) fail no request, and the
// last split is the one served.
func TestRouteWeightsChangeLiveWithoutFailures(t *testing.T) {
	v1, v2 := echoApp(t, hostB1, "v1"), echoApp(t, hostB2, "v2")
	clusters := map[string][]string{"b": {v1}, "b/v1": {v1}, "b/v2": {v2}}
	c := startCaller(t, translate(t, trafficResources(t, "1", clusters, true, split("canary", "b/v1", 90, "b/v2", 10))), chain.Local{Service: "a"})
	hc := client(c.outbound, 8)

	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var total, failed atomic.Int64
	var mu sync.Mutex
	var failures []string
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				r := get(hc, "http://b/orders")
				total.Add(1)
				if r.err != nil || r.status != http.StatusOK {
					failed.Add(1)
					mu.Lock()
					failures = append(failures, fmt.Sprintf("%v %d %s", r.err, r.status, r.reason))
					mu.Unlock()
				}
			}
		}()
	}
	for i, w := range [][2]int{{50, 50}, {10, 90}, {100, 0}, {90, 10}, {1, 99}, {50, 50}, {99, 1}, {10, 90}, {0, 100}} {
		before := total.Load()
		eventually(t, 10*time.Second, "requests flowing", func() bool { return total.Load() > before+200 })
		c.push(t, translate(t, trafficResources(t, strconv.Itoa(i+2), clusters, true, split("canary", "b/v1", w[0], "b/v2", w[1]))))
	}
	before := total.Load()
	eventually(t, 10*time.Second, "requests flowing", func() bool { return total.Load() > before+200 })
	stop()
	wg.Wait()
	t.Logf("%d requests across 9 live weight changes, %d failed", total.Load(), failed.Load())
	if failed.Load() != 0 {
		t.Errorf("%d of %d requests failed across the weight changes: %v", failed.Load(), total.Load(), failures[:min(len(failures), 5)])
	}
	if got := (loadBodies(hc, "http://b/orders", 200, 4)); got["v2"] != 200 {
		t.Errorf("after the change to 0/100: %v, want every request on v2", got)
	}
}

// A header route sends exactly the requests whose header has the value to
// the subset: not another case, not a longer value, not its absence.
func TestRouteByHeaderIsExact(t *testing.T) {
	v1, v2 := echoApp(t, hostB1, "v1"), echoApp(t, hostB2, "v2")
	tester := &routev3.Route{Name: "testers", Action: forwardTo("b/v2", nil), Match: &routev3.RouteMatch{
		PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
		Headers:       []*routev3.HeaderMatcher{{Name: "x-tester", HeaderMatchSpecifier: &routev3.HeaderMatcher_ExactMatch{ExactMatch: "yes"}}},
	}}
	c := startCaller(t, translate(t, trafficResources(t, "1", map[string][]string{"b": {v1}, "b/v2": {v2}}, true, tester)), chain.Local{Service: "a"})
	hc := client(c.outbound, 2)
	for _, tc := range []struct {
		name, value string
		set         bool
		want        string
	}{
		{"exact value", "yes", true, "v2"},
		{"other case", "Yes", true, "v1"},
		{"longer value", "yes!", true, "v1"},
		{"empty", "", true, "v1"},
		{"absent", "", false, "v1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for range 20 {
				req, _ := http.NewRequest(http.MethodGet, "http://b/orders", nil)
				if tc.set {
					req.Header.Set("X-Tester", tc.value)
				}
				resp, err := hc.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if got := resp.Header.Get("X-App"); got != tc.want {
					t.Fatalf("x-tester %q (set %v) went to %q, want %q", tc.value, tc.set, got, tc.want)
				}
			}
		})
	}
}

// curlResponse is what curl -i prints: the status, the headers, the body.
type curlResponse struct {
	status int
	header http.Header
	body   string
}

// curl asks A's outbound listener for path with Host b, as a user of the
// app's VM would (curl must be installed: the test fails without it).
func curl(t *testing.T, outbound, path string) curlResponse {
	t.Helper()
	out, err := exec.Command("curl", "-sS", "-i", "--noproxy", "*", "--max-time", "20", "-H", "Host: b", "http://"+outbound+path).Output()
	if err != nil {
		t.Fatalf("curl %s: %v", path, err)
	}
	head, body, _ := strings.Cut(strings.ReplaceAll(string(out), "\r\n", "\n"), "\n\n")
	lines := strings.Split(head, "\n")
	f := strings.Fields(lines[0])
	if len(f) < 2 {
		t.Fatalf("curl %s: status line %q", path, lines[0])
	}
	r := curlResponse{header: http.Header{}, body: body}
	r.status, _ = strconv.Atoi(f[1])
	for _, l := range lines[1:] {
		if k, v, ok := strings.Cut(l, ":"); ok {
			r.header.Add(k, strings.TrimSpace(v))
		}
	}
	return r
}

// Rewrites, header mutations, redirects and direct responses as a curl
// user sees them.
func TestRouteActionsAsCurlSeesThem(t *testing.T) {
	v1 := echoApp(t, hostB1, "v1")
	rewrite := &routev3.Route{Name: "legacy", Match: prefixMatch("/old/"),
		Action: forwardTo("b", func(a *routev3.RouteAction) {
			a.PrefixRewrite = "/new/"
			a.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: "b.internal"}
		}),
		RequestHeadersToAdd:     []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-canary", Value: "legacy"}}},
		ResponseHeadersToAdd:    []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-route", Value: "legacy"}}},
		ResponseHeadersToRemove: []string{"x-host"},
	}
	moved := &routev3.Route{Name: "moved", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/moved"}},
		Action: &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{
			HostRedirect: "b.mesh", PathRewriteSpecifier: &routev3.RedirectAction_PathRedirect{PathRedirect: "/here"},
			ResponseCode: routev3.RedirectAction_FOUND,
		}}}
	health := &routev3.Route{Name: "health", Match: prefixMatch("/health"),
		Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 200,
			Body: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "ok\n"}}}},
		ResponseHeadersToAdd: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-route", Value: "health"}}},
	}
	c := startCaller(t, translate(t, trafficResources(t, "1", map[string][]string{"b": {v1}}, true, rewrite, moved, health)), chain.Local{Service: "a"})

	t.Run("rewrite and header mutations", func(t *testing.T) {
		r := curl(t, c.outbound, "/old/orders/7?page=2")
		if r.status != 200 || r.body != "v1" {
			t.Fatalf("status %d body %q", r.status, r.body)
		}
		for k, want := range map[string]string{"X-Path": "/new/orders/7?page=2", "X-Canary": "legacy", "X-Route": "legacy", "X-Host": ""} {
			if got := r.header.Get(k); got != want {
				t.Errorf("%s: %q, want %q (headers %v)", k, got, want, r.header)
			}
		}
	})
	t.Run("unrouted paths unchanged", func(t *testing.T) {
		r := curl(t, c.outbound, "/orders/7")
		if r.status != 200 || r.header.Get("X-Path") != "/orders/7" || r.header.Get("X-Host") != "b" || r.header.Get("X-Route") != "" || r.header.Get("X-Canary") != "" {
			t.Errorf("status %d headers %v", r.status, r.header)
		}
	})
	t.Run("redirect", func(t *testing.T) {
		r := curl(t, c.outbound, "/moved?x=1")
		if r.status != http.StatusFound || r.header.Get("Location") != "http://b.mesh/here?x=1" {
			t.Errorf("status %d Location %q, want 302 http://b.mesh/here?x=1", r.status, r.header.Get("Location"))
		}
	})
	t.Run("direct response", func(t *testing.T) {
		r := curl(t, c.outbound, "/healthz")
		if r.status != 200 || r.body != "ok\n" || r.header.Get("X-Route") != "health" || !strings.HasPrefix(r.header.Get("Content-Type"), "text/plain") {
			t.Errorf("status %d body %q headers %v", r.status, r.body, r.header)
		}
	})
}

// A route's timeout bounds its requests (504 upstream-timeout) and not
// another route's; a route's retry policy applies to its requests only.
func TestRouteTimeoutAndRetries(t *testing.T) {
	v1 := echoApp(t, hostB1, "v1")
	ok, bad := echoApp(t, hostB2, "ok"), serve(t, hostB3, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	hurried := &routev3.Route{Name: "hurried", Match: prefixMatch("/hurried"),
		Action: forwardTo("b", func(a *routev3.RouteAction) { a.Timeout = durationpb.New(200 * time.Millisecond) })}
	patient := &routev3.Route{Name: "patient", Match: prefixMatch("/patient"),
		Action: forwardTo("b", func(a *routev3.RouteAction) { a.Timeout = durationpb.New(20 * time.Second) })}
	retried := &routev3.Route{Name: "retried", Match: prefixMatch("/retried"),
		Action: forwardTo("b/flaky", func(a *routev3.RouteAction) {
			a.RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(3)}
		})}
	once := &routev3.Route{Name: "once", Match: prefixMatch("/once"), Action: forwardTo("b/flaky", nil)}
	res := trafficResources(t, "1", map[string][]string{"b": {v1}, "b/flaky": {ok, bad}}, true, hurried, patient, retried, once)
	c := startCaller(t, translate(t, res), chain.Local{Service: "a"})
	hc := client(c.outbound, 4)

	r := get(hc, "http://b/hurried?sleep=5s")
	if r.status != http.StatusGatewayTimeout || r.reason != proxy.ReasonTimeout {
		t.Errorf("hurried route, 5s app: %d %q, want 504 %s", r.status, r.reason, proxy.ReasonTimeout)
	}
	if r.took > 4*time.Second {
		t.Errorf("the 200ms route timeout answered after %v", r.took)
	}
	if r := get(hc, "http://b/patient?sleep=1s"); r.status != http.StatusOK {
		t.Errorf("patient route, 1s app: %d %q, want 200", r.status, r.reason)
	}
	// Two callers at a time: the retries stay within the default cap of
	// three concurrent retries (Envoy's max_retries).
	retriedAnswers := tally(load(hc, "http://b/retried", 100, 2))
	if retriedAnswers["200"] != 100 {
		t.Errorf("with the route's retry policy: %v, want 100 × 200", retriedAnswers)
	}
	onceAnswers := tally(load(hc, "http://b/once", 100, 2))
	if onceAnswers["503"] == 0 {
		t.Errorf("without a retry policy: %v, want some 503 from the failing endpoint", onceAnswers)
	}
}

// A request no route matches is 404 no-route (Envoy's NR); a route to a
// cluster the agent does not have is 503 no-route.
func TestRouteNoMatchAndUnknownCluster(t *testing.T) {
	v1 := echoApp(t, hostB1, "v1")
	api := &routev3.Route{Name: "api", Match: prefixMatch("/api"), Action: forwardTo("b", nil)}
	gone := &routev3.Route{Name: "gone", Match: prefixMatch("/gone"), Action: forwardTo("b/v9", nil)}
	c := startCaller(t, translate(t, trafficResources(t, "1", map[string][]string{"b": {v1}}, false, api, gone)), chain.Local{Service: "a"})
	hc := client(c.outbound, 1)
	if r := get(hc, "http://b/api/x"); r.status != http.StatusOK {
		t.Errorf("/api/x: %d %q", r.status, r.reason)
	}
	if r := get(hc, "http://b/other"); r.status != http.StatusNotFound || r.reason != proxy.ReasonNoRoute {
		t.Errorf("/other: %d %q, want 404 %s", r.status, r.reason, proxy.ReasonNoRoute)
	}
	if r := get(hc, "http://b/gone"); r.status != http.StatusServiceUnavailable || r.reason != proxy.ReasonNoRoute {
		t.Errorf("/gone: %d %q, want 503 %s", r.status, r.reason, proxy.ReasonNoRoute)
	}
}
