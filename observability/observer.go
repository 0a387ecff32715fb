package observability

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/meshvm/mesh/config"
)

// Directions of a listener, as Instrument takes them.
const (
	Inbound  = "inbound"
	Outbound = "outbound"
)

// Observer instruments an agent's listeners: for every request, the RED
// metrics, one access log line and a span, recorded once at the outside of
// the handler chain. It also holds the governance and infrastructure
// metrics (Metrics). Run drives its background work (span export, log
// flushing, log reopening on SIGUSR1).
type Observer struct {
	cfg     config.Observability
	log     zerolog.Logger
	req     *requestMetrics
	metrics *Metrics
	access  *accessLog // nil when access logging is off
	tracing *tracing   // nil when tracing is off

	closeOnce sync.Once
	closeErr  error
}

// Options are what NewObserver needs besides the config.
type Options struct {
	// Service is the local service's name (the tracing service.name).
	Service string
	// Registry receives every metric.
	Registry prometheus.Registerer
	// Log is the process logger (a component field is added).
	Log zerolog.Logger
	// Stdout is where output "stdout" goes (default os.Stdout).
	Stdout io.Writer
}

// NewObserver builds an Observer from the observability section. It opens
// the access log file if one is configured, and creates the trace exporter
// without connecting; nothing runs until Run. Building a new Observer on the
// same registry (a config reload) reuses the metrics already registered, so
// counters carry on.
func NewObserver(cfg config.Observability, o Options) (*Observer, error) {
	if o.Stdout == nil {
		o.Stdout = os.Stdout
	}
	obs := &Observer{cfg: cfg, log: o.Log.With().Str("component", "observability").Logger()}
	var err error
	if obs.req, err = newRequestMetrics(o.Registry); err != nil {
		return nil, fmt.Errorf("register request metrics: %w", err)
	}
	if obs.metrics, err = NewMetrics(o.Registry); err != nil {
		return nil, fmt.Errorf("register agent metrics: %w", err)
	}
	logErrors := prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "access_log_write_errors_total",
		Help: "Access log writes that failed (disk full, closed pipe)."})
	if err := register(o.Registry, &logErrors); err != nil {
		return nil, fmt.Errorf("register access log metrics: %w", err)
	}
	if cfg.AccessLog.Enabled {
		if obs.access, err = newAccessLog(cfg.AccessLog, o.Stdout, logErrors); err != nil {
			return nil, err
		}
	}
	if cfg.Tracing.Exporter != "" && cfg.Tracing.Exporter != "none" {
		if obs.tracing, err = newTracing(cfg.Tracing, o.Service, o.Registry); err != nil {
			if obs.access != nil {
				_ = obs.access.out.Close()
			}
			return nil, err
		}
	}
	return obs, nil
}

// Metrics returns the governance and infrastructure metric helpers.
func (o *Observer) Metrics() *Metrics { return o.metrics }

// Run exports spans in batches, flushes the access log every
// flush_interval, and reopens an access log file on SIGUSR1, until ctx is
// done; then it flushes and closes as Close does, within the export
// timeout or 5s, whichever is shorter.
func (o *Observer) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	if o.tracing != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o.tracing.queue.run(ctx)
		}()
	}
	var flush <-chan time.Time
	if o.access != nil && o.cfg.AccessLog.FlushInterval > 0 {
		t := time.NewTicker(o.cfg.AccessLog.FlushInterval)
		defer t.Stop()
		flush = t.C
	}
	var usr1 chan os.Signal
	if o.access != nil && o.access.out.path != "" {
		usr1 = make(chan os.Signal, 1)
		signal.Notify(usr1, syscall.SIGUSR1)
		defer signal.Stop(usr1)
	}
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-flush:
			if err := o.access.out.Flush(); err != nil {
				o.log.Warn().Err(err).Msg("access log flush failed")
			}
		case <-usr1:
			if err := o.ReopenAccessLog(); err != nil {
				o.log.Error().Err(err).Msg("access log reopen failed")
			} else {
				o.log.Info().Str("path", o.access.out.path).Msg("access log reopened")
			}
		}
	}
	wg.Wait()
	timeout := 5 * time.Second // a dead collector must not hold a shutdown long
	if o.tracing != nil {
		timeout = min(timeout, o.cfg.Tracing.ExportTimeout)
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	return o.Close(cctx)
}

// Reload applies what of a new observability section can change while
// requests flow: the access log's fields and sample ratio and the trace
// sample ratio, from the next request on. The other settings (turning the
// access log or tracing on or off, outputs, formats, exporter, queue and
// batch sizes) need a restart: Reload returns the section now in force
// (next's live settings, the running values of the others) and the paths
// of the changed settings it kept.
func (o *Observer) Reload(next config.Observability) (inForce config.Observability, needRestart []string) {
	// Which settings need a restart is config's (config.RestartOnly), the
	// list `mesh config diff` and the agent's reload use too.
	old, nc := config.Config{Observability: o.cfg}, config.Config{Observability: next}
	needRestart = config.RestartOnly(config.RoleAgent, old, nc)
	inForce = o.cfg
	n, nt := next.AccessLog, next.Tracing
	// The fields were validated with the config; set cannot fail on them.
	if o.access != nil && o.access.set(n.Fields, n.SampleRatio) != nil {
		return inForce, needRestart
	}
	inForce.AccessLog.Fields, inForce.AccessLog.SampleRatio = slices.Clone(n.Fields), n.SampleRatio
	if o.tracing != nil {
		o.tracing.sampler.set(nt.SampleRatio)
	}
	inForce.Tracing.SampleRatio = nt.SampleRatio
	return inForce, needRestart
}

// ReopenAccessLog reopens the access log file (what SIGUSR1 does).
func (o *Observer) ReopenAccessLog() error {
	if o.access == nil {
		return nil
	}
	return o.access.out.Reopen()
}

// Flush exports the queued spans and writes out buffered access log lines.
func (o *Observer) Flush(ctx context.Context) error {
	var errs []error
	if o.access != nil {
		errs = append(errs, o.access.out.Flush())
	}
	if o.tracing != nil {
		errs = append(errs, o.tracing.queue.ForceFlush(ctx))
	}
	return errors.Join(errs...)
}

// Close exports the queued spans, shuts the exporter down, and flushes
// and closes the access log, within ctx. Run calls it when it ends; call
// it yourself only when Run was never started. It is idempotent.
func (o *Observer) Close(ctx context.Context) error {
	o.closeOnce.Do(func() {
		var errs []error
		if o.tracing != nil {
			errs = append(errs, o.tracing.queue.close(ctx))
			errs = append(errs, o.tracing.provider.Shutdown(ctx))
		}
		if o.access != nil {
			errs = append(errs, o.access.out.Close())
		}
		o.closeErr = errors.Join(errs...)
	})
	return o.closeErr
}

// Instrument wraps the handler of one listener. direction is Inbound
// (requests from other agents to the local app: a server span) or
// Outbound (requests from the app to other services: a client span);
// localService is the service this agent serves.
//
// For each request it reads the caller's trace context (W3C, else B3),
// starts the span, writes the configured trace headers and an
// X-Request-Id (when missing) on the request for the layers inside to
// forward, puts a Record in the request's context, and when h returns
// records the RED metrics and writes the access log line.
func (o *Observer) Instrument(direction, localService string, h http.Handler) http.Handler {
	kind := trace.SpanKindClient
	if direction == Inbound {
		kind = trace.SpanKindServer
	}
	return &instrumented{
		o: o, next: h, direction: direction, local: localService, kind: kind,
		inFlight: o.req.inFlight.WithLabelValues(direction, localService),
		series:   &seriesCache{m: o.req, direction: direction, local: localService},
		startOpt: trace.WithSpanKind(kind),
	}
}

type instrumented struct {
	o         *Observer
	next      http.Handler
	direction string
	local     string
	kind      trace.SpanKind
	inFlight  prometheus.Gauge
	series    *seriesCache
	startOpt  trace.SpanStartOption
}

func (in *instrumented) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := &Record{
		parent:       r.Context(),
		Direction:    in.direction,
		LocalService: in.local,
		start:        time.Now(),
	}
	if in.direction == Inbound {
		rec.UpstreamService = in.local
	}
	in.inFlight.Inc()

	if id := r.Header["X-Request-Id"]; len(id) > 0 {
		rec.requestID = id[0]
	} else {
		rec.requestID = NewRequestID()
		r.Header["X-Request-Id"] = []string{rec.requestID}
	}
	if t := in.o.tracing; t != nil {
		ctx := t.extract(rec.parent, r.Header)
		ctx, rec.span = t.tracer.Start(ctx, r.Method, in.startOpt)
		rec.parent = ctx
		if rec.span.IsRecording() {
			in.startAttributes(rec.span, r)
		}
		rec.inject.h = r.Header
		t.inject.Inject(ctx, &rec.inject)
	}

	rec.w.ResponseWriter = w
	r2 := r.WithContext(rec)
	if r.Body != nil && r.Body != http.NoBody {
		rec.body.rc = r.Body
		r2.Body = &rec.body
	}
	defer in.finish(rec, r2)
	in.next.ServeHTTP(&rec.w, r2)
}

// finish records a request when its handler returned or panicked (a
// panic is re-raised: net/http aborts the response).
func (in *instrumented) finish(rec *Record, r *http.Request) {
	p := recover()
	end := time.Now()
	in.inFlight.Dec()
	status := rec.w.status
	if status == 0 && p == nil {
		status = http.StatusOK // net/http sends 200 for a handler that wrote nothing
	}
	reason := rec.Reason
	if reason == "" && p != nil {
		reason = "response-aborted"
	}

	upstream := labelUnknown
	if rec.UpstreamService != "" {
		upstream = in.o.req.upstreams.value(rec.UpstreamService)
	}
	reasonLabel := labelNone
	if reason != "" {
		reasonLabel = in.o.req.reasons.value(reason)
	}
	s := in.series.get(seriesKey{upstream: upstream, class: uint8(min(status/100, 6)), reason: reasonLabel})
	s.requests.Inc()
	secs := end.Sub(rec.start).Seconds()
	sampled := rec.span != nil && rec.span.SpanContext().IsSampled()
	if eo, ok := s.duration.(prometheus.ExemplarObserver); ok && sampled {
		eo.ObserveWithExemplar(secs, prometheus.Labels{"trace_id": rec.span.SpanContext().TraceID().String()})
	} else {
		s.duration.Observe(secs)
	}
	if n := rec.body.n.Load(); n > 0 {
		s.bytesIn.Add(float64(n))
	}
	if rec.w.written > 0 {
		s.bytesOut.Add(float64(rec.w.written))
	}

	if rec.span != nil {
		if rec.span.IsRecording() {
			in.endAttributes(rec, status, reason)
		}
		rec.span.End(trace.WithTimestamp(end))
	}
	if a := in.o.access; a != nil && a.sampled() {
		a.write(rec, r, status, reason, end)
	}
	if p != nil {
		panic(p)
	}
}

// startAttributes sets the HTTP semantic-convention attributes known when
// the request arrives. Query strings are left out: they carry tokens.
func (in *instrumented) startAttributes(span trace.Span, r *http.Request) {
	host, port := splitHostPort(r.Host)
	attrs := make([]attribute.KeyValue, 0, 10)
	attrs = append(attrs,
		semconv.HTTPRequestMethodKey.String(r.Method),
		semconv.URLPath(r.URL.Path),
		semconv.URLScheme("http"),
		semconv.NetworkProtocolVersion(protocolVersion(r)),
		attribute.String("mesh.direction", in.direction),
	)
	if host != "" {
		attrs = append(attrs, semconv.ServerAddress(host))
	}
	if port > 0 {
		attrs = append(attrs, semconv.ServerPort(port))
	}
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if in.kind == trace.SpanKindServer {
			attrs = append(attrs, semconv.ClientAddress(ip))
		}
		attrs = append(attrs, semconv.NetworkPeerAddress(ip))
	}
	if ua := r.Header["User-Agent"]; len(ua) > 0 {
		attrs = append(attrs, semconv.UserAgentOriginal(ua[0]))
	}
	span.SetAttributes(attrs...)
}

// endAttributes sets what is known when the response is done, and the
// span status: an error for 5xx (server and client) and 4xx (client).
func (in *instrumented) endAttributes(rec *Record, status int, reason string) {
	span := rec.span
	attrs := make([]attribute.KeyValue, 0, 6)
	if status > 0 {
		attrs = append(attrs, semconv.HTTPResponseStatusCode(status))
	}
	if rec.UpstreamService != "" {
		attrs = append(attrs, attribute.String("mesh.upstream_service", rec.UpstreamService))
	}
	if rec.Endpoint != "" {
		attrs = append(attrs, attribute.String("mesh.endpoint", rec.Endpoint))
	}
	if reason != "" {
		attrs = append(attrs, attribute.String("mesh.reason", reason))
	}
	if rec.Retries > 0 {
		attrs = append(attrs, attribute.Int("mesh.retries", rec.Retries))
	}
	attrs = append(attrs, attribute.String("mesh.request_id", rec.requestID))
	failed := status >= 500 || status == 0 || (in.kind == trace.SpanKindClient && status >= 400)
	if failed {
		errType := strconv.Itoa(status)
		if reason != "" {
			errType = reason
		}
		attrs = append(attrs, semconv.ErrorTypeKey.String(errType))
		span.SetStatus(codes.Error, errType)
	}
	span.SetAttributes(attrs...)
}

func splitHostPort(hostport string) (string, int) {
	host, p, err := net.SplitHostPort(hostport)
	if err != nil {
		return hostport, 0
	}
	port, _ := strconv.Atoi(p)
	return host, port
}

func protocolVersion(r *http.Request) string {
	switch {
	case r.ProtoMajor == 2:
		return "2"
	case r.ProtoMajor == 1 && r.ProtoMinor == 0:
		return "1.0"
	}
	return "1.1"
}
