// Command demo runs a live local mesh for `make demo`: a real Consul dev
// agent, three loopback "VMs" each with an app and its own `mesh agent`
// process on the same ports, and traffic from one service to the other
// through the mesh, printed as it flows. Ctrl-C stops everything it started.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/wire"
)

// vm is one simulated machine: a loopback address with an app and an agent.
type vm struct {
	name    string // node name
	ip      string
	service string
	agent   *exec.Cmd
	app     *http.Server
	served  atomic.Int64 // requests the app answered (not health checks)
	failing atomic.Bool  // the app answers 500 while set
}

func (v *vm) admin() string    { return "http://" + v.ip + ":15000" }
func (v *vm) outbound() string { return v.ip + ":15001" }

func main() {
	duration := flag.Duration("duration", 0, "stop after this long (default: run until Ctrl-C)")
	rate := flag.Duration("every", 400*time.Millisecond, "time between demo requests")
	flag.Parse()
	// Ctrl-C (or SIGTERM) is the normal way to end the demo: it stops what
	// the demo started and exits 0, whatever the demo was doing. A second
	// Ctrl-C while it cleans up kills it.
	sigCtx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() { <-sigCtx.Done(); stop() }()
	ctx := sigCtx
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	err := run(ctx, *rate)
	switch {
	case err != nil && sigCtx.Err() != nil:
		fmt.Println("==> stopped before the demo was up: everything it started is stopped")
	case err != nil:
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, every time.Duration) error {
	dir, err := os.MkdirTemp("", "mesh-demo-")
	if err != nil {
		return err
	}
	step("logs and state go to %s", dir)

	var procs []*exec.Cmd
	defer func() {
		step("stopping everything the demo started")
		for i := len(procs) - 1; i >= 0; i-- {
			stopProc(procs[i])
		}
	}()

	step("starting a real Consul dev agent on 127.0.0.1:8500")
	if conn, err := net.DialTimeout("tcp", "127.0.0.1:8500", 200*time.Millisecond); err == nil {
		conn.Close()
		return errors.New("127.0.0.1:8500 is already in use: stop the Consul (or other program) on it first")
	}
	consul, err := startProc(dir, "consul", "bin/consul", "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1", "-node", "demo-consul")
	if err != nil {
		return err
	}
	procs = append(procs, consul)
	if err := waitFor(ctx, 30*time.Second, func() bool {
		resp, err := http.Get("http://127.0.0.1:8500/v1/status/leader")
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return len(b) > 2
	}); err != nil {
		return fmt.Errorf("consul did not start (see %s/consul.log): %w", dir, err)
	}

	step("starting mesh control (xDS on 127.0.0.1:18000, admin 127.0.0.1:19000) with the demo's policies")
	ed, err := newEdge(dir)
	if err != nil {
		return fmt.Errorf("demo keys and certificate: %w", err)
	}
	policies := filepath.Join(dir, "mesh.yaml")
	// The CA's files go in the demo's directory, not /var/lib/mesh/ca.
	cfgText := strings.Replace(controlConfig(ed.controlGateway()), "control:\n", "control:\n  ca: {dir: "+filepath.Join(dir, "ca")+"}\n", 1)
	if err := os.WriteFile(policies, []byte(cfgText), 0o644); err != nil {
		return err
	}
	control, err := startProc(dir, "control", "bin/mesh", "control", "--config", policies, "--log-format", "text")
	if err != nil {
		return err
	}
	procs = append(procs, control)
	if err := waitFor(ctx, 20*time.Second, func() bool { return get("http://127.0.0.1:19000/ready") == nil }); err != nil {
		return fmt.Errorf("mesh control not ready (see %s/control.log): %w", dir, err)
	}
	step("minting a join token per VM with `mesh control token create` (mesh control's CA in %s/ca)", dir)

	// Traces: to the collector named by MESH_DEMO_OTLP (host:port, OTLP
	// over gRPC), else to a Jaeger the demo starts when bin/jaeger exists.
	tr := traces{otlp: os.Getenv("MESH_DEMO_OTLP"), query: os.Getenv("MESH_DEMO_JAEGER_QUERY")}
	if tr.otlp == "" {
		if _, err := os.Stat(meshtest.JaegerBinary()); err == nil {
			step("starting Jaeger (bin/jaeger) to collect the agents' traces")
			j, err := meshtest.StartJaeger()
			if err != nil {
				return fmt.Errorf("jaeger: %w", err)
			}
			defer j.Stop()
			tr = traces{otlp: j.OTLPGRPC, query: j.QueryURL, jaeger: j}
		}
	}

	if tr.query != "" {
		tr.ui = jaegerHasUI(tr.query)
	}

	vms := []*vm{
		{name: "vm-web-1", ip: "127.0.0.11", service: "web"},
		{name: "vm-orders-1", ip: "127.0.0.12", service: "orders"},
		{name: "vm-orders-2", ip: "127.0.0.13", service: "orders"},
	}
	for _, v := range vms {
		step("VM %-12s %s: app %q on %s:8080, mesh agent inbound :15006, outbound :15001, admin :15000", v.name, v.ip, v.service, v.ip)
		v.app = startApp(v)
		defer v.app.Close()
		token := filepath.Join(dir, v.name+".token")
		if out, err := exec.CommandContext(ctx, "bin/mesh", "control", "token", "create", "--config", policies,
			"--service", v.service, "--node", v.name, "--ttl", "24h", "--output", token).CombinedOutput(); err != nil {
			return fmt.Errorf("mesh control token create for %s: %w\n%s", v.name, err, out)
		}
		agentCfg := filepath.Join(dir, "agent-"+v.name+".yaml")
		if err := os.WriteFile(agentCfg, []byte(agentConfig(v.accessLog(dir), tr.otlp, token, v)), 0o644); err != nil {
			return err
		}
		v.agent, err = startProc(dir, "agent-"+v.name, "bin/mesh", "agent", "--config", agentCfg,
			"--service", v.service, "--app-address", v.ip, "--app-port", "8080", "--app-health", "/health",
			"--inbound-addr", v.ip+":15006", "--outbound-addr", v.outbound(), "--admin-addr", v.ip+":15000",
			"--advertise-addr", v.ip, "--node", v.name, "--consul-addr", "127.0.0.1:8500",
			"--cache-dir", filepath.Join(dir, v.name), "--drain-period", "1s", "--log-format", "text",
			"--control-plane", "127.0.0.1:18000")
		if err != nil {
			return err
		}
		procs = append(procs, v.agent)
	}
	for _, v := range vms {
		if err := waitFor(ctx, 20*time.Second, func() bool { return get(v.admin()+"/ready") == nil }); err != nil {
			return fmt.Errorf("agent on %s not ready (see %s/agent-%s.log): %w", v.name, dir, v.name, err)
		}
	}
	for _, v := range vms {
		if err := waitFor(ctx, 20*time.Second, func() bool { return spiffeID(v) != "" }); err != nil {
			return fmt.Errorf("agent on %s holds no certificate from mesh control (see %s/agent-%s.log): %w", v.name, dir, v.name, err)
		}
		step("%-12s holds the workload identity %s (certificate from mesh control, key generated on the VM)", v.name, spiffeID(v))
	}
	step("all agents ready and registered in Consul; waiting for health checks to pass and the config to reach web's agent")
	if err := waitFor(ctx, 20*time.Second, func() bool { return passing("orders") == 2 && xdsEndpoints(vms[0], "orders") == 2 }); err != nil {
		return fmt.Errorf("orders instances not passing in Consul, or not pushed by mesh control: %w", err)
	}

	step("starting mesh gateway on %s (HTTPS :8443 for %s, admin :15000), routes and JWT checks pushed by mesh control", gatewayIP, gatewayHost)
	gwCfg := filepath.Join(dir, "gateway.yaml")
	if err := os.WriteFile(gwCfg, []byte(ed.gatewayConfig()), 0o644); err != nil {
		return err
	}
	gw, err := startProc(dir, "gateway", "bin/mesh", "gateway", "--config", gwCfg, "--https-addr", gatewayIP+":8443",
		"--http-addr", gatewayIP+":8080", "--admin-addr", gatewayIP+":15000", "--control-plane", "127.0.0.1:18000",
		"--consul-addr", "127.0.0.1:8500", "--node", "vm-edge-1", "--cache-dir", filepath.Join(dir, "gateway"),
		"--drain-period", "1s", "--log-format", "text")
	if err != nil {
		return err
	}
	procs = append(procs, gw)
	if err := waitFor(ctx, 20*time.Second, func() bool { return ed.get(ctx, nil).status == http.StatusUnauthorized }); err != nil {
		return fmt.Errorf("mesh gateway not routing (see %s/gateway.log): %w", dir, err)
	}

	whereToLook(vms, dir, tr)
	printStatus(ctx)
	d := &demo{ctx: ctx, web: vms[0], orders: vms[1:], client: &http.Client{Timeout: 5 * time.Second}}

	phase("1. Steady traffic",
		"The web app calls http://orders/... through its local agent (127.0.0.11:15001, Host: orders).",
		"Each line: caller -> its agent -> the callee's agent -> the app that answered, status, latency.")
	d.steady(10, every)

	phase("2. orders starts failing: its circuit breaker opens, callers fail fast",
		"Both orders instances now answer 500. After 10 requests with >= 50% errors the breaker",
		"in web's agent opens: calls get 503 circuit-open in microseconds instead of piling up.")
	d.breaker(every)

	phase("3. A burst: 600 requests at once from 50 connections",
		"mesh control gives orders a rate limit of 100 req/s per instance (bucket 20): the apps",
		"must never see more than that; the rest is refused at once with 429 + Retry-After.")
	d.burst(600, 50)

	phase("4. The edge: mesh gateway in front of orders",
		"https://"+gatewayHost+":8443/api/orders/... needs a JWT from demo-idp with scope orders:read (mesh control's",
		"control.gateway); the gateway checks it once, forwards sub as x-user-id (removing any the client",
		"sent) and limits each client IP to a burst of 10.")
	ed.show(ctx)

	phase("5. Authorization: a call refused by a rule, then allowed once the rule is added",
		"mesh control's YAML gets control.authorization for orders: default deny, only /health open;",
		"a reload (SIGHUP) pushes it as RBAC filters to the orders agents: web's calls get 403 rbac-denied.")
	if err := d.authorization(control, policies, cfgText, authzDenyAll, http.StatusForbidden, every); err != nil {
		return err
	}
	fmt.Println("\n    The rule {name: reads, action: allow, from: [web], methods: [GET], paths: [/orders/]} is added and reloaded:")
	if err := d.authorization(control, policies, cfgText, authzAllowReads, http.StatusOK, every); err != nil {
		return err
	}
	d.identities()

	phase("6. Traffic management: a canary of orders v2 at 10%, then 50%, testers routed by header, a rehearsed failure",
		"Each orders VM registers its version (Consul meta version=v1 / v2); mesh control groups them",
		"into subsets (clusters orders/v1, orders/v2) and pushes the routes as standard xDS.")
	if err := d.traffic(control, policies, cfgText); err != nil {
		return err
	}

	phase("7. Steady traffic until Ctrl-C", "")
	d.steady(0, every)
	summary(d.stats, d.lat)
	observed(vms, tr)
	return nil
}

// traces is where the agents send spans, if anywhere.
type traces struct {
	otlp   string           // OTLP/gRPC host:port; "" for no tracing
	query  string           // Jaeger query API base URL, when known
	ui     bool             // Jaeger serves its UI at query
	jaeger *meshtest.Jaeger // started by the demo, or nil
}

func (v *vm) accessLog(dir string) string { return filepath.Join(dir, "access-"+v.name+".log") }

// agentConfig is the part of an agent's config the flags do not set: its
// access log file, with a collector every trace sampled, its join token
// (a workload identity from mesh control, mTLS between the agents), the
// version its instance registers (Consul meta), if any; web declares that
// it calls orders (agent.dependencies), so its agent holds orders' config
// before the first call.
func agentConfig(accessLog, otlp, token string, v *vm) string {
	c := fmt.Sprintf("observability:\n  access_log:\n    output: %s\n    flush_interval: 200ms\n", accessLog)
	if otlp != "" {
		c += fmt.Sprintf("  tracing:\n    exporter: otlp-grpc\n    endpoint: %s\n    sample_ratio: 1\n    batch_timeout: 200ms\n", otlp)
	}
	c += fmt.Sprintf("agent:\n  join_token_file: %s\n", token)
	if version := versions[v.name]; version != "" {
		c += fmt.Sprintf("  meta: {version: %s}\n", version)
	}
	if v.service == "web" {
		c += "  dependencies: [orders]\n"
	}
	return c
}

// spiffeID is the workload identity v's agent holds, "" before its first
// certificate.
func spiffeID(v *vm) string {
	b, err := fetch(v.admin() + "/config_dump")
	if err != nil {
		return ""
	}
	var d struct {
		Identity struct {
			SPIFFEID string `json:"spiffe_id"`
			Serial   string `json:"serial"`
		} `json:"identity"`
	}
	if json.Unmarshal(b, &d) != nil || d.Identity.Serial == "" {
		return ""
	}
	return d.Identity.SPIFFEID
}

// observed prints what the agents recorded of the demo: request counts
// from web's /metrics, and a trace from Jaeger.
func observed(vms []*vm, tr traces) {
	fmt.Println()
	fmt.Println("What the mesh recorded (every request, whatever the app's language):")
	if b, err := fetch(vms[0].admin() + "/metrics"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "mesh_requests_total{") && strings.Contains(line, `direction="outbound"`) ||
				strings.HasPrefix(line, "mesh_circuit_breaker_transitions_total{") && !strings.HasSuffix(line, " 0") {
				fmt.Println("  web  " + line)
			}
		}
	}
	if tr.query == "" {
		return
	}
	time.Sleep(500 * time.Millisecond) // the last batch of spans
	b, err := fetch(tr.query + "/api/traces?limit=1&service=web")
	if err != nil {
		fmt.Println("  traces: " + err.Error())
		return
	}
	var body struct {
		Data []meshtest.JaegerTrace `json:"data"`
	}
	if json.Unmarshal(b, &body) != nil || len(body.Data) == 0 {
		fmt.Println("  traces: Jaeger holds none for web yet")
		return
	}
	t := body.Data[0]
	if tr.ui {
		fmt.Printf("  a trace in the Jaeger UI: %s/trace/%s\n", tr.query, t.TraceID)
	}
	fmt.Printf("  a trace from Jaeger's API: %s/api/traces/%s\n", tr.query, t.TraceID)
	for _, sp := range t.Spans {
		parent := sp.Parent()
		if parent == "" {
			parent = "(root)"
		}
		fmt.Printf("    span %s  %-6s %-5s %-7v status %v  parent %s\n", sp.SpanID, t.Service(sp), sp.OperationName,
			sp.Tag("span.kind"), sp.Tag("http.response.status_code"), parent)
	}
}

// jaegerHasUI reports whether the Jaeger at query serves its UI. A
// Jaeger built from the Go module (make jaeger) has none: its page is a
// placeholder saying so.
func jaegerHasUI(query string) bool {
	b, err := fetch(query + "/")
	return err == nil && strings.Contains(string(b), "<html") && !strings.Contains(string(b), "not compiled with the UI assets")
}

func fetch(url string) ([]byte, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// demo sends the traffic of each phase and prints what happened.
type demo struct {
	ctx    context.Context
	web    *vm
	orders []*vm
	client *http.Client
	n      int
	stats  map[string]int
	lat    []time.Duration
}

type result struct {
	status     int
	reason     string
	retryAfter string
	instance   string
	addr       string
	reqID      string
	peer       string // the caller's identity as the callee's app saw it
	took       time.Duration
	err        error
}

func (d *demo) call(client *http.Client) result { return d.request(client, nil) }

// request is one call from web to orders with the given extra headers.
func (d *demo) request(client *http.Client, hdr map[string]string) result {
	d.n++
	start := time.Now()
	req, _ := http.NewRequestWithContext(d.ctx, http.MethodGet, "http://"+d.web.outbound()+fmt.Sprintf("/orders/%d", d.n), nil)
	req.Host = "orders"
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	r := result{took: time.Since(start), err: err}
	if err != nil {
		return r
	}
	defer resp.Body.Close()
	var body struct {
		Instance string `json:"instance"`
		Addr     string `json:"addr"`
		ReqID    string `json:"x_request_id"`
		Peer     string `json:"x_mesh_peer_identity"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	r.status, r.reason = resp.StatusCode, resp.Header.Get("x-mesh-reason")
	r.instance, r.addr, r.reqID, r.peer = body.Instance, body.Addr, body.ReqID, body.Peer
	return r
}

func (d *demo) print(r result) {
	if d.stats == nil {
		d.stats = map[string]int{}
	}
	switch {
	case r.err != nil && d.ctx.Err() != nil:
		return
	case r.err != nil:
		fmt.Printf("  #%-4d web@127.0.0.11 -> agent 127.0.0.11:15001 -> ?  error: %v\n", d.n, r.err)
		d.stats["error"]++
	case r.reason != "":
		fmt.Printf("  #%-4d web@127.0.0.11 -> agent 127.0.0.11:15001  %d %s  %6.2fms  refused by the mesh: x-mesh-reason: %s\n",
			d.n, r.status, http.StatusText(r.status), ms(r.took), r.reason)
		d.stats[fmt.Sprintf("%d %s", r.status, r.reason)]++
	default:
		fmt.Printf("  #%-4d web@127.0.0.11 -> agent 127.0.0.11:15001 -> agent %s:15006 -> orders@%s  %d %s  %6.2fms  request-id %s\n",
			d.n, r.addr, r.instance, r.status, http.StatusText(r.status), ms(r.took), short(r.reqID))
		d.stats[fmt.Sprintf("%d from %s", r.status, r.instance)]++
		d.lat = append(d.lat, r.took)
	}
}

// steady sends n requests (0: until the demo ends), one per tick.
func (d *demo) steady(n int, every time.Duration) {
	for i := 0; (n == 0 || i < n) && d.ctx.Err() == nil; i++ {
		d.print(d.call(d.client))
		d.sleep(every)
	}
}

func (d *demo) burst(total, conns int) {
	for _, o := range d.orders {
		o.served.Store(0)
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: conns}}
	results := make(chan result, total)
	start := time.Now()
	var wg sync.WaitGroup
	work := make(chan struct{}, total)
	for i := 0; i < total; i++ {
		work <- struct{}{}
	}
	close(work)
	for c := 0; c < conns; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				req, _ := http.NewRequestWithContext(d.ctx, http.MethodGet, "http://"+d.web.outbound()+"/orders/burst", nil)
				req.Host = "orders"
				t0 := time.Now()
				resp, err := client.Do(req)
				r := result{took: time.Since(t0), err: err}
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					r.status, r.reason = resp.StatusCode, resp.Header.Get("x-mesh-reason")
					r.retryAfter = resp.Header.Get("Retry-After")
				}
				results <- r
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(results)
	counts := map[string]int{}
	var refused []time.Duration
	var first429 *result
	for r := range results {
		switch {
		case r.err != nil:
			counts["error"]++
		case r.status == http.StatusTooManyRequests:
			counts["429 rate-limited"]++
			refused = append(refused, r.took)
			if first429 == nil {
				first429 = &r
			}
		default:
			counts[fmt.Sprintf("%d %s", r.status, r.reason)]++
		}
	}
	fmt.Printf("  sent %d requests in %s:\n", total, elapsed.Round(time.Millisecond))
	for k, v := range counts {
		fmt.Printf("    %-28s %d\n", strings.TrimSpace(k), v)
	}
	// Envoy's token bucket: 20 tokens to start, 10 more every 100ms.
	fills := int(elapsed/(100*time.Millisecond)) + 1
	for _, o := range d.orders {
		fmt.Printf("    orders app %-12s served %d (its bucket allows at most 20 + %d fills x 10 = %d in %s)\n",
			o.name, o.served.Load(), fills, 20+10*fills, elapsed.Round(time.Millisecond))
	}
	if first429 != nil {
		fmt.Printf("    a refused request, as the caller sees it: %d %s, Retry-After: %s, x-mesh-reason: %s\n",
			first429.status, http.StatusText(first429.status), orNone(first429.retryAfter), orNone(first429.reason))
	}
	if len(refused) > 0 {
		sort.Slice(refused, func(i, j int) bool { return refused[i] < refused[j] })
		fmt.Printf("    refusals took p50 %.2fms, p99 %.2fms (round trip through both agents)\n",
			ms(refused[len(refused)/2]), ms(refused[len(refused)*99/100]))
	}
}

func (d *demo) breaker(every time.Duration) {
	for _, o := range d.orders {
		o.failing.Store(true)
	}
	// The breaker's 10s window still holds the steady phase's successes:
	// print the first few failures, then count them.
	failures, open := 0, 0
	for i := 0; i < 400 && open < 5 && d.ctx.Err() == nil; i++ {
		r := d.call(d.client)
		switch {
		case r.reason == "circuit-open":
			if open == 0 {
				fmt.Printf("  ... %d calls answered 500 in all; then:\n", failures)
				fmt.Println("  --> the breaker is open: no call reaches orders now, callers fail fast")
			}
			open++
			d.print(r)
		case r.status == http.StatusInternalServerError:
			failures++
			if failures <= 4 {
				d.print(r)
			}
		default:
			d.print(r)
		}
		d.sleep(20 * time.Millisecond)
	}
	fmt.Println("  --> orders recovers; after the 3s sleep window one probe goes through and closes the breaker")
	for _, o := range d.orders {
		o.failing.Store(false)
	}
	deadline := time.Now().Add(8 * time.Second)
	for time.Now().Before(deadline) && d.ctx.Err() == nil {
		r := d.call(d.client)
		d.print(r)
		if r.status == http.StatusOK {
			fmt.Println("  --> the breaker is closed again: traffic flows")
			return
		}
		d.sleep(500 * time.Millisecond)
	}
}

func (d *demo) sleep(t time.Duration) {
	select {
	case <-d.ctx.Done():
	case <-time.After(t):
	}
}

func phase(title string, lines ...string) {
	fmt.Println()
	fmt.Println("=== " + title)
	for _, l := range lines {
		if l != "" {
			fmt.Println("    " + l)
		}
	}
	fmt.Println()
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func summary(stats map[string]int, lat []time.Duration) {
	fmt.Println()
	fmt.Println("Summary:")
	keys := make([]string, 0, len(stats))
	for k := range stats {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Printf("  %-30s %d requests\n", k, stats[k])
	}
	if len(lat) > 0 {
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		fmt.Printf("  latency through two agents: p50 %.2fms, p99 %.2fms (includes the app)\n",
			float64(lat[len(lat)/2].Microseconds())/1000, float64(lat[len(lat)*99/100].Microseconds())/1000)
	}
	fmt.Println()
	fmt.Println("(Ctrl-C stops the demo; the same pointers were printed at the start.)")
}

// whereToLook says where to look while the demo runs.
func whereToLook(vms []*vm, dir string, tr traces) {
	fmt.Println()
	fmt.Println("Where to look while the demo runs:")
	fmt.Println("  mesh dashboard:     http://127.0.0.1:19000/ui/   (live service map, services, proxies)")
	fmt.Println("  mesh status:        bin/mesh status   ·   bin/mesh inspect --service orders   ·   bin/mesh inspect " + vms[0].service + "-" + vms[0].name + "-8080")
	fmt.Println("  Consul UI:          http://127.0.0.1:8500/ui/")
	fmt.Println("  mesh control:       http://127.0.0.1:19000/config_dump  http://127.0.0.1:19000/metrics")
	fmt.Println("  Consul API:         curl -s 'http://127.0.0.1:8500/v1/health/service/orders?passing' | jq")
	for _, v := range vms {
		fmt.Printf("  agent %-12s  %s/config_dump  %s/metrics  %s/ready\n", v.name, v.admin(), v.admin(), v.admin())
	}
	fmt.Printf("  metrics:            curl -s %s/metrics | grep -E '^mesh_(requests_total|rate_limited|circuit_breaker)'\n", vms[0].admin())
	fmt.Printf("  access logs:        tail -f %s/access-*.log   (one JSON line per request and hop)\n", dir)
	switch {
	case tr.query != "":
		if tr.ui {
			fmt.Printf("  traces, Jaeger UI:  %s/search?service=web  (open in a browser)\n", tr.query)
		} else {
			fmt.Printf("  traces, Jaeger UI:  none at %s: this Jaeger was built without the UI's assets (see README)\n", tr.query)
		}
		fmt.Printf("  traces, API:        curl -s '%s/api/traces?service=web&limit=5' | jq  (OTLP in on %s)\n", tr.query, tr.otlp)
	case tr.otlp != "":
		fmt.Printf("  traces:             sent over OTLP/gRPC to %s (MESH_DEMO_OTLP)\n", tr.otlp)
	default:
		fmt.Println("  traces:             off: `make jaeger`, or MESH_DEMO_OTLP=host:port for your own collector")
	}
	fmt.Println("  call it yourself:   curl -s -H 'Host: orders' http://127.0.0.11:15001/orders/1")
	fmt.Println("  as a proxy:         curl -s -x http://127.0.0.11:15001 http://orders/orders/1")
}

// printStatus prints `mesh status` once every proxy is in sync (or after
// 10 s, as it is then).
func printStatus(ctx context.Context) {
	var out []byte
	for deadline := time.Now().Add(10 * time.Second); ; {
		var err error
		out, err = exec.CommandContext(ctx, "bin/mesh", "status").CombinedOutput()
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	fmt.Println()
	fmt.Println("$ bin/mesh status")
	fmt.Print(string(out))
}

// startApp runs a tiny demo app on v.ip:8080 that says who it is.
func startApp(v *vm) *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		v.served.Add(1)
		w.Header().Set("Content-Type", "application/json")
		if v.failing.Load() {
			w.WriteHeader(http.StatusInternalServerError)
		}
		_ = json.NewEncoder(w).Encode(map[string]string{
			"service":              v.service,
			"instance":             v.name,
			"addr":                 v.ip,
			"path":                 r.URL.Path,
			"x_forwarded_for":      r.Header.Get("X-Forwarded-For"),
			"x_request_id":         r.Header.Get("X-Request-Id"),
			"x_user_id":            r.Header.Get("X-User-Id"),
			"x_mesh_peer_identity": r.Header.Get(wire.PeerIdentityHeader),
		})
	})
	srv := &http.Server{Addr: v.ip + ":8080", Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	ln, err := net.Listen("tcp", srv.Addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: app %s: %v\n", v.name, err)
		os.Exit(1)
	}
	go func() { _ = srv.Serve(ln) }()
	return srv
}

func startProc(dir, name, bin string, args ...string) (*exec.Cmd, error) {
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("%s missing: run `make build consul` first", bin)
	}
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return cmd, nil
}

var stopOnce sync.Map

func stopProc(cmd *exec.Cmd) {
	if _, done := stopOnce.LoadOrStore(cmd, true); done || cmd.Process == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}
}

// controlConfig is mesh control's config: where Consul is, the gateway's
// routes and the policies the demo shows.
func controlConfig(gateway string) string {
	return `consul:
  addr: 127.0.0.1:8500
control:
  xds_addr: 127.0.0.1:18000
  admin_addr: 127.0.0.1:19000
  # the dashboard's rates move every 2 s
  load_reporting_interval: 2s
` + gateway + controlPolicies
}

const controlPolicies = `policies:
  services:
    orders:
      timeout: 2s
      # 100 requests per second per instance, bursts of 20
      rate_limit: {max_tokens: 20, tokens_per_fill: 10, fill_interval: 100ms}
      # open after >= 10 requests with >= 50% errors; probe again after 3s
      circuit_breaker: {error_percent_threshold: 50, request_volume_threshold: 10, sleep_window: 3s}
      # keep outlier ejection out of the breaker demo
      outlier_detection: {consecutive_5xx: 0, consecutive_gateway_failure: 0}
`

// xdsEndpoints is how many endpoints of service v's agent routes to by
// the control plane's config.
func xdsEndpoints(v *vm, service string) int {
	resp, err := http.Get(v.admin() + "/config_dump")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var d struct {
		Source   string
		Services map[string][]json.RawMessage
	}
	if json.NewDecoder(resp.Body).Decode(&d) != nil || d.Source != "xds" {
		return 0
	}
	return len(d.Services[service])
}

func passing(service string) int {
	resp, err := http.Get("http://127.0.0.1:8500/v1/health/service/" + service + "?passing")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var entries []json.RawMessage
	_ = json.NewDecoder(resp.Body).Decode(&entries)
	return len(entries)
}

func get(url string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}

func waitFor(ctx context.Context, timeout time.Duration, ok func() bool) error {
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not after %s", timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

func step(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }

func short(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

func orNone(v string) string {
	if v == "" {
		return "(none)"
	}
	return v
}

func ifSet(prefix, v string) string {
	if v == "" {
		return ""
	}
	return prefix + v
}
