package proxy_test

import (
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync"
	"testing"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/dataplane/proxy"
)

// A 100-byte response, as in the nginx comparison of testing.md.
var benchBody = []byte("0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456\n")

func benchUpstream(b *testing.B) string {
	return serve(b, hostUpstream, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["Content-Type"] = []string{"text/plain"}
		h["Content-Length"] = []string{strconv.Itoa(len(benchBody))}
		_, _ = w.Write(benchBody)
	}))
}

// discardWriter is the cheapest possible http.ResponseWriter, so that
// BenchmarkForward measures Forward and the upstream round trip alone.
type discardWriter struct {
	h    http.Header
	code int
}

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) WriteHeader(code int)        { d.code = code }
func (d *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardWriter) Flush()                      {}

// BenchmarkForward measures one Forward call through a real loopback
// upstream, without a client or an inbound server.
func BenchmarkForward(b *testing.B) {
	up := benchUpstream(b)
	for _, proto := range []string{"h1", "h2c"} {
		b.Run(proto, func(b *testing.B) {
			fwd := proxy.NewForwarder(proxy.Options{Log: zerolog.Nop()})
			defer fwd.CloseIdleConnections()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				r, _ := http.NewRequest(http.MethodGet, "http://orders/bench", nil)
				r.RemoteAddr = "127.0.0.1:40000"
				r.RequestURI = "/bench"
				r.Header.Set("User-Agent", "bench")
				r.Header.Set("Accept", "*/*")
				r.Header.Set("X-Request-Id", "fixed") // an app's id, kept
				if proto == "h2c" {
					r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/2.0", 2, 0
				}
				w := &discardWriter{h: make(http.Header, 8)}
				for pb.Next() {
					clear(w.h)
					if err := fwd.Forward(w, r, up); err != nil {
						b.Fatal(err)
					}
					if w.code != 200 {
						b.Fatalf("status %d", w.code)
					}
				}
			})
		})
	}
}

// BenchmarkHop measures a whole proxy hop (client -> proxy server ->
// upstream) with the mesh forwarder and, for comparison in the same run,
// a tuned httputil.ReverseProxy. ns/op is per request with 32 concurrent
// clients per GOMAXPROCS; compare the two, not the absolute figures.
func BenchmarkHop(b *testing.B) {
	up := benchUpstream(b)
	upURL, _ := url.Parse("http://" + up)
	for _, proto := range []string{"h1", "h2c"} {
		for _, impl := range []string{"mesh", "reverseproxy"} {
			b.Run(proto+"/"+impl, func(b *testing.B) {
				var h http.Handler
				switch impl {
				case "mesh":
					fwd := proxy.NewForwarder(proxy.Options{Log: zerolog.Nop()})
					defer fwd.CloseIdleConnections()
					h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
						if err := fwd.Forward(w, r, up); err != nil {
							proxy.WriteError(w, r, err)
						}
					})
				case "reverseproxy":
					var p http.Protocols
					if proto == "h2c" {
						p.SetUnencryptedHTTP2(true)
					} else {
						p.SetHTTP1(true)
					}
					tr := &http.Transport{MaxIdleConnsPerHost: 1024, DisableCompression: true, Protocols: &p}
					defer tr.CloseIdleConnections()
					h = &httputil.ReverseProxy{
						Rewrite: func(pr *httputil.ProxyRequest) {
							pr.SetURL(upURL)
							pr.Out.Host = pr.In.Host
							pr.SetXForwarded()
						},
						Transport:  tr,
						BufferPool: &bufferPool{},
					}
				}
				addr := serve(b, hostProxy, h)
				c := httpClient(proto == "h2c")
				c.Transport.(*http.Transport).MaxIdleConnsPerHost = 1024
				defer c.CloseIdleConnections()
				b.ReportAllocs()
				b.SetParallelism(32)
				b.RunParallel(func(pb *testing.PB) {
					req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/bench", nil)
					for pb.Next() {
						resp, err := c.Do(req)
						if err != nil {
							b.Fatal(err)
						}
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if resp.StatusCode != 200 {
							b.Fatalf("status %d", resp.StatusCode)
						}
					}
				})
			})
		}
	}
}

type bufferPool struct{ p sync.Pool }

func (bp *bufferPool) Get() []byte {
	if b, ok := bp.p.Get().(*[]byte); ok {
		return *b
	}
	return make([]byte, 32<<10)
}

func (bp *bufferPool) Put(b []byte) { bp.p.Put(&b) }
