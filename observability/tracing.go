package observability

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/contrib/propagators/b3"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	"github.com/meshvm/mesh/buildinfo"
	"github.com/meshvm/mesh/config"
)

// tracing is the OpenTelemetry side of an Observer: a tracer provider that
// exports through a bounded queue, and the propagators.
type tracing struct {
	sampler  *ratioSampler // of new traces; a reload changes its ratio
	provider *sdktrace.TracerProvider
	tracer   trace.Tracer
	queue    *spanQueue
	// extract reads W3C trace context, else B3 (single or multi-header).
	w3c propagation.TextMapPropagator
	b3  propagation.TextMapPropagator
	// inject writes the configured formats.
	inject propagation.TextMapPropagator
}

func newTracing(c config.Tracing, service string, reg prometheus.Registerer) (*tracing, error) {
	// The HTTP exporter's own client: never HTTP_PROXY (the agent is often
	// the proxy it names), and its idle connections closed at shutdown.
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 2, IdleConnTimeout: 90 * time.Second,
		ForceAttemptHTTP2: true, TLSHandshakeTimeout: 10 * time.Second}
	exp, err := newExporter(c, &http.Client{Transport: tr})
	if err != nil {
		return nil, err
	}
	q, err := newSpanQueue(exp, c, reg)
	if err != nil {
		return nil, err
	}
	q.closeIdle = tr.CloseIdleConnections
	res, err := resource.Merge(resource.Default(), resource.NewWithAttributes(semconv.SchemaURL,
		semconv.ServiceName(service), semconv.ServiceVersion(buildinfo.Version)))
	if err != nil {
		return nil, fmt.Errorf("tracing resource: %w", err)
	}
	sampler := &ratioSampler{}
	sampler.set(c.SampleRatio)
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithSampler(sdktrace.ParentBased(sampler)),
		sdktrace.WithResource(res),
		sdktrace.WithSpanProcessor(q),
	)
	var inject []propagation.TextMapPropagator
	for _, p := range c.Propagators {
		switch p {
		case "w3c":
			inject = append(inject, propagation.TraceContext{})
		case "b3":
			inject = append(inject, b3.New(b3.WithInjectEncoding(b3.B3SingleHeader)))
		case "b3multi":
			inject = append(inject, b3.New(b3.WithInjectEncoding(b3.B3MultipleHeader)))
		default:
			return nil, fmt.Errorf("unknown trace propagator %q", p)
		}
	}
	return &tracing{
		sampler:  sampler,
		provider: tp,
		tracer:   tp.Tracer("github.com/meshvm/mesh/observability"),
		queue:    q,
		w3c:      propagation.TraceContext{},
		b3:       b3.New(),
		inject:   propagation.NewCompositeTextMapPropagator(inject...),
	}, nil
}

// ratioSampler samples new traces by trace id with a ratio that can be
// changed while spans are being started (a config reload).
type ratioSampler struct {
	cur atomic.Pointer[sdktrace.Sampler]
}

func (s *ratioSampler) set(ratio float64) {
	smp := sdktrace.TraceIDRatioBased(ratio)
	s.cur.Store(&smp)
}

func (s *ratioSampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	return (*s.cur.Load()).ShouldSample(p)
}

func (s *ratioSampler) Description() string { return (*s.cur.Load()).Description() }

// extract returns ctx with the caller's span context: W3C traceparent if
// valid, else B3.
func (t *tracing) extract(ctx context.Context, h http.Header) context.Context {
	c := headerCarrier(h)
	if out := t.w3c.Extract(ctx, c); trace.SpanContextFromContext(out).IsValid() {
		return out
	}
	if len(h["B3"]) == 0 && len(h["X-B3-Traceid"]) == 0 {
		return ctx
	}
	return t.b3.Extract(ctx, c)
}

// newExporter builds the OTLP exporter; it connects lazily, so a collector
// that is down at start is not an error. HTTP_PROXY and friends are
// ignored: the agent is often the proxy they point to.
func newExporter(c config.Tracing, hc *http.Client) (sdktrace.SpanExporter, error) {
	retryFor := c.ExportTimeout
	switch c.Exporter {
	case "otlp-grpc":
		opts := []otlptracegrpc.Option{
			otlptracegrpc.WithTimeout(c.ExportTimeout),
			otlptracegrpc.WithRetry(otlptracegrpc.RetryConfig{Enabled: true, InitialInterval: 250 * time.Millisecond,
				MaxInterval: 2 * time.Second, MaxElapsedTime: retryFor}),
			otlptracegrpc.WithDialOption(grpc.WithNoProxy()),
		}
		switch ep := c.Endpoint; {
		case ep == "":
			opts = append(opts, otlptracegrpc.WithEndpoint("127.0.0.1:4317"), otlptracegrpc.WithInsecure())
		case strings.Contains(ep, "://"):
			opts = append(opts, otlptracegrpc.WithEndpointURL(ep))
		default:
			opts = append(opts, otlptracegrpc.WithEndpoint(ep), otlptracegrpc.WithInsecure())
		}
		exp, err := otlptracegrpc.New(context.Background(), opts...)
		if err != nil {
			return nil, fmt.Errorf("otlp-grpc exporter for %s: %w", c.Endpoint, err)
		}
		return exp, nil
	case "otlp-http":
		opts := []otlptracehttp.Option{
			otlptracehttp.WithTimeout(c.ExportTimeout),
			otlptracehttp.WithRetry(otlptracehttp.RetryConfig{Enabled: true, InitialInterval: 250 * time.Millisecond,
				MaxInterval: 2 * time.Second, MaxElapsedTime: retryFor}),
			otlptracehttp.WithHTTPClient(hc),
		}
		switch ep := c.Endpoint; {
		case ep == "":
			opts = append(opts, otlptracehttp.WithEndpoint("127.0.0.1:4318"), otlptracehttp.WithInsecure())
		case strings.Contains(ep, "://"):
			u, err := url.Parse(ep)
			if err != nil {
				return nil, fmt.Errorf("otlp-http endpoint %q: %w", ep, err)
			}
			if u.Path == "" || u.Path == "/" {
				u.Path = "/v1/traces"
			}
			opts = append(opts, otlptracehttp.WithEndpointURL(u.String()))
		default:
			opts = append(opts, otlptracehttp.WithEndpoint(ep), otlptracehttp.WithInsecure())
		}
		exp, err := otlptracehttp.New(context.Background(), opts...)
		if err != nil {
			return nil, fmt.Errorf("otlp-http exporter for %s: %w", c.Endpoint, err)
		}
		return exp, nil
	}
	return nil, fmt.Errorf("unknown trace exporter %q", c.Exporter)
}

// spanQueue is a span processor with a bounded queue: ending a span never
// waits. When the queue is full (a slow or dead collector) the span is
// dropped and counted. Observer.Run drains it in batches.
type spanQueue struct {
	exp           sdktrace.SpanExporter
	queue         chan sdktrace.ReadOnlySpan
	full          chan struct{} // a batch is ready
	batchSize     int
	batchTimeout  time.Duration
	exportTimeout time.Duration
	closeIdle     func() // closes the HTTP exporter's idle connections

	dropped, exported, failed prometheus.Counter
}

func newSpanQueue(exp sdktrace.SpanExporter, c config.Tracing, reg prometheus.Registerer) (*spanQueue, error) {
	q := &spanQueue{
		exp:           exp,
		queue:         make(chan sdktrace.ReadOnlySpan, c.QueueSize),
		full:          make(chan struct{}, 1),
		batchSize:     c.BatchSize,
		batchTimeout:  c.BatchTimeout,
		exportTimeout: c.ExportTimeout,
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "tracing_spans_dropped_total",
			Help: "Spans dropped because the export queue was full (collector slow or down)."}),
		exported: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "tracing_spans_exported_total",
			Help: "Spans the collector accepted."}),
		failed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "tracing_spans_failed_total",
			Help: "Spans lost because their export failed after retries."}),
	}
	queued := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: namespace, Name: "tracing_queue_spans",
		Help: "Spans waiting for export."}, func() float64 { return float64(len(q.queue)) })
	if err := errors.Join(register(reg, &q.dropped), register(reg, &q.exported), register(reg, &q.failed)); err != nil {
		return nil, err
	}
	// The queue gauge reads this queue: replace one left by an earlier
	// Observer.
	if err := reg.Register(queued); err != nil {
		var are prometheus.AlreadyRegisteredError
		if !errors.As(err, &are) {
			return nil, err
		}
		reg.Unregister(are.ExistingCollector)
		if err := reg.Register(queued); err != nil {
			return nil, err
		}
	}
	return q, nil
}

func (q *spanQueue) OnStart(context.Context, sdktrace.ReadWriteSpan) {}

func (q *spanQueue) OnEnd(s sdktrace.ReadOnlySpan) {
	if !s.SpanContext().IsSampled() {
		return
	}
	select {
	case q.queue <- s:
		if len(q.queue) >= q.batchSize {
			select {
			case q.full <- struct{}{}:
			default:
			}
		}
	default:
		q.dropped.Inc()
	}
}

// ForceFlush exports every queued span now.
func (q *spanQueue) ForceFlush(ctx context.Context) error {
	for {
		n, err := q.exportBatch(ctx)
		if err != nil || n == 0 {
			return err
		}
	}
}

// Shutdown is a no-op: the Observer flushes and shuts the exporter down.
func (q *spanQueue) Shutdown(context.Context) error { return nil }

// run exports a batch whenever one is full or batchTimeout passed, until
// ctx is done.
func (q *spanQueue) run(ctx context.Context) {
	t := time.NewTicker(q.batchTimeout)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-q.full:
		}
		for {
			n, _ := q.exportBatch(ctx)
			if n < q.batchSize || ctx.Err() != nil {
				break // what is left waits for the next tick, or for close
			}
		}
	}
}

// exportBatch takes up to batchSize queued spans and exports them, bounded
// by ctx and the export timeout. It returns how many spans it took. The
// exporters are safe for concurrent use, so a flush need not wait for an
// export in progress (which may hang on a dead collector).
func (q *spanQueue) exportBatch(ctx context.Context) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err // leave the spans queued for whoever flushes next
	}
	batch := make([]sdktrace.ReadOnlySpan, 0, min(len(q.queue), q.batchSize))
	for len(batch) < q.batchSize {
		select {
		case s := <-q.queue:
			batch = append(batch, s)
			continue
		default:
		}
		break
	}
	if len(batch) == 0 {
		return 0, nil
	}
	ctx, cancel := context.WithTimeout(ctx, q.exportTimeout)
	defer cancel()
	if err := q.exp.ExportSpans(ctx, batch); err != nil {
		q.failed.Add(float64(len(batch)))
		return len(batch), fmt.Errorf("export %d spans: %w", len(batch), err)
	}
	q.exported.Add(float64(len(batch)))
	return len(batch), nil
}

// close exports what is queued and shuts the exporter down, within ctx.
func (q *spanQueue) close(ctx context.Context) error {
	var errs []error
	for {
		n, err := q.exportBatch(ctx)
		if err != nil {
			errs = append(errs, err)
			break
		}
		if n == 0 {
			break
		}
	}
	if err := q.exp.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("shut trace exporter down: %w", err))
	}
	if q.closeIdle != nil {
		q.closeIdle()
	}
	return errors.Join(errs...)
}

// headerCarrier adapts http.Header to the propagators without the
// allocation http.Header.Get makes to canonicalise lower-case keys.
type headerCarrier http.Header

func canonicalKey(k string) string {
	switch k {
	case "traceparent":
		return "Traceparent"
	case "tracestate":
		return "Tracestate"
	case "b3":
		return "B3"
	case "x-b3-traceid":
		return "X-B3-Traceid"
	case "x-b3-spanid":
		return "X-B3-Spanid"
	case "x-b3-parentspanid":
		return "X-B3-Parentspanid"
	case "x-b3-sampled":
		return "X-B3-Sampled"
	case "x-b3-flags":
		return "X-B3-Flags"
	}
	return textproto.CanonicalMIMEHeaderKey(k)
}

func (c headerCarrier) Get(k string) string {
	if vv := c[canonicalKey(k)]; len(vv) > 0 {
		return vv[0]
	}
	return ""
}

func (c headerCarrier) Set(k, v string) { c[canonicalKey(k)] = []string{v} }

// injectCarrier writes trace headers with values backed by one small
// array kept in the Record, instead of one allocation per header.
type injectCarrier struct {
	h   http.Header
	buf [4]string
	n   int
}

func (c *injectCarrier) Get(k string) string { return headerCarrier(c.h).Get(k) }

func (c *injectCarrier) Set(k, v string) {
	if c.n == len(c.buf) {
		c.h[canonicalKey(k)] = []string{v}
		return
	}
	c.buf[c.n] = v
	c.h[canonicalKey(k)] = c.buf[c.n : c.n+1 : c.n+1]
	c.n++
}

func (c *injectCarrier) Keys() []string { return headerCarrier(c.h).Keys() }

func (c headerCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}
