package chain_test

import (
	"context"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/dataplane/chain"
	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/dataplane/proxy"
	"github.com/meshvm/mesh/dataplane/table"
)

// A 100-byte response, as in the nginx comparison of testing.md.
var benchBody = []byte("0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456\n")

func benchApp(b *testing.B, host string) string {
	return serve(b, host, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["Content-Type"] = []string{"text/plain"}
		h["Content-Length"] = []string{strconv.Itoa(len(benchBody))}
		_, _ = w.Write(benchBody)
	}))
}

// discardWriter is the cheapest possible http.ResponseWriter, so that the
// benchmarks measure the chain and the upstream round trip alone.
type discardWriter struct {
	h    http.Header
	code int
}

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) WriteHeader(code int)        { d.code = code }
func (d *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardWriter) Flush()                      {}

// allOn is a policy with every caller-side feature on: route and per-try
// timeouts, retries with a budget, error breaker, concurrency thresholds,
// outlier detection, locality-aware least request.
func allOn() config.Policy {
	p := config.DefaultPolicy()
	p.Retries.PerTryTimeout = 5 * time.Second
	p.LoadBalancer = config.LoadBalancer{Policy: "least_request", LocalityAware: true}
	return p
}

// BenchmarkChain measures one request through the outbound chain (to one
// of three loopback apps) and through the inbound chain (to a loopback
// app), with every governance feature on and with all of it off. The
// handler is called directly with a discarding ResponseWriter, so the
// figures are the chain, the forwarder and the app; compare on with off.
func BenchmarkChain(b *testing.B) {
	apps := []string{benchApp(b, hostB1), benchApp(b, hostB2), benchApp(b, hostB3)}
	eps := []endpoint.Endpoint{{Addr: apps[0], Zone: "a"}, {Addr: apps[1], Zone: "a"}, {Addr: apps[2], Zone: "b"}}
	for _, tc := range []struct {
		name    string
		policy  config.Policy
		inbound table.Inbound
	}{
		{name: "off", policy: bare()},
		{name: "on", policy: allOn(), inbound: table.Inbound{
			RateLimit:   config.RateLimit{MaxTokens: 1 << 40, TokensPerFill: 1 << 19, FillInterval: time.Millisecond},
			MaxRequests: 1 << 20,
		}},
	} {
		tbl := &table.Table{Version: tc.name, Static: true, Default: tc.policy, Inbound: tc.inbound,
			Services: map[string]*table.Service{"b": {Name: "b", Policy: tc.policy, Endpoints: eps}}}
		fwd := proxy.NewForwarder(proxy.Options{Log: zerolog.Nop()})
		h, err := chain.Compile(tbl, nil, chain.Local{Service: "a", Zone: "a"}, fwd, chain.NewState(nil), zerolog.Nop())
		if err != nil {
			b.Fatal(err)
		}
		for _, dir := range []struct {
			name string
			h    http.Handler
		}{
			{"outbound", chain.NewSwitch(h).Outbound()},
			{"inbound", chain.NewSwitch(h).Inbound(apps[0])},
		} {
			b.Run(dir.name+"/"+tc.name, func(b *testing.B) {
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					r, _ := http.NewRequest(http.MethodGet, "http://b/bench", nil)
					r.RemoteAddr = "127.0.0.1:40000"
					r.RequestURI = "/bench"
					r.Header.Set("User-Agent", "bench")
					r.Header.Set("Accept", "*/*")
					r.Header.Set("X-Request-Id", "fixed")
					r = r.WithContext(context.Background())
					w := &discardWriter{h: make(http.Header, 8)}
					for pb.Next() {
						clear(w.h)
						w.code = 0
						dir.h.ServeHTTP(w, r)
						if w.code != 200 {
							b.Fatalf("status %d", w.code)
						}
					}
				})
			})
		}
		fwd.CloseIdleConnections()
	}
}
