package proxy_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"syscall"
	"testing"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/dataplane/proxy"
)

// BenchmarkAgentHop compares the two ways one agent can carry HTTP/1.1
// requests to another (docs/decisions.md): pooled HTTP/1.1 connections, or
// h2c (one multiplexed connection per peer). The callee is the agent's
// own server (HTTP/1.1 + h2c on one port) answering 100 bytes; both sides
// run in this process, so cpu-ns/op (the process's CPU time per request) is the cost of both
// ends of the hop; ns/op is wall time, which neighbours distort.
//
//	go test -run '^$' -bench AgentHop -benchmem -cpu 1,2 ./dataplane/proxy/
func BenchmarkAgentHop(b *testing.B) {
	body := make([]byte, 100)
	peer := serve(b, hostUpstream, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
	}))
	for _, tc := range []struct {
		name  string
		proto endpoint.Protocol
	}{{"http1-pool", endpoint.HTTP1}, {"h2c-multiplexed", endpoint.HTTP2}} {
		b.Run(tc.name, func(b *testing.B) {
			fwd := proxy.NewForwarder(proxy.Options{Log: zerolog.Nop()})
			defer fwd.CloseIdleConnections()
			b.SetParallelism(16) // 16 x GOMAXPROCS requests in flight
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cpuTime()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					r := httptest.NewRequest(http.MethodGet, "http://orders/get", nil)
					w := httptest.NewRecorder()
					resp, err := fwd.Send(w, r, peer, &proxy.Attempt{Protocol: tc.proto})
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// cpuTime is the process's user+system CPU time in nanoseconds: on a
// shared machine it measures cost where wall time measures neighbours.
func cpuTime() int64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}
