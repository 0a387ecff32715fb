package certstore

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
)

// ACME configures automatic certificates (RFC 8555) for some hosts, with
// golang.org/x/crypto/acme/autocert: TLS-ALPN-01 on the HTTPS listener,
// and HTTP-01 on the HTTP listener when it serves HTTPHandler; issued
// certificates and the account key are cached in CacheDir and renewed
// before they expire.
type ACME struct {
	// Directory is the ACME directory URL (e.g. Let's Encrypt's).
	Directory string
	Email     string
	Hosts     []string
	CacheDir  string
	// RenewBefore renews this long before expiry (default 30 days, or a
	// third of the lifetime of short-lived certificates).
	RenewBefore time.Duration
	// HTTPClient talks to the ACME server (nil: the default; tests pass
	// one that trusts their ACME server's CA).
	HTTPClient *http.Client
}

// EnableACME makes the store get certificates for cfg.Hosts from an ACME
// server. Call it before serving.
func (s *Store) EnableACME(cfg ACME) error {
	switch {
	case cfg.Directory == "":
		return errors.New("certstore: acme.directory is required")
	case len(cfg.Hosts) == 0:
		return errors.New("certstore: acme.hosts is empty")
	case cfg.CacheDir == "":
		return errors.New("certstore: acme needs a cache directory")
	}
	hosts := make([]string, len(cfg.Hosts))
	for i, h := range cfg.Hosts {
		if strings.Contains(h, "*") {
			return fmt.Errorf("certstore: acme host %q: wildcard certificates need DNS-01, which is not supported; use certificate files", h)
		}
		hosts[i] = strings.ToLower(h)
	}
	s.acmeHosts = hosts
	s.acme = &autocert.Manager{
		Prompt:      autocert.AcceptTOS,
		Cache:       autocert.DirCache(cfg.CacheDir),
		HostPolicy:  autocert.HostWhitelist(hosts...),
		RenewBefore: cfg.RenewBefore,
		Email:       cfg.Email,
		Client:      &acme.Client{DirectoryURL: cfg.Directory, HTTPClient: cfg.HTTPClient},
	}
	return nil
}

// HTTPHandler answers ACME HTTP-01 challenges and passes everything else
// to fallback (nil: a redirect to HTTPS). Without ACME it is fallback.
func (s *Store) HTTPHandler(fallback http.Handler) http.Handler {
	if fallback == nil {
		fallback = http.HandlerFunc(redirectHTTPS)
	}
	if s.acme == nil {
		return fallback
	}
	h := s.acme.HTTPHandler(fallback)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// autocert checks the Host against the host policy as it is; an
		// HTTP-01 validation reaching a port other than 80 (a port
		// mapping, a test) carries it with the port.
		if strings.HasPrefix(r.URL.Path, "/.well-known/acme-challenge/") {
			if host, _, err := net.SplitHostPort(r.Host); err == nil {
				r.Host = host
			}
		}
		h.ServeHTTP(w, r)
	})
}

func redirectHTTPS(w http.ResponseWriter, r *http.Request) {
	host := r.Host
	if i := strings.LastIndexByte(host, ':'); i > 0 && !strings.Contains(host[i:], "]") {
		host = host[:i]
	}
	http.Redirect(w, r, "https://"+host+r.URL.RequestURI(), http.StatusPermanentRedirect)
}

// acmeCertificate serves an ACME host's certificate (and TLS-ALPN-01
// challenges); ok is false when hello is not for an ACME host.
func (s *Store) acmeCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, bool, error) {
	if s.acme == nil {
		return nil, false, nil
	}
	name := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	if !slices.Contains(s.acmeHosts, name) {
		return nil, false, nil
	}
	c, err := s.acme.GetCertificate(hello)
	return c, true, err
}
