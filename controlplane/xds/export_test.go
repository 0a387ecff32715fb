package xds

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"

	"github.com/meshvm/mesh/controlplane/model"
)

// AddNode registers a node as if it had opened a stream.
func (s *Server) AddNode(n model.Node) { _ = s.register(n, "") }

// RemoveNode drops a stream of a node, as when it closes.
func (s *Server) RemoveNode(id string) { s.unregister(id) }

// DeltaWatch opens a watch as go-control-plane's delta server does for a
// request of a node's stream: sub is the stream's subscription of that
// type (stream.NewDeltaSubscription for its first request). A response
// goes to out; cancel is nil when one was sent at once.
func (s *Server) DeltaWatch(id, typeURL string, sub stream.Subscription, out chan cache.DeltaResponse) (cancel func(), err error) {
	req := &discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: id}, TypeUrl: typeURL}
	return s.mux.CreateDeltaWatch(req, sub, out)
}
