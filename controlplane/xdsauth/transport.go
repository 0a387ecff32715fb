package xdsauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc/credentials"

	"github.com/meshvm/mesh/controlplane/ca"
	"github.com/meshvm/mesh/identity"
)

// ServerCert keeps the control plane's xDS server certificate: a key
// generated in memory (it is never written anywhere), signed by the CA
// for the control plane's SPIFFE ID and the configured SANs, renewed at
// half-life and whenever the CA material changes on disk.
type ServerCert struct {
	CA   *ca.CA
	DNS  []string
	IPs  []net.IP
	Log  zerolog.Logger
	Poll time.Duration // how often the CA files are checked (default 2s)
	// OnCAChange, if set, is called after the CA's bundle or signing CA
	// changed on disk (the new bundle must reach the agents).
	OnCAChange func()

	cur atomic.Pointer[tls.Certificate]
	// renewAt is half of the current certificate's life from when it was
	// issued (its NotBefore is backdated for clock skew).
	renewAt atomic.Int64
}

// Issue gets a new certificate now.
func (s *ServerCert) Issue() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("xds server key: %w", err)
	}
	iss, err := s.CA.IssueServer(&key.PublicKey, s.DNS, s.IPs)
	if err != nil {
		return err
	}
	pair, err := tls.X509KeyPair(iss.ChainPEM, mustKeyPEM(key))
	if err != nil {
		return fmt.Errorf("xds server certificate: %w", err)
	}
	pair.Leaf = iss.Cert
	now := time.Now()
	s.renewAt.Store(now.Add(iss.Expires.Sub(now) / 2).UnixNano())
	s.cur.Store(&pair)
	return nil
}

func mustKeyPEM(key *ecdsa.PrivateKey) []byte {
	b, err := identity.EncodeKey(key)
	if err != nil {
		panic(err) // a P-256 key always encodes
	}
	return b
}

// Leaf is the current server certificate (nil before Issue).
func (s *ServerCert) Leaf() *x509.Certificate {
	if c := s.cur.Load(); c != nil {
		return c.Leaf
	}
	return nil
}

// Run renews the certificate and watches the CA files until ctx is done.
func (s *ServerCert) Run(ctx context.Context) {
	poll := s.Poll
	if poll <= 0 {
		poll = 2 * time.Second
	}
	// Checked at least every poll, and often enough for short lifetimes.
	if l := s.Leaf(); l != nil {
		if life := time.Until(l.NotAfter) / 4; life > 0 && life < poll {
			poll = life
		}
	}
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		changed, err := s.CA.Reload()
		if err != nil {
			s.Log.Warn().Err(err).Msg("ca files changed but could not be loaded; the CA in force stays")
		}
		if changed {
			s.Log.Info().Int("roots", len(s.CA.Roots())).Msg("ca changed on disk: new trust bundle or signing CA")
			// The bundle goes out before the server certificate from a new
			// root, so agents trust it by the time they meet it.
			if s.OnCAChange != nil {
				s.OnCAChange()
			}
		}
		leaf := s.Leaf()
		if changed || leaf == nil || time.Now().UnixNano() >= s.renewAt.Load() {
			if err := s.Issue(); err != nil {
				s.Log.Error().Err(err).Msg("xds server certificate renewal failed; retrying")
				continue
			}
			s.Log.Info().Time("expires", s.Leaf().NotAfter).Msg("xds server certificate issued")
		}
	}
}

// TLSConfig is the xDS port's TLS: the server certificate and a client
// certificate requested but optional (a join token may stand in for it).
// A presented certificate is verified per RPC by the Authenticator, not
// in the handshake: a workload whose certificate is no longer trusted
// (its root retired) can still present its join token, and a refusal is
// a gRPC status naming the reason rather than a TLS alert.
func (s *ServerCert) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ClientAuth: tls.RequestClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			if c := s.cur.Load(); c != nil {
				return c, nil
			}
			return nil, errors.New("xds server certificate not issued yet")
		},
	}
}

// Transport serves TLS and plaintext on one port: a connection opening
// with a TLS handshake record is served with tlsCreds, any other as
// plaintext (whose RPCs the Authenticator then judges: anonymous, refused
// under required). One port keeps every existing plaintext client working
// while they move to TLS.
func Transport(tlsConfig *tls.Config) credentials.TransportCredentials {
	return &sniffing{tls: credentials.NewTLS(tlsConfig)}
}

type sniffing struct {
	tls credentials.TransportCredentials
}

type plainInfo struct{ credentials.CommonAuthInfo }

func (plainInfo) AuthType() string { return "insecure" }

func (s *sniffing) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	_ = raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b [1]byte
	if _, err := io.ReadFull(raw, b[:]); err != nil {
		return nil, nil, fmt.Errorf("xds: read the first byte: %w", err)
	}
	_ = raw.SetReadDeadline(time.Time{})
	c := &prefixConn{Conn: raw, prefix: b[:]}
	if b[0] == 0x16 { // TLS handshake record
		return s.tls.ServerHandshake(c)
	}
	return c, plainInfo{credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}, nil
}

func (s *sniffing) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("xdsauth: server-side credentials only")
}

func (s *sniffing) Info() credentials.ProtocolInfo { return s.tls.Info() }

func (s *sniffing) Clone() credentials.TransportCredentials {
	return &sniffing{tls: s.tls.Clone()}
}

func (s *sniffing) OverrideServerName(string) error { return nil } //nolint:staticcheck // interface

// prefixConn replays the bytes read to sniff the protocol.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}
