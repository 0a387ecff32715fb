// Package certstore holds the edge's TLS certificates: several pairs of
// certificate and key files, chosen per handshake by SNI (an exact name,
// then a one-label wildcard, then the first pair), and reloaded when the
// files change without dropping a connection: new handshakes get the new
// certificate, connections already up keep theirs. A pair that fails to
// load is reported and the certificates already loaded stay in use.
package certstore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
)

// Pair is one certificate (PEM chain, leaf first) and its key.
type Pair struct {
	CertFile string
	KeyFile  string
}

// Store serves certificates to TLS handshakes.
type Store struct {
	pairs []Pair
	log   zerolog.Logger
	cur   atomic.Pointer[index]

	acme      *autocert.Manager // nil: no ACME
	acmeHosts []string

	// OCSP staples (ocsp.go), used by Run only.
	ocspClient *http.Client
	staples    map[[32]byte]*staple
}

type index struct {
	exact    map[string]*tls.Certificate
	wildcard map[string]*tls.Certificate // by the parent domain of *.parent
	def      *tls.Certificate
	stamps   []stamp // of the files it was built from
}

type stamp struct {
	size int64
	mod  time.Time
}

// New returns a store for pairs; it reads nothing until Load.
func New(pairs []Pair, log zerolog.Logger) *Store {
	return &Store{pairs: pairs, log: log.With().Str("component", "certstore").Logger(),
		ocspClient: &http.Client{Timeout: 10 * time.Second}}
}

// Load reads every pair. On any error nothing changes and the error names
// the file; the certificates in use (if any) stay.
func (s *Store) Load() error {
	if len(s.pairs) == 0 {
		if s.acme != nil {
			s.cur.Store(&index{exact: map[string]*tls.Certificate{}, wildcard: map[string]*tls.Certificate{}})
			return nil
		}
		return errors.New("certstore: no certificates configured")
	}
	idx := &index{exact: map[string]*tls.Certificate{}, wildcard: map[string]*tls.Certificate{}}
	for _, p := range s.pairs {
		st, err := stamps(p)
		if err != nil {
			return err
		}
		idx.stamps = append(idx.stamps, st...)
		cert, err := tls.LoadX509KeyPair(p.CertFile, p.KeyFile)
		if err != nil {
			return fmt.Errorf("certstore: %s / %s: %w", p.CertFile, p.KeyFile, err)
		}
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			return fmt.Errorf("certstore: %s: %w", p.CertFile, err)
		}
		cert.Leaf = leaf
		if time.Now().After(leaf.NotAfter) {
			return fmt.Errorf("certstore: %s expired at %s", p.CertFile, leaf.NotAfter.UTC().Format(time.RFC3339))
		}
		names := leaf.DNSNames
		if len(names) == 0 && leaf.Subject.CommonName != "" {
			names = []string{leaf.Subject.CommonName}
		}
		c := &cert
		for _, n := range names {
			n = strings.ToLower(strings.TrimSuffix(n, "."))
			if parent, ok := strings.CutPrefix(n, "*."); ok {
				if _, dup := idx.wildcard[parent]; !dup {
					idx.wildcard[parent] = c
				}
				continue
			}
			if _, dup := idx.exact[n]; !dup {
				idx.exact[n] = c
			}
		}
		if idx.def == nil {
			idx.def = c
		}
	}
	s.cur.Store(idx)
	return nil
}

func stamps(p Pair) ([]stamp, error) {
	var out []stamp
	for _, f := range []string{p.CertFile, p.KeyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			return nil, fmt.Errorf("certstore: %w", err)
		}
		out = append(out, stamp{size: fi.Size(), mod: fi.ModTime()})
	}
	return out, nil
}

// changed says whether any file differs from what the index was built
// from.
func (s *Store) changed() bool {
	idx := s.cur.Load()
	if idx == nil {
		return true
	}
	var now []stamp
	for _, p := range s.pairs {
		st, err := stamps(p)
		if err != nil {
			return true
		}
		now = append(now, st...)
	}
	if len(now) != len(idx.stamps) {
		return true
	}
	for i := range now {
		if now[i] != idx.stamps[i] {
			return true
		}
	}
	return false
}

// Run checks the files every interval (default 5s) and reloads them when
// one changed, until ctx is done. A reload that fails is logged once per
// change and retried at the next check; the loaded certificates stay.
// It also keeps the certificates' OCSP staples fresh (ocsp.go).
func (s *Store) Run(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		interval = 5 * time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	var lastErr string
	s.refreshStaples(ctx, time.Now())
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		s.refreshStaples(ctx, time.Now())
		if !s.changed() {
			continue
		}
		if err := s.Load(); err != nil {
			if err.Error() != lastErr {
				s.log.Error().Err(err).Msg("certificate reload failed; the loaded certificates stay in use")
				lastErr = err.Error()
			}
			continue
		}
		lastErr = ""
		s.log.Info().Msg("certificates reloaded")
		s.refreshStaples(ctx, time.Now())
	}
}

// GetCertificate picks the certificate for a handshake's SNI: an exact
// name, then a wildcard for its parent domain, then the first pair.
func (s *Store) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c, ok, err := s.acmeCertificate(hello); ok {
		return c, err
	}
	idx := s.cur.Load()
	if idx == nil {
		return nil, errors.New("certstore: no certificates loaded")
	}
	name := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	if c := idx.exact[name]; c != nil {
		return c, nil
	}
	if i := strings.IndexByte(name, '.'); i > 0 {
		if c := idx.wildcard[name[i+1:]]; c != nil {
			return c, nil
		}
	}
	if idx.def == nil {
		return nil, fmt.Errorf("certstore: no certificate for %q", hello.ServerName)
	}
	return idx.def, nil
}

// Expiries lists each loaded certificate's first name and NotAfter, for
// metrics and /ready.
func (s *Store) Expiries() map[string]time.Time {
	out := map[string]time.Time{}
	idx := s.cur.Load()
	if idx == nil {
		return out
	}
	for _, c := range append(mapValues(idx.exact), mapValues(idx.wildcard)...) {
		name := c.Leaf.Subject.CommonName
		if len(c.Leaf.DNSNames) > 0 {
			name = c.Leaf.DNSNames[0]
		}
		out[name] = c.Leaf.NotAfter
	}
	return out
}

func mapValues(m map[string]*tls.Certificate) []*tls.Certificate {
	out := make([]*tls.Certificate, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// ServerConfig is a TLS 1.2+ server config with modern defaults (AEAD
// cipher suites only for TLS 1.2, X25519 and P-256), ALPN h2 and
// http/1.1 (and acme-tls/1 for TLS-ALPN-01), and certificates from the
// store.
func (s *Store) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		},
		CurvePreferences: []tls.CurveID{tls.X25519MLKEM768, tls.X25519, tls.CurveP256},
		NextProtos:       []string{"h2", "http/1.1", acme.ALPNProto},
		GetCertificate:   s.GetCertificate,
	}
}
