package meshtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// Jaeger is a running Jaeger v2 all-in-one (OTLP receivers, memory
// storage, query API), every port on 127.0.0.1 and free.
type Jaeger struct {
	// OTLPGRPC and OTLPHTTP are the OTLP receivers, host:port.
	OTLPGRPC, OTLPHTTP string
	// QueryURL is the query API's base URL (http://host:port).
	QueryURL string
	cmd      *exec.Cmd
	exited   chan struct{}
	dir      string
	logf     *os.File
}

// queryClient talks to the query API without keep-alive: Jaeger does not
// exit on SIGTERM while a client holds an idle connection open.
var queryClient = &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}, Timeout: 10 * time.Second}

// JaegerBinary is the binary `make jaeger` builds; MESH_JAEGER_BIN
// overrides it.
func JaegerBinary() string {
	if p := os.Getenv("MESH_JAEGER_BIN"); p != "" {
		return p
	}
	return filepath.Join(RepoRoot(), "bin", "jaeger")
}

// jaegerConfig keeps only what tests need: OTLP in, memory storage, the
// query API; no internal telemetry listener, no fixed port anywhere.
const jaegerConfig = `service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_storage:
    backends:
      mem:
        memory:
          max_traces: 10000
  jaeger_query:
    storage:
      traces: mem
    http:
      endpoint: %s
    grpc:
      endpoint: %s
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: %s
      http:
        endpoint: %s
processors:
  batch:
    timeout: 50ms
exporters:
  jaeger_storage_exporter:
    trace_storage: mem
`

// StartJaeger starts Jaeger and waits until its query API and OTLP
// receivers answer. It is meant for TestMain: call Stop when the package's
// tests end. A missing binary is an error, never a skip. A port clash
// starts again on new ports, up to 3 times; a Jaeger that exits is
// reported at once, with the end of its log.
func StartJaeger() (*Jaeger, error) {
	bin := JaegerBinary()
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("jaeger binary %s missing (run `make jaeger`): %w", bin, err)
	}
	const attempts = 3
	for attempt := 1; ; attempt++ {
		j, err := startJaeger(bin, FreePorts("127.0.0.1", 4))
		if err == nil {
			return j, nil
		}
		if !errors.Is(err, errJaegerPortTaken) || attempt == attempts {
			return nil, err
		}
	}
}

var errJaegerPortTaken = errors.New("jaeger could not bind its ports")

func startJaeger(bin string, ports []int) (*Jaeger, error) {
	dir, err := os.MkdirTemp("", "mesh-jaeger-")
	if err != nil {
		return nil, fmt.Errorf("start jaeger: %w", err)
	}
	addr := func(i int) string { return fmt.Sprintf("127.0.0.1:%d", ports[i]) }
	j := &Jaeger{dir: dir, OTLPGRPC: addr(0), OTLPHTTP: addr(1), exited: make(chan struct{})}
	queryHTTP, queryGRPC := addr(2), addr(3)
	j.QueryURL = "http://" + queryHTTP
	cfgPath := filepath.Join(dir, "jaeger.yaml")
	if err := os.WriteFile(cfgPath, fmt.Appendf(nil, jaegerConfig, queryHTTP, queryGRPC, j.OTLPGRPC, j.OTLPHTTP), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start jaeger: %w", err)
	}
	if j.logf, err = os.Create(filepath.Join(dir, "jaeger.log")); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start jaeger: %w", err)
	}
	j.cmd = exec.Command(bin, "--config", cfgPath)
	j.cmd.Env = append(os.Environ(), "JAEGER_LISTEN_HOST=127.0.0.1")
	j.cmd.Stdout, j.cmd.Stderr = j.logf, j.logf
	j.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := j.cmd.Start(); err != nil {
		j.logf.Close()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start jaeger: %w", err)
	}
	go func() { _ = j.cmd.Wait(); close(j.exited) }()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-j.exited:
			log := j.Log()
			j.Stop()
			if line, ok := portClash(log); ok {
				return nil, fmt.Errorf("%w (%s %s %s %s): %s", errJaegerPortTaken, j.OTLPGRPC, j.OTLPHTTP, queryHTTP, queryGRPC, line)
			}
			return nil, fmt.Errorf("jaeger exited at start; last lines of its log:\n%s", tail(log, 20))
		case <-time.After(100 * time.Millisecond):
		}
		if j.ready() {
			return j, nil
		}
	}
	log := j.Log()
	j.Stop()
	return nil, fmt.Errorf("jaeger not ready in 60s; last lines of its log:\n%s", tail(log, 20))
}

// ready reports whether the query API answers and both OTLP ports accept.
func (j *Jaeger) ready() bool {
	for _, addr := range []string{j.OTLPGRPC, j.OTLPHTTP} {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		c.Close()
	}
	resp, err := queryClient.Get(j.QueryURL + "/api/services")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Log returns what Jaeger printed so far.
func (j *Jaeger) Log() string {
	b, _ := os.ReadFile(filepath.Join(j.dir, "jaeger.log"))
	return string(b)
}

// Stop terminates Jaeger (SIGTERM, then SIGKILL after 2s: a graceful stop
// waits for clients such as an OTLP gRPC exporter to hang up) and removes its
// files. The collector is gone afterwards: tests use that to check that a
// dead collector does not slow requests.
func (j *Jaeger) Stop() {
	if j.cmd != nil && j.cmd.Process != nil {
		_ = j.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-j.exited:
		case <-time.After(2 * time.Second):
			_ = syscall.Kill(-j.cmd.Process.Pid, syscall.SIGKILL)
			<-j.exited
		}
	}
	if j.logf != nil {
		j.logf.Close()
	}
	os.RemoveAll(j.dir)
}

// JaegerTrace is a trace as Jaeger's query API (/api/traces) returns it.
type JaegerTrace struct {
	TraceID   string `json:"traceID"`
	Spans     []JaegerSpan
	Processes map[string]struct {
		ServiceName string `json:"serviceName"`
	} `json:"processes"`
}

// JaegerSpan is one span of a JaegerTrace.
type JaegerSpan struct {
	TraceID       string `json:"traceID"`
	SpanID        string `json:"spanID"`
	OperationName string `json:"operationName"`
	ProcessID     string `json:"processID"`
	References    []struct {
		RefType string `json:"refType"`
		TraceID string `json:"traceID"`
		SpanID  string `json:"spanID"`
	} `json:"references"`
	Tags []struct {
		Key   string `json:"key"`
		Type  string `json:"type"`
		Value any    `json:"value"`
	} `json:"tags"`
}

// Service is the name of the service that emitted s in trace t.
func (t JaegerTrace) Service(s JaegerSpan) string { return t.Processes[s.ProcessID].ServiceName }

// Parent is the span s is a child of, "" for a root span.
func (s JaegerSpan) Parent() string {
	for _, r := range s.References {
		if r.RefType == "CHILD_OF" {
			return r.SpanID
		}
	}
	return ""
}

// Tag returns the value of the span tag key, nil when absent.
func (s JaegerSpan) Tag(key string) any {
	for _, t := range s.Tags {
		if t.Key == key {
			return t.Value
		}
	}
	return nil
}

// Traces returns the traces Jaeger holds for service.
func (j *Jaeger) Traces(ctx context.Context, service string) ([]JaegerTrace, error) {
	return j.query(ctx, "/api/traces?limit=100&service="+url.QueryEscape(service))
}

// Trace returns one trace by its hex id.
func (j *Jaeger) Trace(ctx context.Context, traceID string) (JaegerTrace, error) {
	ts, err := j.query(ctx, "/api/traces/"+url.PathEscape(traceID))
	if err != nil {
		return JaegerTrace{}, err
	}
	if len(ts) != 1 {
		return JaegerTrace{}, fmt.Errorf("trace %s: %d traces returned", traceID, len(ts))
	}
	return ts[0], nil
}

func (j *Jaeger) query(ctx context.Context, path string) ([]JaegerTrace, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, j.QueryURL+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := queryClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("jaeger query %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("jaeger query %s: status %s", path, resp.Status)
	}
	var body struct {
		Data []JaegerTrace `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("jaeger query %s: decode: %w", path, err)
	}
	return body.Data, nil
}
