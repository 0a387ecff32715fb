package observability_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/observability"
)

// logLines parses every line of an access log as a JSON object.
func logLines(t *testing.T, text string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("access log line is not JSON: %v\n%s", err, line)
		}
		out = append(out, m)
	}
	return out
}

// TestAccessLogOneLinePerRequest checks the documented fields of each
// agent's lines for the known mix, and that secrets in headers and query
// strings never reach the log.
func TestAccessLogOneLinePerRequest(t *testing.T) {
	th := startTwoHop(t, defaultObs(), defaultObs())
	sendMix(t, th)
	secrets := http.Header{
		"Authorization":       {"Bearer s3cr3t-bearer"},
		"Cookie":              {"session=s3cr3t-cookie"},
		"X-Api-Key":           {"s3cr3t-apikey"},
		"Proxy-Authorization": {"Basic s3cr3t-proxy"},
		"X-Request-Id":        {"req-with-secrets"},
		"User-Agent":          {"mesh-test/1"},
	}
	th.do(t, "GET", "orders", "/ok?token=s3cr3t-query&x=1", nil, secrets)
	th.stop() // flushes

	total, atB := 1, 1
	for _, m := range mix {
		total += m.n
		if m.reachesB {
			atB += m.n
		}
	}
	linesA, linesB := logLines(t, th.logA.String()), logLines(t, th.logB.String())
	if len(linesA) != total || len(linesB) != atB {
		t.Fatalf("got %d lines at A and %d at B, want %d and %d", len(linesA), len(linesB), total, atB)
	}
	for _, text := range []string{th.logA.String(), th.logB.String()} {
		if strings.Contains(text, "s3cr3t") {
			t.Errorf("a secret reached the access log:\n%s", text)
		}
	}

	// Every line has the always-present fields; request ids match across hops.
	idsA := map[string]bool{}
	for _, l := range linesA {
		for _, f := range []string{"time", "request_id", "direction", "local_service", "method", "authority",
			"path", "protocol", "status", "bytes_in", "bytes_out", "duration_ms", "caller"} {
			if _, ok := l[f]; !ok {
				t.Errorf("A line lacks %q: %v", f, l)
			}
		}
		if _, err := time.Parse(time.RFC3339Nano, fmt.Sprint(l["time"])); err != nil {
			t.Errorf("time %v: %v", l["time"], err)
		}
		idsA[fmt.Sprint(l["request_id"])] = true
	}
	for _, l := range linesB {
		if !idsA[fmt.Sprint(l["request_id"])] {
			t.Errorf("B logged request id %v that A did not", l["request_id"])
		}
	}

	tests := []struct {
		name  string
		lines []map[string]any
		match func(map[string]any) bool
		want  map[string]any
	}{
		{
			name: "A: app 200 with body", lines: linesA,
			match: func(l map[string]any) bool { return l["path"] == "/echo" },
			want: map[string]any{"direction": "outbound", "local_service": "web", "method": "POST", "authority": "orders.mesh",
				"protocol": "HTTP/1.1", "status": 200.0, "bytes_in": 500.0, "bytes_out": 2.0, "upstream_service": "orders"},
		},
		{
			name: "B: rate limited", lines: linesB,
			match: func(l map[string]any) bool { return l["path"] == "/limited" },
			want: map[string]any{"direction": "inbound", "local_service": "orders", "status": 429.0,
				"reason": "rate-limited", "upstream_service": "orders", "bytes_out": 19.0},
		},
		{
			name: "A: rate limited by B", lines: linesA,
			match: func(l map[string]any) bool { return l["path"] == "/limited" },
			want:  map[string]any{"status": 429.0, "reason": "rate-limited"},
		},
		{
			name: "A: breaker open", lines: linesA,
			match: func(l map[string]any) bool { return l["path"] == "/breaker" },
			want:  map[string]any{"status": 503.0, "reason": "circuit-open", "upstream_service": "orders"},
		},
		{
			name: "A: no route", lines: linesA,
			match: func(l map[string]any) bool { return l["authority"] == "nosuch" },
			want:  map[string]any{"status": 503.0, "reason": "no-route"},
		},
		{
			name: "A: request with secrets keeps its id, logs path without query", lines: linesA,
			match: func(l map[string]any) bool { return l["request_id"] == "req-with-secrets" },
			want:  map[string]any{"path": "/ok", "status": 200.0, "user_agent": "mesh-test/1", "bytes_out": 1000.0},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			i := slices.IndexFunc(tc.lines, tc.match)
			if i < 0 {
				t.Fatal("no matching line")
			}
			for k, v := range tc.want {
				if tc.lines[i][k] != v {
					t.Errorf("%s = %#v, want %#v (line %v)", k, tc.lines[i][k], v, tc.lines[i])
				}
			}
		})
	}
	// No trace fields without tracing.
	if _, ok := linesA[0]["trace_id"]; ok {
		t.Errorf("trace_id logged with tracing off: %v", linesA[0])
	}
}

// TestAccessLogFieldsAndSampling checks the configurable field set, the
// sampling ratio and the text format.
func TestAccessLogFieldsAndSampling(t *testing.T) {
	tests := []struct {
		name   string
		edit   func(*config.AccessLog)
		lines  int
		check  func(t *testing.T, text string)
		isJSON bool
	}{
		{
			name: "chosen fields only", edit: func(c *config.AccessLog) { c.Fields = []string{"status", "path"} },
			lines: 10, isJSON: true,
			check: func(t *testing.T, text string) {
				for _, l := range logLines(t, text) {
					if len(l) != 3 || l["status"] != 200.0 || l["path"] != "/x" || l["time"] == nil {
						t.Errorf("line %v, want only time, status and path", l)
					}
				}
			},
		},
		{name: "sampled out", edit: func(c *config.AccessLog) { c.SampleRatio = 0 }, lines: 0},
		{name: "disabled", edit: func(c *config.AccessLog) { c.Enabled = false }, lines: 0},
		{
			name: "text format", edit: func(c *config.AccessLog) { c.Format = "text" }, lines: 10,
			check: func(t *testing.T, text string) {
				if !strings.Contains(text, "status=200") || strings.HasPrefix(text, "{") {
					t.Errorf("not the text format:\n%s", text)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := defaultObs()
			tc.edit(&c.AccessLog)
			out := &meshtest.SyncBuffer{}
			obs, err := observability.NewObserver(c, observability.Options{Service: "orders", Registry: prometheus.NewRegistry(), Stdout: out})
			if err != nil {
				t.Fatal(err)
			}
			addr := serve(t, "127.0.0.35", obs.Instrument(observability.Inbound, "orders",
				http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})))
			for i := 0; i < 10; i++ {
				resp, err := client.Get("http://" + addr + "/x")
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
			}
			if err := obs.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			text := out.String()
			if n := strings.Count(text, "\n"); n != tc.lines {
				t.Fatalf("%d lines, want %d:\n%s", n, tc.lines, text)
			}
			if tc.check != nil {
				tc.check(t, text)
			}
		})
	}
}

// TestAccessLogReopenOnSIGUSR1 rotates the log file the way logrotate
// does (rename, then SIGUSR1) and checks that no line is lost and new
// lines go to the new file.
func TestAccessLogReopenOnSIGUSR1(t *testing.T) {
	// Keep SIGUSR1 from killing the test binary whatever Run's timing.
	guard := make(chan os.Signal, 1)
	signal.Notify(guard, syscall.SIGUSR1)
	defer signal.Stop(guard)

	dir := t.TempDir()
	path := filepath.Join(dir, "access.log")
	c := defaultObs()
	c.AccessLog.Output = path
	c.AccessLog.FlushInterval = 50 * time.Millisecond
	obs, err := observability.NewObserver(c, observability.Options{Service: "orders", Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- obs.Run(ctx) }()
	addr := serve(t, "127.0.0.36", obs.Instrument(observability.Inbound, "orders",
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})))
	get := func(p string) {
		resp, err := client.Get("http://" + addr + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	for i := 0; i < 3; i++ {
		get("/before")
	}
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	meshtest.Eventually(t, 5*time.Second, func() error {
		_, err := os.Stat(path)
		return err
	})
	for i := 0; i < 2; i++ {
		get("/after")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	rotated, _ := os.ReadFile(path + ".1")
	current, _ := os.ReadFile(path)
	if n := strings.Count(string(rotated), `"path":"/before"`); n != 3 || strings.Contains(string(rotated), "/after") {
		t.Errorf("rotated file has %d /before lines, want 3 and no /after:\n%s", n, rotated)
	}
	if n := strings.Count(string(current), `"path":"/after"`); n != 2 || strings.Contains(string(current), "/before") {
		t.Errorf("new file has %d /after lines, want 2 and no /before:\n%s", n, current)
	}
}

// TestUpgradeThroughInstrument relays an HTTP/1.1 upgrade (as WebSocket
// does) through an instrumented inbound agent: the bytes flow both ways
// after the 101, and the access log records a 101.
func TestUpgradeThroughInstrument(t *testing.T) {
	app := serve(t, "127.0.0.44", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			http.Error(w, "want upgrade", http.StatusBadRequest)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		_ = brw.Flush()
		line, _ := brw.ReadString('\n')
		_, _ = c.Write([]byte("echo " + line))
	}))
	out := &meshtest.SyncBuffer{}
	obs, err := observability.NewObserver(defaultObs(), observability.Options{Service: "orders", Registry: observability.NewRegistry(), Stdout: out})
	if err != nil {
		t.Fatal(err)
	}
	fwd := newForwarder()
	defer fwd.CloseIdleConnections()
	in := serve(t, "127.0.0.44", obs.Instrument(observability.Inbound, "orders", inbound(fwd, app)))

	c, err := net.Dial("tcp", in)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.WriteString(c, "GET /chat HTTP/1.1\r\nHost: orders\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	_, _ = io.WriteString(c, "hello\n")
	if got, _ := br.ReadString('\n'); got != "echo hello\n" {
		t.Fatalf("relayed %q, want %q", got, "echo hello\n")
	}
	c.Close()
	meshtest.Eventually(t, 5*time.Second, func() error {
		if !strings.Contains(out.String(), `"status":101`) {
			return fmt.Errorf("no 101 line yet: %q", out.String())
		}
		return nil
	})
	_ = obs.Close(context.Background())
}
