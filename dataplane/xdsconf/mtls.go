package xdsconf

import (
	"fmt"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/meshvm/mesh/identity"
	"github.com/meshvm/mesh/wire"
)

// clusterMTLS reads a Cluster's transport_socket: an UpstreamTlsContext
// means the service's agents take mTLS and must prove the SPIFFE ID its
// URI SAN matcher names (exact); the mode comes from the cluster's
// governance metadata. No transport socket (or raw_buffer) is plain text.
func clusterMTLS(c *clusterv3.Cluster) (id, mode string, err error) {
	ts := c.GetTransportSocket()
	if ts == nil || !ts.GetTypedConfig().MessageIs(&tlsv3.UpstreamTlsContext{}) {
		return "", "", nil
	}
	u := &tlsv3.UpstreamTlsContext{}
	if err := ts.GetTypedConfig().UnmarshalTo(u); err != nil {
		return "", "", fmt.Errorf("transport_socket %s: %w", ts.GetName(), err)
	}
	common := u.GetCommonTlsContext()
	var vc *tlsv3.CertificateValidationContext
	switch {
	case common.GetCombinedValidationContext() != nil:
		vc = common.GetCombinedValidationContext().GetDefaultValidationContext()
	case common.GetValidationContext() != nil:
		vc = common.GetValidationContext()
	}
	for _, m := range vc.GetMatchTypedSubjectAltNames() {
		if m.GetSanType() != tlsv3.SubjectAltNameMatcher_URI {
			continue
		}
		exact := m.GetMatcher().GetExact()
		if _, err := identity.ParseID(exact); err != nil {
			return "", "", fmt.Errorf("transport_socket UpstreamTlsContext: URI SAN matcher: %w", err)
		}
		return exact, governanceString(c.GetMetadata(), wire.MTLSModeMetadataKey), nil
	}
	return "", "", fmt.Errorf("transport_socket UpstreamTlsContext: no match_typed_subject_alt_names URI with an exact SPIFFE ID to verify the peer against")
}

// inboundMTLS reads the inbound Listener's mode: a filter chain matching
// transport_protocol "tls" with a DownstreamTlsContext takes mTLS, one
// without a TLS transport socket takes plain text; both is permissive,
// TLS alone strict, neither "" (the local config decides). The Listener's
// governance metadata, when set, must agree.
func inboundMTLS(l *listenerv3.Listener) (string, error) {
	tlsChain, plain := false, false
	for _, fc := range l.GetFilterChains() {
		ts := fc.GetTransportSocket()
		if ts != nil && ts.GetTypedConfig().MessageIs(&tlsv3.DownstreamTlsContext{}) {
			d := &tlsv3.DownstreamTlsContext{}
			if err := ts.GetTypedConfig().UnmarshalTo(d); err != nil {
				return "", fmt.Errorf("filter chain %q transport_socket: %w", fc.GetName(), err)
			}
			if !d.GetRequireClientCertificate().GetValue() {
				return "", fmt.Errorf("filter chain %q: DownstreamTlsContext without require_client_certificate: the agent only serves mutual TLS", fc.GetName())
			}
			tlsChain = true
			continue
		}
		plain = true
	}
	mode := ""
	switch {
	case tlsChain && plain:
		mode = wire.MTLSPermissive
	case tlsChain:
		mode = wire.MTLSStrict
	}
	if md := governanceString(l.GetMetadata(), wire.MTLSModeMetadataKey); md != "" && md != mode {
		return "", fmt.Errorf("metadata %s.%s is %q but the filter chains say %q", wire.GovernanceNamespace, wire.MTLSModeMetadataKey, md, mode)
	}
	return mode, nil
}

func governanceString(md *corev3.Metadata, key string) string {
	return md.GetFilterMetadata()[wire.GovernanceNamespace].GetFields()[key].GetStringValue()
}
