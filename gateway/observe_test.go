package gateway_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/wire"
)

// The gateway starts the trace of a request from outside (its server span
// is the root; the app's agent continues it), writes the refusal's
// reason in its access log but never the token, and labels its request
// metrics by route. Spans go to a real Jaeger.
func TestGatewayTracesLogsAndRouteMetrics(t *testing.T) {
	j, err := meshtest.StartJaeger()
	if err != nil {
		t.Fatalf("this test needs a real Jaeger (make jaeger): %v", err)
	}
	defer j.Stop()
	agentEnv := []string{"MESH_OBSERVABILITY_TRACING_EXPORTER=otlp-grpc", "MESH_OBSERVABILITY_TRACING_ENDPOINT=" + j.OTLPGRPC,
		"MESH_OBSERVABILITY_TRACING_SAMPLE_RATIO=1", "MESH_OBSERVABILITY_TRACING_BATCH_TIMEOUT=100ms"}
	v1 := startAgentEnv(t, agentEnv, "127.0.0.94", "obs-orders", startApp(t, "127.0.0.94", "obs-orders-1"))
	is := newIssuer(t, t.TempDir())
	accessLog := filepath.Join(t.TempDir(), "access.log")
	cp := startControlPlane(t)
	ca := newCA(t)
	g := startGateway(t, cp, ca, func(c *config.Config) {
		c.Gateway.Limits.PerIP = config.RateLimit{}
		c.Observability.Tracing.Exporter = "otlp-grpc"
		c.Observability.Tracing.Endpoint = j.OTLPGRPC
		c.Observability.Tracing.SampleRatio = 1
		c.Observability.Tracing.BatchTimeout = 100 * time.Millisecond
		c.Observability.AccessLog.Enabled = true
		c.Observability.AccessLog.Output = accessLog
		c.Observability.AccessLog.FlushInterval = 0
	})
	api := prefixRoute("api", "/api", toCluster("obs-orders"))
	api.TypedPerFilterConfig = perRoute(t, "user")
	cp.set(t, g.node, gwConfig{services: map[string][]string{"obs-orders": {v1}}, jwt: is.jwtFilter(),
		routes: &routev3.RouteConfiguration{VirtualHosts: []*routev3.VirtualHost{{Name: "shop", Domains: []string{"*"},
			Routes: []*routev3.Route{api, prefixRoute("public", "/public", toCluster("obs-orders"))}}}}})
	var body map[string]any
	meshtest.Eventually(t, 15*time.Second, func() error {
		var resp *http.Response
		if resp, body = g.get(t, "shop.test", "/public/trace-me", nil); resp.StatusCode != 200 {
			return fmt.Errorf("public route: %d %s", resp.StatusCode, resp.Header.Get("x-mesh-reason"))
		}
		return nil
	})

	t.Run("the gateway starts the trace", func(t *testing.T) {
		h, _ := body["headers"].(map[string]any)
		tps, _ := h["Traceparent"].([]any)
		if len(tps) != 1 {
			t.Fatalf("the app got traceparent %v, want one", tps)
		}
		parts := strings.Split(fmt.Sprint(tps[0]), "-")
		if len(parts) != 4 || len(parts[1]) != 32 || parts[3] != "01" {
			t.Fatalf("the app got traceparent %q, want a sampled W3C trace context", tps[0])
		}
		var tr meshtest.JaegerTrace
		meshtest.Eventually(t, 30*time.Second, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			got, err := j.Trace(ctx, parts[1])
			if err != nil {
				return err
			}
			services := map[string]bool{}
			for _, s := range got.Spans {
				services[got.Service(s)] = true
			}
			if !services["mesh-gateway"] || !services["obs-orders"] {
				return fmt.Errorf("trace %s has spans of %v, want the gateway's and obs-orders'", parts[1], services)
			}
			tr = got
			return nil
		})
		ids := map[string]bool{}
		for _, s := range tr.Spans {
			ids[s.SpanID] = true
		}
		var root *meshtest.JaegerSpan
		for i, s := range tr.Spans {
			switch {
			case s.Parent() == "":
				if root != nil {
					t.Fatalf("two root spans in trace %s", parts[1])
				}
				root = &tr.Spans[i]
			case !ids[s.Parent()]:
				t.Errorf("span %s of %s has parent %s, not in the trace", s.SpanID, tr.Service(s), s.Parent())
			}
		}
		if root == nil || tr.Service(*root) != "mesh-gateway" || root.Tag("span.kind") != "server" {
			t.Fatalf("the trace's root is %+v, want the gateway's server span", root)
		}
		if root.Tag("url.path") != "/public/trace-me" {
			t.Errorf("root span tags %v", root.Tags)
		}
	})

	t.Run("registered in Consul as a gateway", func(t *testing.T) {
		_, port, _ := net.SplitHostPort(g.https)
		meshtest.Eventually(t, 15*time.Second, func() error {
			resp, err := http.Get("http://" + consul.Addr + "/v1/catalog/service/mesh-gateway")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			var entries []struct {
				ServicePort int
				ServiceTags []string
				ServiceMeta map[string]string
			}
			if err := json.NewDecoder(resp.Body).Decode(&entries); err != nil {
				return err
			}
			for _, e := range entries {
				if fmt.Sprint(e.ServicePort) == port {
					if e.ServiceMeta[wire.MetaKind] != wire.KindGateway || !slices.Contains(e.ServiceTags, wire.KindGateway) {
						return fmt.Errorf("registered with meta %v tags %v, want %s=%s and tag %s", e.ServiceMeta, e.ServiceTags, wire.MetaKind, wire.KindGateway, wire.KindGateway)
					}
					return nil
				}
			}
			return fmt.Errorf("no mesh-gateway instance on port %s in %d entries", port, len(entries))
		})
	})

	valid := is.token(t, "user-5", time.Hour, nil)
	bad := valid[:len(valid)-6] + "AAAAAA"
	for _, hdr := range []map[string]string{{"Authorization": "Bearer " + bad}, {"Authorization": "Bearer " + valid}} {
		_, _ = g.get(t, "shop.test", "/api/orders/7", hdr)
	}
	if resp, _ := g.get(t, "shop.test", "/api/orders/7", map[string]string{"Authorization": "Bearer " + bad}); resp.StatusCode != 401 {
		t.Fatalf("tampered token: %d, want 401", resp.StatusCode)
	}

	t.Run("the access log carries the reason, never the token", func(t *testing.T) {
		var lines []map[string]any
		meshtest.Eventually(t, 10*time.Second, func() error {
			f, err := os.Open(accessLog)
			if err != nil {
				return err
			}
			defer f.Close()
			lines = nil
			sc := bufio.NewScanner(f)
			sc.Buffer(make([]byte, 1<<20), 1<<20)
			for sc.Scan() {
				var l map[string]any
				if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
					return fmt.Errorf("access log line %q: %v", sc.Text(), err)
				}
				if l["path"] == "/api/orders/7" {
					lines = append(lines, l)
				}
			}
			if len(lines) < 3 {
				return fmt.Errorf("%d access log lines for /api/orders/7, want 3", len(lines))
			}
			return nil
		})
		reasons := map[string]int{}
		for _, l := range lines {
			reasons[fmt.Sprint(l["status"], " ", l["reason"])]++
		}
		if reasons["401 auth-invalid"] != 2 || reasons["200 <nil>"]+reasons["200 "] != 1 {
			t.Errorf("access log status and reason for /api/orders/7: %v, want two 401 auth-invalid and one 200", reasons)
		}
		raw, err := os.ReadFile(accessLog)
		if err != nil {
			t.Fatal(err)
		}
		sig := valid[strings.LastIndex(valid, ".")+1:]
		for what, s := range map[string]string{"a valid token": valid, "a tampered token": bad, "a token's signature": sig, "the token's payload": strings.Split(valid, ".")[1]} {
			if strings.Contains(string(raw), s) {
				t.Errorf("the access log holds %s", what)
			}
		}
	})

	t.Run("request metrics by route", func(t *testing.T) {
		mfs := scrape(t, "http://"+g.g.Addr("admin")+"/metrics")
		got := map[string]float64{}
		for _, m := range mfs["mesh_gateway_requests_total"].GetMetric() {
			l := map[string]string{}
			for _, p := range m.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			got[l["route"]+" "+l["code_class"]+" "+l["reason"]] += m.GetCounter().GetValue()
		}
		for key, atLeast := range map[string]float64{"public 2xx none": 1, "api 4xx auth-invalid": 2, "api 2xx none": 1} {
			if got[key] < atLeast {
				t.Errorf("mesh_gateway_requests_total{route, code_class, reason} %q = %v, want at least %v (all: %v)", key, got[key], atLeast, got)
			}
		}
		hist := 0
		for _, m := range mfs["mesh_gateway_request_duration_seconds"].GetMetric() {
			for _, p := range m.GetLabel() {
				if p.GetName() == "route" && p.GetValue() == "api" {
					hist += int(m.GetHistogram().GetSampleCount())
				}
			}
		}
		if hist < 3 {
			t.Errorf("mesh_gateway_request_duration_seconds{route=api} counted %d requests, want 3", hist)
		}
	})
}

func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	return mfs
}

// Per authenticated subject: a burst from one user is cut off with 429
// and Retry-After while another user from the same client IP is served.
// Connections: beyond limits.max_connections a new one is not served
// until one of the open ones closes.
func TestSubjectRateLimitAndConnectionLimit(t *testing.T) {
	v1 := startAgent(t, "127.0.0.95", "sub-orders", startApp(t, "127.0.0.95", "sub-orders-1"))
	is := newIssuer(t, t.TempDir())
	cp := startControlPlane(t)
	ca := newCA(t)
	g := startGateway(t, cp, ca, func(c *config.Config) {
		c.Gateway.Limits.PerIP = config.RateLimit{}
		c.Gateway.Limits.PerSubject = config.RateLimit{MaxTokens: 3, TokensPerFill: 1, FillInterval: time.Minute}
		c.Gateway.Limits.MaxConnections = 2
		// A connection accepted from the backlog after its client left
		// (a timed-out dial below, Consul's TCP check) holds its slot up
		// to read_header_timeout: kept short so the test does not wait.
		c.Gateway.Limits.ReadHeaderTimeout = 3 * time.Second
	})
	api := prefixRoute("api", "/", toCluster("sub-orders"))
	api.TypedPerFilterConfig = perRoute(t, "user")
	cp.set(t, g.node, gwConfig{services: map[string][]string{"sub-orders": {v1}}, jwt: is.jwtFilter(),
		routes: &routev3.RouteConfiguration{VirtualHosts: []*routev3.VirtualHost{{Name: "shop", Domains: []string{"*"}, Routes: []*routev3.Route{api}}}}})
	alice := map[string]string{"Authorization": "Bearer " + is.token(t, "alice", time.Hour, nil)}
	bob := map[string]string{"Authorization": "Bearer " + is.token(t, "bob", time.Hour, nil)}
	// Routed yet? A request without a token is 401 once the route is in
	// (404 before): it takes no token from anyone's bucket.
	meshtest.Eventually(t, 15*time.Second, func() error {
		if resp, _ := g.get(t, "shop.test", "/", nil); resp.StatusCode != 401 {
			return fmt.Errorf("%d %s", resp.StatusCode, resp.Header.Get("x-mesh-reason"))
		}
		return nil
	})

	t.Run("per subject", func(t *testing.T) {
		statuses := []int{}
		var limited *http.Response
		for i := 0; i < 6; i++ {
			resp, _ := g.get(t, "shop.test", "/", alice)
			statuses = append(statuses, resp.StatusCode)
			if resp.StatusCode == 429 && limited == nil {
				limited = resp
			}
		}
		if fmt.Sprint(statuses) != "[200 200 200 429 429 429]" {
			t.Fatalf("alice's 6 requests with 3 tokens: %v, want 3 served then 429", statuses)
		}
		if limited.Header.Get("Retry-After") == "" || limited.Header.Get("x-mesh-reason") != "rate-limited" {
			t.Fatalf("429 without Retry-After or reason: %v", limited.Header)
		}
		if resp, _ := g.get(t, "shop.test", "/", bob); resp.StatusCode != 200 {
			t.Fatalf("bob, from the same client IP, got %d while alice was limited", resp.StatusCode)
		}
	})

	t.Run("connections", func(t *testing.T) {
		g.client.CloseIdleConnections()
		dial := func(timeout time.Duration) (*tls.Conn, error) {
			return tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", g.https,
				&tls.Config{RootCAs: ca.pool, ServerName: "shop.test", NextProtos: []string{"http/1.1"}})
		}
		var held []*tls.Conn
		start := time.Now()
		defer func() { t.Logf("two connections held after %s", time.Since(start).Round(time.Millisecond)) }()
		meshtest.Eventually(t, 30*time.Second, func() error { // the client's own connections close
			for len(held) < 2 {
				c, err := dial(2 * time.Second)
				if err != nil {
					return err
				}
				held = append(held, c)
			}
			return nil
		})
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		if c, err := dial(2 * time.Second); err == nil {
			c.Close()
			t.Fatal("a third connection was served with max_connections 2 and two open")
		}
		held[0].Close()
		held = held[1:]
		freed := time.Now()
		defer func() {
			t.Logf("a new connection was served %s after one closed", time.Since(freed).Round(time.Millisecond))
		}()
		meshtest.Eventually(t, 30*time.Second, func() error {
			c, err := dial(2 * time.Second)
			if err != nil {
				return err
			}
			held = append(held, c)
			return nil
		})
	})
}
