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
	"sync"
	"syscall"
	"time"
)

// vm is one simulated machine: a loopback address with an app and an agent.
type vm struct {
	name    string // node name
	ip      string
	service string
	agent   *exec.Cmd
	app     *http.Server
}

func (v *vm) admin() string    { return "http://" + v.ip + ":15000" }
func (v *vm) outbound() string { return v.ip + ":15001" }

func main() {
	duration := flag.Duration("duration", 0, "stop after this long (default: run until Ctrl-C)")
	rate := flag.Duration("every", 400*time.Millisecond, "time between demo requests")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	if err := run(ctx, *rate); err != nil {
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

	vms := []*vm{
		{name: "vm-web-1", ip: "127.0.0.11", service: "web"},
		{name: "vm-orders-1", ip: "127.0.0.12", service: "orders"},
		{name: "vm-orders-2", ip: "127.0.0.13", service: "orders"},
	}
	for _, v := range vms {
		step("VM %-12s %s: app %q on %s:8080, mesh agent inbound :15006, outbound :15001, admin :15000", v.name, v.ip, v.service, v.ip)
		v.app = startApp(v)
		defer v.app.Close()
		v.agent, err = startProc(dir, "agent-"+v.name, "bin/mesh", "agent",
			"--service", v.service, "--app-address", v.ip, "--app-port", "8080", "--app-health", "/health",
			"--inbound-addr", v.ip+":15006", "--outbound-addr", v.outbound(), "--admin-addr", v.ip+":15000",
			"--advertise-addr", v.ip, "--node", v.name, "--consul-addr", "127.0.0.1:8500",
			"--cache-dir", filepath.Join(dir, v.name), "--drain-period", "1s", "--log-format", "text")
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
	step("all agents ready and registered in Consul; waiting for health checks to pass")
	if err := waitFor(ctx, 20*time.Second, func() bool { return passing("orders") == 2 }); err != nil {
		return fmt.Errorf("orders instances not passing in Consul: %w", err)
	}

	whereToLook(vms)
	fmt.Println()
	fmt.Println("Traffic: the web app calls http://orders/... through its local agent (127.0.0.11:15001, Host: orders).")
	fmt.Println("Each line: caller -> its agent -> the callee's agent -> the app that answered, status, latency.")
	fmt.Println()
	stats := map[string]int{}
	var lat []time.Duration
	client := &http.Client{Timeout: 5 * time.Second}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for i := 1; ctx.Err() == nil; i++ {
		start := time.Now()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+vms[0].outbound()+fmt.Sprintf("/orders/%d", i), nil)
		req.Host = "orders"
		resp, err := client.Do(req)
		took := time.Since(start)
		switch {
		case err != nil && ctx.Err() != nil:
		case err != nil:
			fmt.Printf("  #%-3d web@127.0.0.11 -> agent 127.0.0.11:15001 -> ?  error: %v\n", i, err)
			stats["error"]++
		default:
			var body struct {
				Instance string `json:"instance"`
				Addr     string `json:"addr"`
				XFF      string `json:"x_forwarded_for"`
				ReqID    string `json:"x_request_id"`
			}
			_ = json.NewDecoder(resp.Body).Decode(&body)
			resp.Body.Close()
			reason := resp.Header.Get("x-mesh-reason")
			fmt.Printf("  #%-3d web@127.0.0.11 -> agent 127.0.0.11:15001 -> agent %s:15006 -> orders@%s  %d %s  %6.2fms  request-id %s%s\n",
				i, body.Addr, body.Instance, resp.StatusCode, http.StatusText(resp.StatusCode), float64(took.Microseconds())/1000, short(body.ReqID), ifSet(" x-mesh-reason: ", reason))
			stats[fmt.Sprintf("%d from %s", resp.StatusCode, body.Instance)]++
			lat = append(lat, took)
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
	summary(stats, lat)
	return nil
}

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
func whereToLook(vms []*vm) {
	fmt.Println()
	fmt.Println("Where to look while the demo runs:")
	fmt.Println("  Consul UI:          http://127.0.0.1:8500/ui/")
	fmt.Println("  Consul API:         curl -s 'http://127.0.0.1:8500/v1/health/service/orders?passing' | jq")
	for _, v := range vms {
		fmt.Printf("  agent %-12s  %s/config_dump  %s/metrics  %s/ready\n", v.name, v.admin(), v.admin(), v.admin())
	}
	fmt.Println("  call it yourself:   curl -s -H 'Host: orders' http://127.0.0.11:15001/orders/1")
	fmt.Println("  as a proxy:         curl -s -x http://127.0.0.11:15001 http://orders/orders/1")
}

// startApp runs a tiny demo app on v.ip:8080 that says who it is.
func startApp(v *vm) *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{
			"service":         v.service,
			"instance":        v.name,
			"addr":            v.ip,
			"path":            r.URL.Path,
			"x_forwarded_for": r.Header.Get("X-Forwarded-For"),
			"x_request_id":    r.Header.Get("X-Request-Id"),
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

func ifSet(prefix, v string) string {
	if v == "" {
		return ""
	}
	return prefix + v
}
