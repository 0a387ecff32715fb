package translate

import (
	"fmt"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	rawbufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/identity"
	"github.com/meshvm/mesh/wire"
)

// Envoy names of the mTLS pieces.
const (
	TLSTransportSocket       = "envoy.transport_sockets.tls"
	RawBufferTransportSocket = "envoy.transport_sockets.raw_buffer"
	TLSInspectorFilter       = "envoy.filters.listener.tls_inspector"
)

// MTLS is the mesh's mTLS policy as the translation needs it
// (control.mtls, control.services.<name>.mtls_mode, control.ca).
type MTLS struct {
	DefaultMode string
	Modes       map[string]string // by service
	TrustDomain string
	Namespace   string
}

// MTLSFromConfig reads the policy from the control plane's config.
func MTLSFromConfig(c config.Control) MTLS {
	m := MTLS{DefaultMode: c.MTLSMode(""), Modes: map[string]string{}, TrustDomain: c.CA.TrustDomain, Namespace: c.CA.Namespace}
	for name, s := range c.Services {
		if s.MTLSMode != "" {
			m.Modes[name] = s.MTLSMode
		}
	}
	return m
}

// Mode is service's inbound mode.
func (m MTLS) Mode(service string) string {
	if md := m.Modes[service]; md != "" {
		return md
	}
	if m.DefaultMode != "" {
		return m.DefaultMode
	}
	return wire.MTLSPermissive
}

// ID is the SPIFFE ID service's agents present.
func (m MTLS) ID(service string) string {
	td, ns := cmpOr(m.TrustDomain, identity.DefaultTrustDomain), cmpOr(m.Namespace, identity.DefaultNamespace)
	if id, err := identity.ForService(td, ns, service); err == nil {
		return id.String()
	}
	return identity.ID{TrustDomain: td, Namespace: ns, Service: service}.String()
}

// takesMTLS reports whether every endpoint of s is an agent that takes
// mTLS (its registration says wire.MetaMTLS). A service with some
// plaintext-only instances keeps plaintext clusters: a permissive
// instance takes them, a strict one has an identity and so registers
// MetaMTLS.
func takesMTLS(s *model.Service) bool {
	if len(s.Endpoints) == 0 {
		return false
	}
	for i := range s.Endpoints {
		if s.Endpoints[i].Metadata.Meta[wire.MetaMTLS] == "" {
			return false
		}
	}
	return true
}

func sdsSecret(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: adsSource()}
}

func commonTLS(alpn []string) *tlsv3.CommonTlsContext {
	return &tlsv3.CommonTlsContext{
		TlsParams: &tlsv3.TlsParameters{
			TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
			TlsMaximumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
		},
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sdsSecret(wire.SecretWorkloadCert)},
		AlpnProtocols:                  alpn,
	}
}

// upstreamALPN is what a caller offers the service's agents: the app
// protocol's own, then the mesh's.
func upstreamALPN(proto string) []string {
	switch proto {
	case config.AppProtocolHTTP1:
		return []string{"http/1.1", wire.ALPNMesh}
	case config.AppProtocolHTTP2, config.AppProtocolGRPC:
		return []string{"h2", wire.ALPNMesh}
	case config.AppProtocolTCP:
		return []string{wire.ALPNMesh}
	}
	return []string{"h2", "http/1.1", wire.ALPNMesh}
}

// setUpstreamTLS gives the cluster of a service whose agents take mTLS an
// UpstreamTlsContext: present the workload certificate (SDS "default"),
// verify the peer against the trust bundle (SDS "ROOTCA") and its URI SAN
// against the service's SPIFFE ID; the mode goes into the cluster's
// governance metadata.
func setUpstreamTLS(c *clusterv3.Cluster, s *model.Service, m MTLS) error {
	if !takesMTLS(s) {
		return nil
	}
	common := commonTLS(upstreamALPN(serviceProtocol(s)))
	common.ValidationContextType = &tlsv3.CommonTlsContext_CombinedValidationContext{
		CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
			DefaultValidationContext: &tlsv3.CertificateValidationContext{
				MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
					SanType: tlsv3.SubjectAltNameMatcher_URI,
					Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: m.ID(s.Name)}},
				}},
			},
			ValidationContextSdsSecretConfig: sdsSecret(wire.SecretTrustBundle),
		},
	}
	a, err := anypb.New(&tlsv3.UpstreamTlsContext{CommonTlsContext: common})
	if err != nil {
		return fmt.Errorf("cluster %s: upstream tls context: %w", s.Name, err)
	}
	c.TransportSocket = &corev3.TransportSocket{Name: TLSTransportSocket, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: a}}
	setModeMetadata(&c.Metadata, m.Mode(s.Name))
	return nil
}

func setModeMetadata(md **corev3.Metadata, mode string) {
	if *md == nil {
		*md = &corev3.Metadata{}
	}
	if (*md).FilterMetadata == nil {
		(*md).FilterMetadata = map[string]*structpb.Struct{}
	}
	g := (*md).FilterMetadata[wire.GovernanceNamespace]
	if g == nil {
		g = &structpb.Struct{Fields: map[string]*structpb.Value{}}
		(*md).FilterMetadata[wire.GovernanceNamespace] = g
	}
	g.Fields[wire.MTLSModeMetadataKey] = structpb.NewStringValue(mode)
}

// secureInbound turns the inbound listener's one filter chain into an
// mTLS chain (filter_chain_match transport_protocol "tls", a
// DownstreamTlsContext with the SDS secrets and a required client
// certificate) and, in permissive mode, a plain-text chain
// (transport_protocol "raw_buffer") with the same filters; the TLS
// inspector tells them apart, as in Istio's permissive listeners.
func secureInbound(l *listenerv3.Listener, mode string) error {
	if len(l.FilterChains) != 1 {
		return fmt.Errorf("listener %s: %d filter chains, want 1 to secure", l.Name, len(l.FilterChains))
	}
	plain := l.FilterChains[0]
	common := commonTLS([]string{"h2", "http/1.1", wire.ALPNMesh})
	common.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{
		ValidationContextSdsSecretConfig: sdsSecret(wire.SecretTrustBundle),
	}
	dt, err := anypb.New(&tlsv3.DownstreamTlsContext{CommonTlsContext: common, RequireClientCertificate: wrapperspb.Bool(true)})
	if err != nil {
		return fmt.Errorf("listener %s: downstream tls context: %w", l.Name, err)
	}
	inspector, err := anypb.New(&tlsinspectorv3.TlsInspector{})
	if err != nil {
		return err
	}
	secured := &listenerv3.FilterChain{
		Name:             "mtls",
		FilterChainMatch: &listenerv3.FilterChainMatch{TransportProtocol: "tls"},
		Filters:          plain.Filters,
		TransportSocket:  &corev3.TransportSocket{Name: TLSTransportSocket, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: dt}},
	}
	l.FilterChains = []*listenerv3.FilterChain{secured}
	if mode == wire.MTLSPermissive {
		raw, err := anypb.New(&rawbufferv3.RawBuffer{})
		if err != nil {
			return err
		}
		pt := proto.Clone(plain).(*listenerv3.FilterChain)
		pt.Name = "plaintext"
		pt.FilterChainMatch = &listenerv3.FilterChainMatch{TransportProtocol: "raw_buffer"}
		pt.TransportSocket = &corev3.TransportSocket{Name: RawBufferTransportSocket, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: raw}}
		l.FilterChains = append(l.FilterChains, pt)
	}
	l.ListenerFilters = []*listenerv3.ListenerFilter{{
		Name: TLSInspectorFilter, ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: inspector},
	}}
	setModeMetadata(&l.Metadata, mode)
	return nil
}

// sameMTLS reports whether a service's cluster would get the same
// transport socket under both policies and endpoint sets.
func sameMTLS(prev, next MTLS, ps, s *model.Service) bool {
	if takesMTLS(ps) != takesMTLS(s) {
		return false
	}
	return !takesMTLS(s) || prev.Mode(s.Name) == next.Mode(s.Name) && prev.ID(s.Name) == next.ID(s.Name)
}

// grpcCluster is c as gRPC proxyless clients get it. gRPC takes TLS
// material only from certificate provider instances named in its
// bootstrap (gRFC A29) and refuses a cluster naming SDS secrets, so a
// cluster with an UpstreamTlsContext is copied with the instances
// "default" (its certificate) and "ROOTCA" (the bundle), the names of the
// SDS secrets, and the SPIFFE ID in match_subject_alt_names, the field
// gRPC reads. A client with xds credentials then speaks mTLS; one with
// insecure credentials speaks plain text (served in permissive mode).
func grpcCluster(c *clusterv3.Cluster, s *model.Service, m MTLS) (*clusterv3.Cluster, error) {
	if c.TransportSocket == nil {
		return c, nil
	}
	g := proto.Clone(c).(*clusterv3.Cluster)
	a, err := anypb.New(&tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: wire.SecretWorkloadCert},
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{
			ValidationContext: &tlsv3.CertificateValidationContext{
				CaCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: wire.SecretTrustBundle},
				MatchSubjectAltNames:          []*matcherv3.StringMatcher{{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: m.ID(s.Name)}}},
			},
		},
	}})
	if err != nil {
		return nil, fmt.Errorf("cluster %s: gRPC upstream tls context: %w", s.Name, err)
	}
	g.TransportSocket = &corev3.TransportSocket{Name: TLSTransportSocket, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: a}}
	return g, nil
}
