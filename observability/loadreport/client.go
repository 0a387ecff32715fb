package loadreport

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	lrsv3 "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meshvm/mesh/wire"
)

// Options configure a Client.
type Options struct {
	// Servers are control planes, host:port, tried in order and rotated
	// on failure (the xDS servers: LRS is served next to ADS).
	Servers []string
	// Node identifies the proxy (the same Node as its xDS stream).
	Node *corev3.Node
	// Store is what is reported.
	Store *Store
	// DialOptions are added to the gRPC dial (TLS, per-RPC credentials).
	DialOptions []grpc.DialOption
	// MinInterval bounds the interval the server may ask for from below
	// (default 1s), so a bad server cannot make the proxy spin.
	MinInterval time.Duration
	Log         zerolog.Logger
}

// Client keeps one LRS stream to a control plane and sends the store's
// load at the interval the server asks for.
type Client struct {
	opts Options
	last time.Time // when the store was last collected (by Run's goroutine)
}

// NewClient returns a client; it connects nothing until Run.
func NewClient(o Options) (*Client, error) {
	if len(o.Servers) == 0 {
		return nil, fmt.Errorf("load reporting: no control plane")
	}
	if o.Store == nil {
		return nil, fmt.Errorf("load reporting: no store")
	}
	if o.MinInterval <= 0 {
		o.MinInterval = time.Second
	}
	return &Client{opts: o, last: time.Now()}, nil
}

// Run reports until ctx is done, reconnecting with backoff. A server that
// does not serve LRS (codes.Unimplemented) is retried slowly. It returns
// nil when ctx is done.
func (c *Client) Run(ctx context.Context) error {
	attempt := 0
	for i := 0; ; i++ {
		server := c.opts.Servers[i%len(c.opts.Servers)]
		start := time.Now()
		err := c.stream(ctx, server)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > 30*time.Second {
			attempt = 0
		}
		wait := min(250*time.Millisecond<<min(attempt, 8), 30*time.Second)
		if status.Code(err) == codes.Unimplemented {
			wait = time.Minute
		}
		wait = wait/2 + rand.N(wait/2+1)
		attempt++
		c.opts.Log.Debug().Err(err).Str("server", server).Dur("retry_in", wait).Msg("load report stream ended")
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// stream runs one LRS stream: the first request names the node, the
// server's response says what to report and how often, then a report per
// interval until the stream fails. A later response changes the interval
// or the clusters.
func (c *Client) stream(ctx context.Context, server string) error {
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, c.opts.DialOptions...)
	conn, err := grpc.NewClient(server, opts...)
	if err != nil {
		return fmt.Errorf("dial %s: %w", server, err)
	}
	defer conn.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := lrsv3.NewLoadReportingServiceClient(conn).StreamLoadStats(sctx)
	if err != nil {
		return fmt.Errorf("open load report stream to %s: %w", server, err)
	}
	if err := st.Send(&lrsv3.LoadStatsRequest{Node: c.opts.Node}); err != nil {
		return fmt.Errorf("send node to %s: %w", server, err)
	}
	resps := make(chan *lrsv3.LoadStatsResponse)
	recvErr := make(chan error, 1)
	go func() {
		for {
			r, err := st.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case resps <- r:
			case <-sctx.Done():
				return
			}
		}
	}()
	var timer *time.Timer
	var tick <-chan time.Time
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	var interval time.Duration
	var clusters map[string]bool // nil: all
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-recvErr:
			return fmt.Errorf("receive from %s: %w", server, err)
		case r := <-resps:
			interval = max(r.GetLoadReportingInterval().AsDuration(), c.opts.MinInterval)
			clusters = nil
			if !r.GetSendAllClusters() {
				clusters = map[string]bool{}
				for _, n := range r.GetClusters() {
					clusters[n] = true
				}
			}
			if timer == nil {
				// The first report carries everything since the last
				// one sent (on an earlier stream) or since the start.
				timer = time.NewTimer(interval)
			} else {
				timer.Reset(interval)
			}
			tick = timer.C
		case <-tick:
			now := time.Now()
			req := &lrsv3.LoadStatsRequest{Node: c.opts.Node, ClusterStats: ClusterStats(c.opts.Store.Collect(clusters), now.Sub(c.last))}
			c.last = now
			if err := st.Send(req); err != nil {
				return fmt.Errorf("send load report to %s: %w", server, err)
			}
			timer.Reset(interval)
		}
	}
}

// ClusterStats turns collected stats into LRS cluster stats, one per
// cluster, one locality entry per locality.
func ClusterStats(stats []Stats, interval time.Duration) []*endpointv3.ClusterStats {
	var out []*endpointv3.ClusterStats
	var cur *endpointv3.ClusterStats
	for _, s := range stats {
		if cur == nil || cur.ClusterName != s.Cluster {
			cur = &endpointv3.ClusterStats{ClusterName: s.Cluster, LoadReportInterval: durationpb.New(interval)}
			out = append(out, cur)
		}
		ls := &endpointv3.UpstreamLocalityStats{
			Locality:                &corev3.Locality{Region: s.Region, Zone: s.Zone},
			TotalIssuedRequests:     s.Issued,
			TotalSuccessfulRequests: s.Succeeded,
			TotalErrorRequests:      s.Errored,
			TotalRequestsInProgress: s.InProgress,
		}
		if s.Finished > 0 {
			ls.LoadMetricStats = append(ls.LoadMetricStats, &endpointv3.EndpointLoadMetricStats{
				MetricName: wire.LoadLatencyMetric, NumRequestsFinishedWithMetric: s.Finished, TotalMetricValue: s.LatencyMs})
			for i, n := range s.BucketCounts {
				if n == 0 {
					continue
				}
				ls.LoadMetricStats = append(ls.LoadMetricStats, &endpointv3.EndpointLoadMetricStats{
					MetricName: wire.LoadLatencyBucketName(i), NumRequestsFinishedWithMetric: n, TotalMetricValue: s.BucketLatencyMs[i]})
			}
		}
		cur.UpstreamLocalityStats = append(cur.UpstreamLocalityStats, ls)
	}
	return out
}
