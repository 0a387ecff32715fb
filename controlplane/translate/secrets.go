package translate

import (
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/meshvm/mesh/wire"
)

// Secrets are a node's SDS resources, standard Envoy Secrets an Envoy can
// use as they are: wire.SecretTrustBundle (a validation context holding
// every root of the trust bundle, old and new during a root rotation) for
// every node, and, for a node that was issued a certificate,
// wire.SecretWorkloadCert (a tls_certificate holding the chain only: the
// private key never leaves the node, which pairs the chain with the key it
// generated). chainPEM may be nil.
func Secrets(bundlePEM, chainPEM []byte) (Set, error) {
	if len(bundlePEM) == 0 {
		return nil, fmt.Errorf("secret %s: empty trust bundle", wire.SecretTrustBundle)
	}
	out := Set{
		wire.SecretTrustBundle: &tlsv3.Secret{
			Name: wire.SecretTrustBundle,
			Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				TrustedCa: inline(bundlePEM),
			}},
		},
	}
	if len(chainPEM) > 0 {
		out[wire.SecretWorkloadCert] = &tlsv3.Secret{
			Name: wire.SecretWorkloadCert,
			Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
				CertificateChain: inline(chainPEM),
			}},
		}
	}
	for name, m := range out {
		if err := m.(*tlsv3.Secret).ValidateAll(); err != nil {
			return nil, fmt.Errorf("secret %s: %w", name, err)
		}
	}
	return out, nil
}

func inline(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}
