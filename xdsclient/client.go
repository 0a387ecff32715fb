// Package xdsclient is mesh's xDS client: one aggregated (ADS) stream to
// one of several control planes. In state-of-the-world mode it subscribes
// to listeners and clusters (wildcard) and to the routes and endpoints
// they name; in delta mode (Options.Delta, delta.go) it subscribes by name
// to what it is told (Subscribe, Unsubscribe) and receives only changes.
// After every response it hands the whole current resource set to a
// callback; a callback error NACKs the response with that error as the
// detail and the last good set stays in force. It fails over between
// control planes with exponential backoff and jitter.
//
// It knows the Envoy v3 protocol only; what the resources mean to the agent
// is decided by the agent.
package xdsclient

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/rs/zerolog"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Resources is a complete view: every resource the client holds, by name.
type Resources struct {
	Listeners map[string]*listenerv3.Listener
	Routes    map[string]*routev3.RouteConfiguration
	Clusters  map[string]*clusterv3.Cluster
	Endpoints map[string]*endpointv3.ClusterLoadAssignment
	// Versions holds the version_info of each type URL.
	Versions map[string]string
	// ResourceVersions holds, per type URL, each resource's version as
	// a delta server sent it; a delta client sends them back when it
	// reconnects (initial_resource_versions) so only changes are resent.
	ResourceVersions map[string]map[string]string
}

// Clone returns a copy whose maps can be changed without touching r.
func (r Resources) Clone() Resources {
	return Resources{
		Listeners: cloneMap(r.Listeners),
		Routes:    cloneMap(r.Routes),
		Clusters:  cloneMap(r.Clusters),
		Endpoints: cloneMap(r.Endpoints),
		Versions:  cloneMap(r.Versions),
		ResourceVersions: func() map[string]map[string]string {
			out := make(map[string]map[string]string, len(r.ResourceVersions))
			for t, m := range r.ResourceVersions {
				out[t] = cloneMap(m)
			}
			return out
		}(),
	}
}

func cloneMap[V any](m map[string]V) map[string]V {
	out := make(map[string]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Options configure a Client.
type Options struct {
	// Servers are control planes, host:port, tried in order and rotated on
	// failure.
	Servers []string
	// Node identifies this agent (id, cluster, metadata, locality).
	Node *corev3.Node
	// Apply is called with the full current set after each response. An
	// error NACKs the response; the caller keeps its last good config.
	Apply func(Resources) error
	// Listeners are the listener names to subscribe to; empty means all
	// (wildcard).
	Listeners []string
	// Initial is a set to start from (e.g. a disk cache); its versions are
	// not sent, so the server sends everything again.
	Initial     Resources
	BackoffBase time.Duration // default 250ms
	BackoffMax  time.Duration // default 15s
	Log         zerolog.Logger
	// DialOptions are added to the gRPC dial (tests, TLS later).
	DialOptions []grpc.DialOption
	// OnConnection, if set, is called when the stream to server becomes
	// connected (its first response) and when it ends: for metrics.
	OnConnection func(server string, connected bool)
	// OnResponse, if set, is called after each response, with its type
	// URL and whether it was accepted (ACK) or rejected (NACK).
	OnResponse func(typeURL string, accepted bool)
	// Secrets, when not empty, are the SDS secrets (by name) to subscribe
	// to on the same stream; each response's secrets go to OnSecrets (an
	// error NACKs it), not to Apply nor the disk cache.
	Secrets   []string
	OnSecrets func(map[string]*tlsv3.Secret) error

	// Delta selects incremental ADS (DeltaAggregatedResources, delta.go):
	// the client subscribes by name to Listeners, to Clusters and Routes
	// (changed while running with Subscribe and Unsubscribe) and to the
	// load assignments of the clusters it holds, never to a wildcard;
	// acknowledgements carry no resource lists, and a reconnect sends
	// the versions held so the server resends only what changed.
	Delta    bool
	Clusters []string
	Routes   []string
	// OnResources, if set, is called for each delta response with its
	// type URL and how many resources it updated and removed.
	OnResources func(typeURL string, updated, removed int)
}

// State is what the client reports about its connection.
type State struct {
	Server     string
	Connected  bool
	LastUpdate time.Time
	Acks       uint64
	Nacks      uint64
	LastNack   string
}

// Client is an ADS client. Construct with New, run with Run.
type Client struct {
	opts Options

	mu    sync.Mutex
	state State

	acks, nacks atomic.Uint64

	// Delta subscriptions (delta.go): want holds the names per type URL;
	// wake tells the running stream they changed.
	subMu sync.Mutex
	want  map[string]map[string]bool
	wake  chan struct{}
	// secretsHeld and secretVersions are the delta stream's secrets
	// (touched only by Run's goroutine).
	secretsHeld    map[string]*tlsv3.Secret
	secretVersions map[string]string
}

// New returns a client; it connects nothing until Run.
func New(o Options) (*Client, error) {
	if len(o.Servers) == 0 {
		return nil, errors.New("xdsclient: no control plane servers")
	}
	if o.Node == nil || o.Node.GetId() == "" {
		return nil, errors.New("xdsclient: node id is required")
	}
	if o.Apply == nil {
		return nil, errors.New("xdsclient: Apply is required")
	}
	if o.BackoffBase <= 0 {
		o.BackoffBase = 250 * time.Millisecond
	}
	if o.BackoffMax <= 0 {
		o.BackoffMax = 15 * time.Second
	}
	c := &Client{opts: o, wake: make(chan struct{}, 1), want: map[string]map[string]bool{}}
	for t, names := range map[string][]string{resource.ClusterType: o.Clusters, resource.RouteType: o.Routes, resource.ListenerType: o.Listeners} {
		c.want[t] = map[string]bool{}
		for _, n := range names {
			c.want[t][n] = true
		}
	}
	return c, nil
}

// State returns the connection state.
func (c *Client) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.state
	s.Acks, s.Nacks = c.acks.Load(), c.nacks.Load()
	return s
}

// Run keeps a stream open until ctx is done, failing over between servers
// with backoff and jitter. It returns ctx's error.
func (c *Client) Run(ctx context.Context) error {
	held := c.opts.Initial.Clone()
	ensureMaps(&held)
	attempt := 0
	for i := 0; ; i++ {
		server := c.opts.Servers[i%len(c.opts.Servers)]
		start := time.Now()
		var err error
		if c.opts.Delta {
			err = c.deltaStream(ctx, server, &held)
		} else {
			err = c.stream(ctx, server, &held)
		}
		c.setConnected(server, false)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Since(start) > 30*time.Second {
			attempt = 0 // the stream was healthy for a while: start backoff over
		}
		wait := backoff(c.opts.BackoffBase, c.opts.BackoffMax, attempt)
		attempt++
		c.opts.Log.Warn().Err(err).Str("server", server).Dur("retry_in", wait).Msg("xds stream ended; failing over")
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// backoff is full-jitter exponential backoff.
func backoff(base, max time.Duration, attempt int) time.Duration {
	d := base << min(attempt, 16)
	if d > max || d <= 0 {
		d = max
	}
	return d/2 + rand.N(d/2+1)
}

func (c *Client) setConnected(server string, up bool) {
	c.mu.Lock()
	changed := c.state.Server != server || c.state.Connected != up
	c.state.Server, c.state.Connected = server, up
	c.mu.Unlock()
	if changed && c.opts.OnConnection != nil {
		c.opts.OnConnection(server, up)
	}
}

func (c *Client) responded(typeURL string, accepted bool) {
	if c.opts.OnResponse != nil {
		c.opts.OnResponse(typeURL, accepted)
	}
}

// maxResponseBytes bounds one xDS response.
const maxResponseBytes = 512 << 20

// typeOrder is the subscription order: CDS before EDS, LDS before RDS.
var typeOrder = []string{resource.ClusterType, resource.EndpointType, resource.ListenerType, resource.RouteType}

type subscription struct {
	names   []string // nil: wildcard
	version string
	nonce   string
}

// stream runs one ADS stream to server until it fails or ctx is done.
func (c *Client) dial(server string) (*grpc.ClientConn, error) {
	dialOpts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// A state-of-the-world response carries every cluster or endpoint
		// set: at 10,000 services that is tens of MB, far over gRPC's 4 MB.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxResponseBytes)),
	}, c.opts.DialOptions...)
	conn, err := grpc.NewClient(server, dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", server, err)
	}
	return conn, nil
}

func (c *Client) stream(ctx context.Context, server string, held *Resources) error {
	conn, err := c.dial(server)
	if err != nil {
		return err
	}
	defer conn.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ads, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(sctx)
	if err != nil {
		return fmt.Errorf("open ADS stream to %s: %w", server, err)
	}

	subs := map[string]*subscription{}
	for _, t := range typeOrder {
		subs[t] = &subscription{}
	}
	subs[resource.ListenerType].names = c.opts.Listeners
	if len(c.opts.Secrets) > 0 && c.opts.OnSecrets != nil {
		subs[resource.SecretType] = &subscription{names: c.opts.Secrets}
	}
	subs[resource.EndpointType].names = sortedKeys(edsNames(held.Clusters))
	subs[resource.RouteType].names = sortedKeys(rdsNames(held.Listeners))
	send := func(typeURL string, nack error) error {
		s := subs[typeURL]
		req := &discoveryv3.DiscoveryRequest{
			Node:          c.opts.Node,
			TypeUrl:       typeURL,
			ResourceNames: s.names,
			VersionInfo:   s.version,
			ResponseNonce: s.nonce,
		}
		if nack != nil {
			req.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: nack.Error()}
		}
		return ads.Send(req)
	}
	for _, t := range typeOrder {
		if (t == resource.EndpointType || t == resource.RouteType) && len(subs[t].names) == 0 {
			continue // subscribe once a cluster or listener names something
		}
		if err := send(t, nil); err != nil {
			return fmt.Errorf("subscribe %s: %w", t, err)
		}
	}
	if subs[resource.SecretType] != nil {
		if err := send(resource.SecretType, nil); err != nil {
			return fmt.Errorf("subscribe %s: %w", resource.SecretType, err)
		}
	}
	subscribed := map[string]bool{resource.ClusterType: true, resource.ListenerType: true,
		resource.EndpointType: len(subs[resource.EndpointType].names) > 0, resource.RouteType: len(subs[resource.RouteType].names) > 0}

	for {
		resp, err := ads.Recv()
		if err != nil {
			return fmt.Errorf("receive from %s: %w", server, err)
		}
		c.setConnected(server, true)
		s, ok := subs[resp.GetTypeUrl()]
		if !ok {
			continue // a type we did not ask for
		}
		s.nonce = resp.GetNonce()
		if resp.GetTypeUrl() == resource.SecretType {
			if err := c.secrets(resp); err != nil {
				c.nacks.Add(1)
				c.responded(resp.GetTypeUrl(), false)
				c.opts.Log.Error().Err(err).Str("type", resp.GetTypeUrl()).Str("version", resp.GetVersionInfo()).Msg("rejected secrets (NACK); keeping the current ones")
				if err := send(resp.GetTypeUrl(), err); err != nil {
					return fmt.Errorf("nack: %w", err)
				}
				continue
			}
			s.version = resp.GetVersionInfo()
			c.acks.Add(1)
			c.responded(resp.GetTypeUrl(), true)
			if err := send(resp.GetTypeUrl(), nil); err != nil {
				return fmt.Errorf("ack: %w", err)
			}
			continue
		}
		next, err := merge(*held, resp)
		if err == nil {
			err = c.opts.Apply(next)
		}
		if err != nil {
			c.nacks.Add(1)
			c.responded(resp.GetTypeUrl(), false)
			c.mu.Lock()
			c.state.LastNack = err.Error()
			c.mu.Unlock()
			c.opts.Log.Error().Err(err).Str("type", resp.GetTypeUrl()).Str("version", resp.GetVersionInfo()).Msg("rejected xds update (NACK); keeping the last good config")
			if err := send(resp.GetTypeUrl(), err); err != nil {
				return fmt.Errorf("nack: %w", err)
			}
			continue
		}
		*held = next
		s.version = resp.GetVersionInfo()
		c.acks.Add(1)
		c.mu.Lock()
		c.state.LastUpdate = time.Now()
		c.mu.Unlock()
		c.responded(resp.GetTypeUrl(), true)
		if err := send(resp.GetTypeUrl(), nil); err != nil {
			return fmt.Errorf("ack: %w", err)
		}
		// Follow what clusters and listeners now name.
		for typeURL, names := range map[string][]string{
			resource.EndpointType: sortedKeys(edsNames(held.Clusters)),
			resource.RouteType:    sortedKeys(rdsNames(held.Listeners)),
		} {
			ds := subs[typeURL]
			if equalStrings(ds.names, names) && (subscribed[typeURL] || len(names) == 0) {
				continue
			}
			ds.names = names
			subscribed[typeURL] = true
			if err := send(typeURL, nil); err != nil {
				return fmt.Errorf("update %s subscription: %w", typeURL, err)
			}
		}
	}
}

// secrets decodes a secrets response and hands it to OnSecrets.
func (c *Client) secrets(resp *discoveryv3.DiscoveryResponse) error {
	out := map[string]*tlsv3.Secret{}
	for _, a := range resp.GetResources() {
		msg, name, err := Decode(a)
		if err != nil {
			return err
		}
		sec, ok := msg.(*tlsv3.Secret)
		if !ok {
			return fmt.Errorf("resource of type %s in a secrets response", a.GetTypeUrl())
		}
		out[name] = sec
	}
	return c.opts.OnSecrets(out)
}

// merge applies one response to a copy of held: listeners and clusters are
// replaced wholesale (state of the world); routes and endpoints are
// replaced for the names in the response and pruned to what is still named.
func merge(held Resources, resp *discoveryv3.DiscoveryResponse) (Resources, error) {
	next := held.Clone()
	typeURL := resp.GetTypeUrl()
	switch typeURL {
	case resource.ListenerType:
		next.Listeners = map[string]*listenerv3.Listener{}
	case resource.ClusterType:
		next.Clusters = map[string]*clusterv3.Cluster{}
	}
	for _, a := range resp.GetResources() {
		if a.GetTypeUrl() != typeURL {
			return held, fmt.Errorf("resource of type %s in a %s response", a.GetTypeUrl(), typeURL)
		}
		msg, name, err := Decode(a)
		if err != nil {
			return held, err
		}
		next.Put(msg, name)
	}
	eds, rds := edsNames(next.Clusters), rdsNames(next.Listeners)
	for n := range next.Endpoints {
		if !eds[n] {
			delete(next.Endpoints, n)
		}
	}
	for n := range next.Routes {
		if !rds[n] {
			delete(next.Routes, n)
		}
	}
	next.Versions[typeURL] = resp.GetVersionInfo()
	return next, nil
}

// Put stores a decoded resource under its name.
func (r *Resources) Put(msg proto.Message, name string) {
	switch m := msg.(type) {
	case *listenerv3.Listener:
		r.Listeners[name] = m
	case *clusterv3.Cluster:
		r.Clusters[name] = m
	case *routev3.RouteConfiguration:
		r.Routes[name] = m
	case *endpointv3.ClusterLoadAssignment:
		r.Endpoints[name] = m
	}
}

// validator is what protoc-gen-validate generates on every Envoy message.
type validator interface{ ValidateAll() error }

// Decode unmarshals and validates one resource as the client does before
// it holds it, and returns it with its name.
func Decode(a *anypb.Any) (proto.Message, string, error) {
	var msg proto.Message
	switch a.GetTypeUrl() {
	case resource.ListenerType:
		msg = &listenerv3.Listener{}
	case resource.ClusterType:
		msg = &clusterv3.Cluster{}
	case resource.RouteType:
		msg = &routev3.RouteConfiguration{}
	case resource.EndpointType:
		msg = &endpointv3.ClusterLoadAssignment{}
	case resource.SecretType:
		msg = &tlsv3.Secret{}
	default:
		return nil, "", fmt.Errorf("unsupported resource type %s", a.GetTypeUrl())
	}
	if err := a.UnmarshalTo(msg); err != nil {
		return nil, "", fmt.Errorf("decode %s: %w", a.GetTypeUrl(), err)
	}
	name := cache.GetResourceName(msg)
	if v, ok := msg.(validator); ok {
		if err := v.ValidateAll(); err != nil {
			return nil, "", fmt.Errorf("invalid %s %q: %w", shortType(a.GetTypeUrl()), name, err)
		}
	}
	if name == "" {
		return nil, "", fmt.Errorf("%s without a name", shortType(a.GetTypeUrl()))
	}
	return msg, name, nil
}

func shortType(typeURL string) string {
	for i := len(typeURL) - 1; i >= 0; i-- {
		if typeURL[i] == '.' {
			return typeURL[i+1:]
		}
	}
	return typeURL
}

// edsNames are the ClusterLoadAssignments the clusters ask for.
func edsNames(clusters map[string]*clusterv3.Cluster) map[string]bool {
	out := map[string]bool{}
	for name, c := range clusters {
		if c.GetType() != clusterv3.Cluster_EDS {
			continue
		}
		if n := c.GetEdsClusterConfig().GetServiceName(); n != "" {
			out[n] = true
		} else {
			out[name] = true
		}
	}
	return out
}

// rdsNames are the RouteConfigurations the listeners' HTTP connection
// managers ask for.
func rdsNames(listeners map[string]*listenerv3.Listener) map[string]bool {
	out := map[string]bool{}
	for _, l := range listeners {
		for _, hcm := range HTTPConnectionManagers(l) {
			if n := hcm.GetRds().GetRouteConfigName(); n != "" {
				out[n] = true
			}
		}
	}
	return out
}

// HTTPConnectionManagers returns the HCMs of a listener: its API listener's
// and those in its filter chains.
func HTTPConnectionManagers(l *listenerv3.Listener) []*hcmv3.HttpConnectionManager {
	var out []*hcmv3.HttpConnectionManager
	if a := l.GetApiListener().GetApiListener(); a != nil {
		h := &hcmv3.HttpConnectionManager{}
		if a.UnmarshalTo(h) == nil {
			out = append(out, h)
		}
	}
	for _, fc := range l.GetFilterChains() {
		for _, f := range fc.GetFilters() {
			if tc := f.GetTypedConfig(); tc != nil {
				h := &hcmv3.HttpConnectionManager{}
				if tc.MessageIs(h) && tc.UnmarshalTo(h) == nil {
					out = append(out, h)
				}
			}
		}
	}
	return out
}

func ensureMaps(r *Resources) {
	if r.Listeners == nil {
		r.Listeners = map[string]*listenerv3.Listener{}
	}
	if r.Routes == nil {
		r.Routes = map[string]*routev3.RouteConfiguration{}
	}
	if r.Clusters == nil {
		r.Clusters = map[string]*clusterv3.Cluster{}
	}
	if r.Endpoints == nil {
		r.Endpoints = map[string]*endpointv3.ClusterLoadAssignment{}
	}
	if r.Versions == nil {
		r.Versions = map[string]string{}
	}
	if r.ResourceVersions == nil {
		r.ResourceVersions = map[string]map[string]string{}
	}
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func equalStrings(a, b []string) bool { return slices.Equal(a, b) }
