package gateway

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/meshvm/mesh/certstore"
	"github.com/meshvm/mesh/config"
)

// newCertStore builds the edge's certificate store: the certificate
// files, and ACME for its hosts (TLS-ALPN-01 on the HTTPS listener,
// HTTP-01 on the HTTP one), its state under cacheDir/acme.
func (g *Gateway) newCertStore(c config.GatewayTLS, cacheDir string) (*certstore.Store, error) {
	pairs := make([]certstore.Pair, len(c.Certificates))
	for i, p := range c.Certificates {
		pairs[i] = certstore.Pair{CertFile: p.CertFile, KeyFile: p.KeyFile}
	}
	s := certstore.New(pairs, g.base)
	if len(pairs) > 0 {
		if err := s.Load(); err != nil {
			return nil, fmt.Errorf("gateway.tls.certificates: %w", err)
		}
	}
	if c.ACME.Enabled {
		client := http.DefaultClient
		if c.ACME.CAFile != "" {
			pool, err := loadPool(c.ACME.CAFile)
			if err != nil {
				return nil, fmt.Errorf("gateway.tls.acme.ca_file: %w", err)
			}
			client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		}
		err := s.EnableACME(certstore.ACME{Directory: c.ACME.Directory, Email: c.ACME.Email, Hosts: c.ACME.Hosts,
			CacheDir: cacheDir + "/acme", HTTPClient: client})
		if err != nil {
			return nil, fmt.Errorf("gateway.tls.acme: %w", err)
		}
	}
	return s, nil
}

func loadPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate in it", file)
	}
	return pool, nil
}

// clientCA is one host's client-certificate requirement.
type clientCA struct {
	host     string // exact, or "*.parent"
	pool     *x509.CertPool
	optional bool
}

// tlsConfig is the HTTPS listener's config: the store's modern defaults
// and SNI choice, and client-certificate verification for the hosts that
// ask for it.
func tlsConfig(store *certstore.Store, cas []config.ClientCA) (*tls.Config, error) {
	base := store.ServerConfig()
	if len(cas) == 0 {
		return base, nil
	}
	var hosts []clientCA
	for i, c := range cas {
		pool, err := loadPool(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("gateway.tls.client_ca[%d].ca_file: %w", i, err)
		}
		hosts = append(hosts, clientCA{host: strings.ToLower(c.Host), pool: pool, optional: c.Optional})
	}
	perHost := make(map[string]*tls.Config, len(hosts))
	for _, h := range hosts {
		cfg := base.Clone()
		cfg.ClientCAs = h.pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
		if h.optional {
			cfg.ClientAuth = tls.VerifyClientCertIfGiven
		}
		perHost[h.host] = cfg
	}
	base.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		name := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
		if c := perHost[name]; c != nil {
			return c, nil
		}
		if i := strings.IndexByte(name, '.'); i > 0 {
			if c := perHost["*"+name[i:]]; c != nil {
				return c, nil
			}
		}
		return nil, nil
	}
	return base, nil
}

// edgeTLS is the HTTPS listener's TLS config and the hosts that require
// client certificates (a request for one of them must have come in on a
// handshake for it: SNI cannot be used to skip the check).
type edgeTLS struct {
	cfg           *tls.Config
	clientCAHosts []string
}

func clientCAHosts(cas []config.ClientCA) []string {
	out := make([]string, len(cas))
	for i, c := range cas {
		out[i] = strings.ToLower(c.Host)
	}
	return out
}

// needsClientCert says whether host (no port) is one that asks for a
// client certificate.
func (e *edgeTLS) needsClientCert(host string) bool {
	for _, h := range e.clientCAHosts {
		if h == host || (strings.HasPrefix(h, "*.") && strings.HasSuffix(host, h[1:]) && !strings.Contains(host[:len(host)-len(h)+1], ".")) {
			return true
		}
	}
	return false
}
