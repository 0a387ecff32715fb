package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strings"

	"github.com/meshvm/mesh/identity"
)

// Handshake error reasons (the reason label of
// mesh_tls_handshake_errors_total).
const (
	ReasonPlaintext      = "plaintext"           // strict: a client that did not start TLS
	ReasonNoCertificate  = "no-client-cert"      // strict: a TLS client without a certificate
	ReasonUnknownCA      = "unknown-authority"   // the peer's chain does not reach the bundle
	ReasonExpired        = "expired"             // the peer's certificate is not valid now
	ReasonWrongIdentity  = "wrong-identity"      // the peer is not the expected service or trust domain
	ReasonBadCertificate = "bad-certificate"     // no or a malformed SPIFFE ID, wrong key usage
	ReasonNoIdentity     = "no-local-identity"   // this agent holds no certificate yet
	ReasonNotTLS         = "not-tls"             // the peer answered with something else than TLS
	ReasonTimeout        = "timeout"             // no handshake within the bound
	ReasonClosed         = "closed"              // the peer hung up during the handshake
	ReasonAlert          = "peer-alert"          // the peer refused us (its reason is in its own metrics)
	ReasonVersion        = "unsupported-version" // the peer offered no TLS 1.3
	ReasonOther          = "other"
)

// Reason classifies a handshake error.
func Reason(err error) string {
	var (
		ua x509.UnknownAuthorityError
		ci x509.CertificateInvalidError
		rh tls.RecordHeaderError
		ae tls.AlertError
		ne net.Error
	)
	msg := err.Error()
	switch {
	case errors.Is(err, identity.ErrNoIdentity):
		return ReasonNoIdentity
	case errors.As(err, &ua):
		return ReasonUnknownCA
	case errors.As(err, &ci):
		if ci.Reason == x509.Expired {
			return ReasonExpired
		}
		return ReasonBadCertificate
	case strings.Contains(msg, "presented no certificate"), strings.Contains(msg, "didn't provide a certificate"):
		return ReasonNoCertificate
	case strings.Contains(msg, "want spiffe://"), strings.Contains(msg, "is not in trust domain"):
		return ReasonWrongIdentity
	case strings.Contains(msg, "peer certificate"):
		return ReasonBadCertificate
	case strings.Contains(msg, "unsupported versions"), strings.Contains(msg, "protocol version not supported"):
		return ReasonVersion
	case errors.As(err, &rh):
		return ReasonNotTLS
	case errors.As(err, &ae):
		return ReasonAlert
	case strings.Contains(msg, "remote error"):
		return ReasonAlert
	case errors.As(err, &ne) && ne.Timeout():
		return ReasonTimeout
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed),
		strings.Contains(msg, "connection reset"), strings.Contains(msg, "broken pipe"):
		return ReasonClosed
	}
	return ReasonOther
}
