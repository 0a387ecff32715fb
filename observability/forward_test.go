package observability_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"

	"github.com/meshvm/mesh/observability"
)

// The observability tests put Instrument around small stand-ins for an
// agent's listeners, built here on the standard library so that this leaf
// package's tests depend on no role: a forwarder (HTTP/1.1, h2c for
// HTTP/2 and gRPC, upgrades), the mesh's refusal response, and an
// HTTP/1.1 + h2c server.

// forwarder sends a request to one address and streams the response back.
type forwarder struct {
	h1  *http.Transport
	h2c *http2.Transport
}

func newForwarder() *forwarder {
	return &forwarder{
		h1: &http.Transport{MaxIdleConnsPerHost: 256},
		h2c: &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}},
	}
}

func (f *forwarder) CloseIdleConnections() {
	f.h1.CloseIdleConnections()
	f.h2c.CloseIdleConnections()
}

// Forward proxies r to addr; a failure to reach it is answered with 502
// upstream-connect-failure, recorded on the request's Record.
func (f *forwarder) Forward(w http.ResponseWriter, r *http.Request, addr string) {
	var rt http.RoundTripper = f.h1
	if r.ProtoMajor == 2 {
		rt = f.h2c
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host = "http", addr
			pr.Out.Host = pr.In.Host
		},
		Transport: rt,
		// FlushInterval stays 0: ReverseProxy already flushes every write of
		// a response without a length (streams, gRPC), and a negative one
		// arms a timer that may flush the headers of an empty response
		// before the handler returns, turning a gRPC trailers-only response
		// (HEADERS with END_STREAM) into HEADERS + an empty DATA with
		// END_STREAM and no trailers: "server closed the stream without
		// sending trailers" (golang/go#56317).
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			reason := "upstream-reset"
			var op *net.OpError
			if errors.As(err, &op) && op.Op == "dial" {
				reason = "upstream-connect-failure"
			}
			refuse(w, r, http.StatusBadGateway, reason, 0)
		},
	}
	rp.ServeHTTP(w, r)
}

// refuse answers r as the mesh does when it refuses a request itself: the
// reason on the Record (what the access log and metrics read), in
// x-mesh-reason and in a short body.
func refuse(w http.ResponseWriter, r *http.Request, status int, reason string, retryAfter time.Duration) {
	observability.RecordFrom(r.Context()).SetReason(reason)
	h := w.Header()
	h.Set("X-Mesh-Reason", reason)
	if retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(int(retryAfter/time.Second)))
	}
	body := "mesh: " + reason + "\n"
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}

// relayedReason records on r's Record the reason an upstream mesh gave in
// its response, as the agent's tries step does for a relayed refusal.
func relayedReason(w http.ResponseWriter, r *http.Request) http.ResponseWriter {
	return &reasonWriter{ResponseWriter: w, rec: observability.RecordFrom(r.Context())}
}

type reasonWriter struct {
	http.ResponseWriter
	rec *observability.Record
}

func (w *reasonWriter) WriteHeader(code int) {
	if v := w.Header().Get("X-Mesh-Reason"); v != "" {
		w.rec.SetReason(v)
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *reasonWriter) Write(p []byte) (int, error) { return w.ResponseWriter.Write(p) }
func (w *reasonWriter) Flush()                      { http.NewResponseController(w.ResponseWriter).Flush() }
func (w *reasonWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// newServer serves h over HTTP/1.1 and h2c with prior knowledge.
func newServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h2c.NewHandler(h, &http2.Server{}), ReadHeaderTimeout: 10 * time.Second}
}

// serviceOf is the service a Host names ("orders", "orders.mesh", any port).
func serviceOf(host string) string {
	host, _, _ = strings.Cut(host, ":")
	return strings.TrimSuffix(host, ".mesh")
}
