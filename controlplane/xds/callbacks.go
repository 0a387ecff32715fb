package xds

import (
	"context"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/wire"
)

// NodeFromProto reads a node's identity from the xDS Node message: its id,
// locality, and the node metadata keys of the wire contract
// (wire.NodeService, ...). A client whose user agent is gRPC is proxyless
// unless its metadata says otherwise.
func NodeFromProto(n *corev3.Node) model.Node {
	f := n.GetMetadata().GetFields()
	str := func(k string) string { return strings.TrimSpace(f[k].GetStringValue()) }
	out := model.Node{
		ID:           n.GetId(),
		Service:      str(wire.NodeService),
		AppAddress:   str(wire.NodeAppAddress),
		InboundAddr:  str(wire.NodeInboundAddr),
		OutboundAddr: str(wire.NodeOutboundAddr),
		Locality:     model.Locality{Region: n.GetLocality().GetRegion(), Zone: n.GetLocality().GetZone()},
		Proxyless:    strings.HasPrefix(strings.ToLower(n.GetUserAgentName()), wire.GRPCUserAgentPrefix),
	}
	switch v := f[wire.NodeAppPort].GetKind().(type) {
	case *structpb.Value_NumberValue:
		out.AppPort = int(v.NumberValue)
	case *structpb.Value_StringValue:
		out.AppPort, _ = strconv.Atoi(strings.TrimSpace(v.StringValue))
	}
	if out.AppPort < 0 || out.AppPort > 65535 {
		out.AppPort = 0
	}
	switch v := f[wire.NodeProxyless].GetKind().(type) {
	case *structpb.Value_BoolValue:
		out.Proxyless = v.BoolValue
	case *structpb.Value_StringValue:
		if b, err := strconv.ParseBool(v.StringValue); err == nil {
			out.Proxyless = b
		}
	}
	gatewayFromProto(n, &out)
	return out
}

// errStarting refuses a stream before the first complete view is served.
var errStarting = status.Error(codes.Unavailable, "mesh control is starting: its first complete view is not built yet; try another control plane")

// serving refuses streams until the first model is set: a replica that is
// starting never serves an empty or partial view, and an agent whose
// stream it refuses fails over at once to another control plane in its
// list instead of waiting on this one (decisions.md).
func (s *Server) serving() error {
	if s.ready.Load() {
		return nil
	}
	s.metrics.startRefused.Inc()
	return errStarting
}

// OnStreamOpen implements the server callbacks.
func (s *Server) OnStreamOpen(ctx context.Context, id int64, _ string) error {
	if err := s.serving(); err != nil {
		return err
	}
	s.openStream(ctx, streamKey{id: id})
	return nil
}

// OnStreamClosed implements the server callbacks.
func (s *Server) OnStreamClosed(id int64, _ *corev3.Node) { s.closeStream(streamKey{id: id}) }

// OnDeltaStreamOpen implements the server callbacks.
func (s *Server) OnDeltaStreamOpen(ctx context.Context, id int64, _ string) error {
	if err := s.serving(); err != nil {
		return err
	}
	s.openStream(ctx, streamKey{delta: true, id: id})
	return nil
}

// OnDeltaStreamClosed implements the server callbacks.
func (s *Server) OnDeltaStreamClosed(id int64, _ *corev3.Node) {
	s.closeStream(streamKey{delta: true, id: id})
}

func (s *Server) openStream(ctx context.Context, k streamKey) {
	s.smu.Lock()
	s.streams[k] = &streamState{ctx: ctx, sent: map[string]sent{}, opened: time.Now(), types: map[string]*typeSync{}}
	s.metrics.streams.Set(float64(len(s.streams)))
	s.smu.Unlock()
}

func (s *Server) closeStream(k streamKey) {
	s.smu.Lock()
	st := s.streams[k]
	delete(s.streams, k)
	s.metrics.streams.Set(float64(len(s.streams)))
	s.smu.Unlock()
	if st != nil && st.nodeID != "" {
		s.unregister(st.nodeID)
	}
}

// firstNode admits and registers the stream's node on its first request
// carrying one. An error (the node refused) ends the stream with it.
func (s *Server) firstNode(k streamKey, n *corev3.Node) error {
	if n == nil || n.GetId() == "" {
		return nil
	}
	s.smu.Lock()
	st := s.streams[k]
	if st == nil || st.nodeID != "" {
		s.smu.Unlock()
		return nil
	}
	ctx := st.ctx
	s.smu.Unlock()
	node := NodeFromProto(n)
	owner := ""
	if s.admit != nil {
		var err error
		if owner, err = s.admit(ctx, node); err != nil {
			s.metrics.refused.Inc()
			s.log.Warn().Err(err).Str("node", node.ID).Str("service", node.Service).Msg("xds client refused")
			return err
		}
	}
	if err := s.register(node, owner); err != nil {
		s.metrics.refused.Inc()
		s.log.Warn().Err(err).Str("node", node.ID).Msg("xds client refused")
		return err
	}
	s.smu.Lock()
	if st := s.streams[k]; st != nil {
		st.nodeID = node.ID
		st.kind = kindOf(n)
		s.smu.Unlock()
		return nil
	}
	s.smu.Unlock()
	s.unregister(node.ID) // the stream closed meanwhile
	return nil
}

// OnStreamRequest implements the server callbacks. A NACK is logged and
// counted, and its request is marked as having seen the rejected version,
// so the cache holds the watch until the snapshot changes instead of
// resending the rejected version at once, in a loop.
func (s *Server) OnStreamRequest(id int64, req *discovery.DiscoveryRequest) error {
	k := streamKey{id: id}
	if err := s.firstNode(k, req.GetNode()); err != nil {
		return err
	}
	s.track(k, req.GetTypeUrl(), req.GetResponseNonce(), req.GetVersionInfo(), req.GetErrorDetail().GetMessage(), req.GetErrorDetail() != nil)
	s.heldSotW(k, req)
	if req.GetErrorDetail() == nil {
		return nil
	}
	s.smu.Lock()
	var last sent
	if st := s.streams[k]; st != nil {
		last = st.sent[req.GetTypeUrl()]
	}
	s.smu.Unlock()
	s.metrics.nacks.WithLabelValues(typeName(req.GetTypeUrl())).Inc()
	s.log.Warn().Str("node", req.GetNode().GetId()).Str("type", typeName(req.GetTypeUrl())).
		Str("rejected_version", last.version).Str("accepted_version", req.GetVersionInfo()).
		Str("detail", req.GetErrorDetail().GetMessage()).Msg("client rejected resources (nack)")
	if last.nonce != "" && last.nonce == req.GetResponseNonce() {
		req.VersionInfo = last.version
	}
	return nil
}

// OnStreamResponse implements the server callbacks.
func (s *Server) OnStreamResponse(_ context.Context, id int64, req *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
	s.smu.Lock()
	if st := s.streams[streamKey{id: id}]; st != nil {
		st.sent[req.GetTypeUrl()] = sent{nonce: resp.GetNonce(), version: resp.GetVersionInfo()}
	}
	s.smu.Unlock()
	s.metrics.pushes.WithLabelValues(typeName(req.GetTypeUrl())).Inc()
	s.metrics.resources.WithLabelValues(typeName(req.GetTypeUrl())).Add(float64(len(resp.GetResources())))
}

// OnStreamDeltaRequest implements the server callbacks. The delta server
// answers only with changes, so a NACK needs no special handling beyond
// being logged and counted.
func (s *Server) OnStreamDeltaRequest(id int64, req *discovery.DeltaDiscoveryRequest) error {
	if err := s.firstNode(streamKey{delta: true, id: id}, req.GetNode()); err != nil {
		return err
	}
	s.trackDelta(streamKey{delta: true, id: id}, req.GetTypeUrl(), req.GetResponseNonce(), req.GetErrorDetail().GetMessage(), req.GetErrorDetail() != nil,
		len(req.GetResourceNamesUnsubscribe()) > 0)
	s.heldDeltaRequest(streamKey{delta: true, id: id}, req)
	if req.GetErrorDetail() != nil {
		s.metrics.nacks.WithLabelValues(typeName(req.GetTypeUrl())).Inc()
		s.log.Warn().Str("node", req.GetNode().GetId()).Str("type", typeName(req.GetTypeUrl())).
			Str("nonce", req.GetResponseNonce()).Str("detail", req.GetErrorDetail().GetMessage()).
			Msg("client rejected resources (nack)")
	}
	return nil
}

// OnStreamDeltaResponse implements the server callbacks. A load
// assignment response's system_version_info, a per-process counter of the
// shared delta EDS cache, is replaced by the content version of the
// assignments it was built from (as the server sets the nonce, just
// before sending), so every replica sends the same versions.
func (s *Server) OnStreamDeltaResponse(id int64, req *discovery.DeltaDiscoveryRequest, resp *discovery.DeltaDiscoveryResponse) {
	if resp.GetTypeUrl() == resourcev3.EndpointType {
		resp.SystemVersionInfo = s.deltaVersion(resp.GetSystemVersionInfo())
	}
	s.smu.Lock()
	if st := s.streams[streamKey{delta: true, id: id}]; st != nil {
		if ts := st.types[req.GetTypeUrl()]; ts != nil {
			ts.pending = true
		} else {
			st.types[req.GetTypeUrl()] = &typeSync{pending: true}
		}
		// What was sent, for mesh status: an ACK of this nonce makes it
		// the accepted version (trackDelta).
		st.sent[req.GetTypeUrl()] = sent{nonce: resp.GetNonce(), version: resp.GetSystemVersionInfo()}
	}
	s.smu.Unlock()
	s.heldDeltaResponse(streamKey{delta: true, id: id}, req.GetTypeUrl(), resp)
	s.metrics.pushes.WithLabelValues(typeName(req.GetTypeUrl())).Inc()
	s.metrics.resources.WithLabelValues(typeName(req.GetTypeUrl())).Add(float64(len(resp.GetResources())))
}

// OnFetchRequest implements the server callbacks (REST fetch is not served).
func (s *Server) OnFetchRequest(context.Context, *discovery.DiscoveryRequest) error { return nil }

// OnFetchResponse implements the server callbacks.
func (s *Server) OnFetchResponse(*discovery.DiscoveryRequest, *discovery.DiscoveryResponse) {}
