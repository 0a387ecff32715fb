package loadstats

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	lrsv3 "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshvm/mesh/meshapi"
	"github.com/meshvm/mesh/observability/loadreport"
	"github.com/meshvm/mesh/wire"
)

// serve runs s on a loopback gRPC server until the test ends.
func serve(tb testing.TB, s *Server) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	g := grpc.NewServer()
	s.Register(context.Background(), g)
	go func() { _ = g.Serve(ln) }()
	tb.Cleanup(g.Stop)
	return ln.Addr().String()
}

func node(id, service string) *corev3.Node {
	md, _ := structpb.NewStruct(map[string]any{wire.NodeService: service})
	return &corev3.Node{Id: id, Metadata: md}
}

// TestReportsOverTheWire: the agent's client and the server agree: the
// interval the server asks for is used, and every request is counted
// once on the caller's edge, with latency percentiles from the buckets.
func TestReportsOverTheWire(t *testing.T) {
	s := New(zerolog.Nop(), nil, Options{Interval: time.Second})
	addr := serve(t, s)
	store := loadreport.NewStore()
	c, err := loadreport.NewClient(loadreport.Options{Servers: []string{addr}, Node: node("web-1", "web"), Store: store, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	l := store.Locality("orders", "eu", "a")
	for i := 0; i < 100; i++ {
		l.Begin()
		d := 2 * time.Millisecond
		if i >= 98 {
			d = 400 * time.Millisecond
		}
		l.End(i%5 != 0, d)
	}
	deadline := time.Now().Add(10 * time.Second)
	var e meshapi.Edge
	for time.Now().Before(deadline) {
		tr := s.Traffic()
		if len(tr.Edges) == 1 && tr.Edges[0].Total.Issued == 100 {
			e = tr.Edges[0]
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if e.Caller != "web" || e.Callee != "orders" || e.Total != (meshapi.Totals{Issued: 100, Succeeded: 80, Errored: 20}) {
		t.Fatalf("edge %+v", e)
	}
	if e.ErrorRatio != 0.2 || e.P50Ms <= 1 || e.P50Ms > 2.5 || e.P99Ms <= 250 || e.P99Ms > 500 || e.RPS <= 0 {
		t.Errorf("window: error ratio %v p50 %v p99 %v rps %v", e.ErrorRatio, e.P50Ms, e.P99Ms, e.RPS)
	}
	if len(e.Reporters) != 1 || e.Reporters[0] != "web-1" || len(e.Localities) != 1 || e.Localities[0].Locality != "eu/a" {
		t.Errorf("reporters %v localities %+v", e.Reporters, e.Localities)
	}
}

// TestEdgesAreBounded: past MaxEdges, new edges are dropped, and the
// window forgets reports older than it.
func TestEdgesAreBounded(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	s := New(zerolog.Nop(), nil, Options{Interval: time.Second, Window: 10 * time.Second, RateWindow: 5 * time.Second, MaxEdges: 2,
		Now: func() time.Time { return now }})
	report := func(cluster string, n uint64) []*endpointv3.ClusterStats {
		return []*endpointv3.ClusterStats{{ClusterName: cluster, UpstreamLocalityStats: []*endpointv3.UpstreamLocalityStats{
			{Locality: &corev3.Locality{}, TotalIssuedRequests: n, TotalSuccessfulRequests: n}}}}
	}
	s.add("web", "w1", report("a", 10))
	s.add("web", "w1", report("b", 10))
	s.add("web", "w1", report("c", 10))
	if tr := s.Traffic(); len(tr.Edges) != 2 {
		t.Fatalf("%d edges kept, want 2", len(tr.Edges))
	}
	now = now.Add(20 * time.Second)
	for _, e := range s.Traffic().Edges {
		if e.RPS != 0 || e.Total.Issued != 10 {
			t.Errorf("after the window: %+v", e)
		}
	}
}

// BenchmarkReports1000Agents: one round of load reports from 1,000
// agents, each reporting 5 upstream clusters with latency buckets, over
// real gRPC streams (client and server in this process). At a 10 s
// interval, the control plane's share of a CPU is (ns/round) / 10 s.
func BenchmarkReports1000Agents(b *testing.B) {
	const agents, clusters = 1000, 5
	s := New(zerolog.Nop(), nil, Options{Interval: 10 * time.Second})
	addr := serve(b, s)
	var conns []*grpc.ClientConn
	streams := make([]lrsv3.LoadReportingService_StreamLoadStatsClient, agents)
	for i := range streams {
		if i%50 == 0 {
			c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				b.Fatal(err)
			}
			conns = append(conns, c)
		}
		st, err := lrsv3.NewLoadReportingServiceClient(conns[len(conns)-1]).StreamLoadStats(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		if err := st.Send(&lrsv3.LoadStatsRequest{Node: node(fmt.Sprintf("svc%d-%d", i%200, i), fmt.Sprintf("svc%d", i%200))}); err != nil {
			b.Fatal(err)
		}
		if _, err := st.Recv(); err != nil {
			b.Fatal(err)
		}
		streams[i] = st
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	reqs := make([]*lrsv3.LoadStatsRequest, agents)
	for i := range reqs {
		var stats []loadreport.Stats
		for c := 0; c < clusters; c++ {
			st := loadreport.Stats{Cluster: fmt.Sprintf("svc%d", (i+c+1)%200), Region: "eu", Zone: "eu-1a", Issued: 100, Succeeded: 99, Errored: 1,
				Finished: 100, LatencyMs: 300, BucketCounts: make([]uint64, len(wire.LoadLatencyBucketsMs)+1), BucketLatencyMs: make([]float64, len(wire.LoadLatencyBucketsMs)+1)}
			st.BucketCounts[2], st.BucketCounts[4] = 90, 10
			stats = append(stats, st)
		}
		reqs[i] = &lrsv3.LoadStatsRequest{ClusterStats: loadreport.ClusterStats(stats, 10*time.Second)}
	}
	want := uint64(0)
	wait := func() {
		for s.reportsSeen() < want {
			time.Sleep(100 * time.Microsecond)
		}
	}
	runtime.GC()
	cpu0 := cpuTime()
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		for i, st := range streams {
			if err := st.Send(reqs[i]); err != nil {
				b.Fatal(err)
			}
		}
		want += agents
		wait()
	}
	b.StopTimer()
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/1000/float64(b.N), "cpu-ms/round")
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(len(s.Traffic().Edges)), "edges")
	b.ReportMetric(float64(after.HeapInuse)/(1<<20), "heap-MiB")
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
