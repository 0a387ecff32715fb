package xds

import (
	"sort"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshvm/mesh/meshapi"
	"github.com/meshvm/mesh/wire"
)

// typeSync is what a stream's client holds of one type: the version it
// last accepted, and the detail of its last rejection while it stands.
type typeSync struct {
	acked string
	nack  string
	// delta: an answer is pending (a delta response not yet ACKed).
	pending bool
}

// kindOf tells a node's proxy kind from its user agent and metadata.
func kindOf(n *corev3.Node) string {
	ua := strings.ToLower(n.GetUserAgentName())
	role := n.GetMetadata().GetFields()[wire.NodeRole].GetStringValue()
	switch {
	case ua == wire.GatewayUserAgent || role == wire.RoleGateway:
		return meshapi.KindGateway
	case ua == wire.AgentUserAgent:
		return meshapi.KindAgent
	case NodeFromProto(n).Proxyless:
		return meshapi.KindProxyless
	}
	return meshapi.KindEnvoy
}

// track records a SotW request: an ACK of the last response sent (its
// nonce) sets the accepted version and clears a standing NACK; a NACK
// records its detail. Requests answering an older response are ignored.
func (s *Server) track(k streamKey, typeURL, nonce, version, detail string, nack bool) {
	s.smu.Lock()
	defer s.smu.Unlock()
	st := s.streams[k]
	if st == nil || typeURL == "" {
		return
	}
	ts := st.types[typeURL]
	if ts == nil {
		ts = &typeSync{}
		st.types[typeURL] = ts
	}
	last := st.sent[typeURL]
	switch {
	case nack:
		ts.nack = detail
		if ts.nack == "" {
			ts.nack = "rejected (no detail given)"
		}
	case nonce == "" || nonce == last.nonce:
		ts.acked, ts.nack = version, ""
	}
}

// trackDelta records a delta request: an ACK of a response clears what is
// pending and a standing NACK.
//
// A request that unsubscribes names also clears a standing NACK: the
// client has dropped what it rejected (an agent does so for a service it
// fetched on demand and could not use).
func (s *Server) trackDelta(k streamKey, typeURL, nonce, detail string, nack, unsubscribes bool) {
	s.smu.Lock()
	defer s.smu.Unlock()
	st := s.streams[k]
	if st == nil || typeURL == "" {
		return
	}
	ts := st.types[typeURL]
	if ts == nil {
		ts = &typeSync{}
		st.types[typeURL] = ts
	}
	switch {
	case nack:
		ts.nack, ts.pending = detail, false
		if ts.nack == "" {
			ts.nack = "rejected (no detail given)"
		}
	case unsubscribes && nonce == "":
		ts.nack = ""
	case nonce != "":
		ts.nack, ts.pending = "", false
		if last, ok := st.sent[typeURL]; ok && last.nonce == nonce {
			ts.acked = last.version
		}
	}
}

// Proxies is the sync state of every connected node, sorted by id: per
// type the version it should have (its snapshot's; for load assignments,
// the last sent, which the shared EDS cache decides), the last sent and
// the last ACKed, and the node's state, the worst of its streams' types.
func (s *Server) Proxies() []meshapi.Proxy {
	type streamCopy struct {
		kind   string
		opened time.Time
		delta  bool
		sent   map[string]sent
		types  map[string]typeSync
	}
	byNode := map[string][]streamCopy{}
	s.smu.Lock()
	for k, st := range s.streams {
		if st.nodeID == "" {
			continue
		}
		c := streamCopy{kind: st.kind, opened: st.opened, delta: k.delta, sent: map[string]sent{}, types: map[string]typeSync{}}
		for t, v := range st.sent {
			c.sent[t] = v
		}
		for t, v := range st.types {
			c.types[t] = *v
		}
		byNode[st.nodeID] = append(byNode[st.nodeID], c)
	}
	s.smu.Unlock()

	s.mu.Lock()
	out := make([]meshapi.Proxy, 0, len(s.nodes))
	for id, ns := range s.nodes {
		p := meshapi.Proxy{Node: id, Service: ns.node.Service, Streams: ns.streams, State: meshapi.InSync,
			Locality: meshapi.LocalityString(ns.node.Locality.Region, ns.node.Locality.Zone), Kind: meshapi.KindEnvoy}
		want := map[string]string{}
		if ns.snap != nil {
			for i, v := range ns.snap.Versions() {
				want[Kinds[i]] = v
			}
		}
		for _, c := range byNode[id] {
			p.Kind = c.kind
			if p.Connected.IsZero() || c.opened.Before(p.Connected) {
				p.Connected = c.opened.UTC()
			}
			for _, typeURL := range Kinds {
				ts, ok := c.types[typeURL]
				if !ok {
					continue // never subscribed
				}
				sent := c.sent[typeURL].version
				row := meshapi.TypeState{Type: typeName(typeURL), Sent: sent, Acked: ts.acked, NACK: ts.nack, State: meshapi.InSync}
				switch {
				case c.delta:
					// A delta client should hold what it was last sent
					// for its subscriptions; pending says it has not yet.
					row.Want = sent
				case typeURL == resourcev3.EndpointType:
					row.Want = sent
				default:
					row.Want = want[typeURL]
				}
				if typeURL == resourcev3.EndpointType && !c.delta && ts.nack == "" && ts.acked != sent && s.eds.holdsCurrent(id) {
					row.Want = ts.acked
				}
				switch {
				case ts.nack != "":
					row.State = meshapi.NACKed
				case c.delta && ts.pending:
					row.State = meshapi.Stale
				case !c.delta && (row.Want == "" || row.Acked != row.Want):
					row.State = meshapi.Stale
				}
				p.Types = append(p.Types, row)
				p.State = worse(p.State, row.State)
				if row.State == meshapi.NACKed && p.Reason == "" {
					p.Reason = row.Type + ": " + ts.nack
				}
			}
		}
		if exp, ok := s.secrets.expiry(id); ok {
			exp = exp.UTC()
			p.CertExpiry = &exp
		}
		if len(p.Types) == 0 {
			p.State = meshapi.Stale
			p.Reason = "subscribed to nothing yet"
		}
		out = append(out, p)
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

func worse(a, b string) string {
	rank := map[string]int{meshapi.InSync: 0, meshapi.Stale: 1, meshapi.NACKed: 2}
	if rank[b] > rank[a] {
		return b
	}
	return a
}
