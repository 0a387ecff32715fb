// Package loadstats is the control plane's Load Reporting Service
// (envoy.service.load_stats.v3): proxies stream what they sent to each
// upstream cluster, and it keeps, per caller → callee edge (caller = the
// reporting node's service, callee = the cluster, named after its
// service), the totals since start and a bounded window of recent
// reports, from which it answers rates, error ratios and latencies.
package loadstats

import (
	"context"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"sync"
	"time"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	lrsv3 "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meshvm/mesh/controlplane/xds"
	"github.com/meshvm/mesh/meshapi"
	"github.com/meshvm/mesh/wire"
)

// Options tune a Server; zero values take defaults.
type Options struct {
	// Interval is the load_reporting_interval asked of proxies (default 10s).
	Interval time.Duration
	// Window is how much history each edge keeps (default 5m); rates are
	// measured over RateWindow (default max(3 intervals, 30s), at most
	// Window).
	Window     time.Duration
	RateWindow time.Duration
	// MaxEdges bounds the edges kept (default 100,000); reports for new
	// edges beyond it are counted as dropped.
	MaxEdges int
	// Now is the clock (tests).
	Now func() time.Time
}

// Server serves LRS streams and holds the edges' load.
type Server struct {
	log  zerolog.Logger
	opts Options
	m    *metrics
	// slot is the granularity of the window, in seconds: one reporting
	// interval (at least 1 s); reports arriving within one slot are added
	// together.
	slot int64

	ctx context.Context // set by Register; ends the streams

	mu    sync.Mutex
	edges map[edgeKey]*edge
	seen  uint64 // reports added (tests, benchmarks)
}

func (s *Server) reportsSeen() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen
}

type edgeKey struct{ caller, callee string }

// nBuckets is the latency histogram's size, the "inf" bucket included.
var nBuckets = len(wire.LoadLatencyBucketsMs) + 1

type edge struct {
	// first is when its first report arrived: rates over a window
	// longer than the edge's life are measured over its life.
	first      time.Time
	total      meshapi.Totals
	localities map[string]*meshapi.Totals
	// inFlight is each reporter's requests in progress at its last report.
	inFlight map[string]uint64
	// slots is a ring of per-slot sums, len = window / slot.
	slots []slot
}

type slot struct {
	at                         int64 // unix second, 0: empty
	issued, succeeded, errored uint64
	finished                   uint64
	latencyMs                  float64
	buckets                    []uint64
}

// New returns a server with no edges.
func New(log zerolog.Logger, reg prometheus.Registerer, o Options) *Server {
	if o.Interval <= 0 {
		o.Interval = 10 * time.Second
	}
	if o.Window <= 0 {
		o.Window = 5 * time.Minute
	}
	if o.RateWindow <= 0 {
		o.RateWindow = max(3*o.Interval, 30*time.Second)
	}
	o.RateWindow = min(o.RateWindow, o.Window)
	if o.MaxEdges <= 0 {
		o.MaxEdges = 100_000
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	slot := max(int64(o.Interval/time.Second), 1)
	return &Server{log: log, opts: o, m: newMetrics(reg), slot: slot, edges: map[edgeKey]*edge{}}
}

// Register adds the LRS service to g. ctx bounds every stream: cancel
// it before a graceful stop (a reporting proxy never ends its stream).
func (s *Server) Register(ctx context.Context, g *grpc.Server) {
	s.ctx = ctx
	lrsv3.RegisterLoadReportingServiceServer(g, s)
}

// StreamLoadStats implements the LRS service: the first request names the
// node; the server answers with the interval and "send all clusters", then
// adds every report to the edges of the node's service.
func (s *Server) StreamLoadStats(st lrsv3.LoadReportingService_StreamLoadStatsServer) error {
	first, err := st.Recv()
	if err != nil {
		return err
	}
	node := first.GetNode()
	if node.GetId() == "" {
		return fmt.Errorf("load report stream: the first request names no node")
	}
	caller := xds.NodeFromProto(node).Service
	if caller == "" {
		caller = node.GetCluster()
	}
	if caller == "" {
		caller = node.GetId()
	}
	id := node.GetId()
	s.m.streams.Inc()
	defer s.m.streams.Dec()
	defer s.forget(id)
	if err := st.Send(&lrsv3.LoadStatsResponse{SendAllClusters: true, LoadReportingInterval: durationpb.New(s.opts.Interval)}); err != nil {
		return err
	}
	s.add(caller, id, first.GetClusterStats())
	errc := make(chan error, 1)
	go func() {
		for {
			req, err := st.Recv()
			if err != nil {
				errc <- err
				return
			}
			s.add(caller, id, req.GetClusterStats())
		}
	}()
	done := st.Context().Done()
	var stop <-chan struct{}
	if s.ctx != nil {
		stop = s.ctx.Done()
	}
	select {
	case err := <-errc:
		if err == io.EOF {
			return nil
		}
		return err
	case <-done:
		return nil
	case <-stop: // shutting down: returning ends the stream, and Recv
		return nil
	}
}

// Interval is the reporting interval asked of proxies.
func (s *Server) Interval() time.Duration { return s.opts.Interval }

// add records one report of node (of service caller).
func (s *Server) add(caller, node string, stats []*endpointv3.ClusterStats) {
	if len(stats) == 0 {
		return
	}
	s.m.reports.Inc()
	now := s.opts.Now().Unix() / s.slot
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen++
	for _, cs := range stats {
		k := edgeKey{caller, cs.GetClusterName()}
		e := s.edges[k]
		if e == nil {
			if len(s.edges) >= s.opts.MaxEdges {
				s.m.dropped.Inc()
				continue
			}
			e = &edge{first: s.opts.Now(), localities: map[string]*meshapi.Totals{}, inFlight: map[string]uint64{},
				slots: make([]slot, max(int(int64(s.opts.Window/time.Second)/s.slot), 1))}
			s.edges[k] = e
			s.m.edges.Set(float64(len(s.edges)))
		}
		sl := &e.slots[now%int64(len(e.slots))]
		if sl.at != now {
			*sl = slot{at: now, buckets: sl.buckets[:0]}
			if cap(sl.buckets) < nBuckets {
				sl.buckets = make([]uint64, nBuckets)
			}
			sl.buckets = sl.buckets[:nBuckets]
			clear(sl.buckets)
		}
		var inFlight uint64
		for _, ls := range cs.GetUpstreamLocalityStats() {
			t := meshapi.Totals{Issued: ls.GetTotalIssuedRequests(), Succeeded: ls.GetTotalSuccessfulRequests(), Errored: ls.GetTotalErrorRequests()}
			add(&e.total, t)
			loc := meshapi.LocalityString(ls.GetLocality().GetRegion(), ls.GetLocality().GetZone())
			lt := e.localities[loc]
			if lt == nil {
				lt = &meshapi.Totals{}
				e.localities[loc] = lt
			}
			add(lt, t)
			inFlight += ls.GetTotalRequestsInProgress()
			sl.issued += t.Issued
			sl.succeeded += t.Succeeded
			sl.errored += t.Errored
			for _, m := range ls.GetLoadMetricStats() {
				name := m.GetMetricName()
				switch {
				case name == wire.LoadLatencyMetric:
					sl.finished += m.GetNumRequestsFinishedWithMetric()
					sl.latencyMs += m.GetTotalMetricValue()
				case strings.HasPrefix(name, wire.LoadLatencyBucketPrefix):
					if i := bucketIndex(name); i >= 0 {
						sl.buckets[i] += m.GetNumRequestsFinishedWithMetric()
					}
				}
			}
		}
		e.inFlight[node] = inFlight
	}
}

func add(t *meshapi.Totals, d meshapi.Totals) {
	t.Issued += d.Issued
	t.Succeeded += d.Succeeded
	t.Errored += d.Errored
}

var bucketNames = func() map[string]int {
	m := map[string]int{}
	for i := 0; i < nBuckets; i++ {
		m[wire.LoadLatencyBucketName(i)] = i
	}
	return m
}()

func bucketIndex(name string) int {
	if i, ok := bucketNames[name]; ok {
		return i
	}
	return -1
}

// forget drops a disconnected node's in-flight counts.
func (s *Server) forget(node string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.edges {
		delete(e.inFlight, node)
	}
}

// Traffic is every edge's load: totals since start, rates and latencies
// over the rate window.
func (s *Server) Traffic() meshapi.Traffic {
	now := s.opts.Now()
	from := now.Add(-s.opts.RateWindow).Unix() / s.slot
	out := meshapi.Traffic{GeneratedAt: now.UTC(), WindowSeconds: s.opts.RateWindow.Seconds(), IntervalSeconds: s.opts.Interval.Seconds()}
	s.mu.Lock()
	out.Edges = make([]meshapi.Edge, 0, len(s.edges))
	for k, e := range s.edges {
		// A report covers the interval before it arrived.
		window := min(s.opts.RateWindow, now.Sub(e.first)+s.opts.Interval)
		out.Edges = append(out.Edges, e.summary(k, from, window.Seconds()))
	}
	s.mu.Unlock()
	sort.Slice(out.Edges, func(i, j int) bool {
		a, b := out.Edges[i], out.Edges[j]
		if a.Caller != b.Caller {
			return a.Caller < b.Caller
		}
		return a.Callee < b.Callee
	})
	return out
}

// summary is e over the slots after slot number from, a span of window
// seconds.
func (e *edge) summary(k edgeKey, from int64, window float64) meshapi.Edge {
	out := meshapi.Edge{Caller: k.caller, Callee: k.callee, Total: e.total}
	var issued, errored, finished uint64
	var latency float64
	buckets := make([]uint64, nBuckets)
	for i := range e.slots {
		sl := &e.slots[i]
		if sl.at == 0 || sl.at <= from {
			continue
		}
		issued += sl.issued
		errored += sl.errored
		finished += sl.succeeded + sl.errored
		latency += sl.latencyMs
		for b, n := range sl.buckets {
			buckets[b] += n
		}
	}
	out.RPS = float64(issued) / window
	if finished > 0 {
		out.ErrorRatio = float64(errored) / float64(finished)
	}
	var withLatency uint64
	for _, n := range buckets {
		withLatency += n
	}
	if withLatency > 0 {
		out.MeanMs = latency / float64(withLatency)
		out.P50Ms = quantile(buckets, withLatency, 0.50)
		out.P99Ms = quantile(buckets, withLatency, 0.99)
	}
	for loc, t := range e.localities {
		out.Localities = append(out.Localities, meshapi.LocalityLoad{Locality: loc, Totals: *t})
	}
	sort.Slice(out.Localities, func(i, j int) bool { return out.Localities[i].Locality < out.Localities[j].Locality })
	for n, f := range e.inFlight {
		out.InProgress += f
		out.Reporters = append(out.Reporters, n)
	}
	sort.Strings(out.Reporters)
	return out
}

// quantile estimates the q-quantile of a histogram over
// wire.LoadLatencyBucketsMs by linear interpolation within the bucket, as
// Prometheus' histogram_quantile does; the "inf" bucket answers its lower
// bound.
func quantile(buckets []uint64, total uint64, q float64) float64 {
	rank := q * float64(total)
	var cum float64
	for i, n := range buckets {
		if n == 0 {
			continue
		}
		if cum+float64(n) >= rank {
			lo := 0.0
			if i > 0 {
				lo = wire.LoadLatencyBucketsMs[i-1]
			}
			if i >= len(wire.LoadLatencyBucketsMs) {
				return lo
			}
			hi := wire.LoadLatencyBucketsMs[i]
			return lo + (hi-lo)*math.Max(0, rank-cum)/float64(n)
		}
		cum += float64(n)
	}
	return 0
}
