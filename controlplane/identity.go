package controlplane

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/ca"
	"github.com/meshvm/mesh/controlplane/consulacl"
	"github.com/meshvm/mesh/controlplane/xdsauth"
	"github.com/meshvm/mesh/identity"
	"github.com/meshvm/mesh/wire"
)

// protection is what secures the xDS port: the CA (nil when it could not
// be opened with control.xds.auth off), the server certificate, the
// authentication and the signing RPC.
type protection struct {
	mode   string
	ca     *ca.CA
	cert   *xdsauth.ServerCert
	auth   *xdsauth.Authenticator
	signer *xdsauth.Signer
}

// openProtection opens control.ca and prepares the xDS port's TLS and
// authentication. A CA that cannot be opened fails the start, except with
// control.xds.auth off, where xDS is then served in plaintext only.
func (c *Control) openProtection(cfg config.Config) error {
	x := cfg.Control.XDS
	p := &protection{mode: x.Auth}
	if p.mode == "" {
		p.mode = wire.XDSAuthOptional
	}
	cc := cfg.Control.CA
	authority, err := ca.Open(ca.Config{Dir: cc.Dir, TrustDomain: cc.TrustDomain, Namespace: cc.Namespace, CertTTL: cc.CertTTL,
		CertFile: cc.CertFile, KeyFile: cc.KeyFile}, nil)
	if err != nil {
		if p.mode != wire.XDSAuthOff {
			return fmt.Errorf("open the CA (control.ca.dir %s) for control.xds.auth %s: %w", cc.Dir, p.mode, err)
		}
		c.log.Warn().Err(err).Msg("no CA: xDS is served in plaintext only, without certificates or SDS (control.xds.auth off)")
		c.prot = p
		return nil
	}
	p.ca = authority
	dns, ips := serverSANs(cfg.Control.XDSAddr, x.TLSSANs)
	p.cert = &xdsauth.ServerCert{CA: authority, DNS: dns, IPs: ips, Log: c.log.With().Str("component", "ca").Logger(), Poll: c.opts.CAPoll}
	verifier, err := consulacl.New(consulacl.Config{Addr: cfg.Consul.Addr, Datacenter: cfg.Consul.Datacenter})
	if err != nil {
		return fmt.Errorf("verify Consul ACL tokens: %w", err)
	}
	p.auth = &xdsauth.Authenticator{Mode: p.mode, CA: authority, Consul: verifier}
	p.signer = xdsauth.NewSigner(p.auth, c.log.With().Str("component", "ca").Logger(), c.reg)
	p.signer.OnIssued = func(nodeID string, iss *ca.Issued) { c.xds.SetNodeCertificate(nodeID, iss.ChainPEM) }
	p.cert.OnCAChange = func() { c.xds.SetTrustBundle(authority.BundlePEM()) }
	if p.mode != wire.XDSAuthOff {
		c.xds.SetAdmission(xdsauth.Admit)
	}
	c.xds.SetTrustBundle(authority.BundlePEM())
	c.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "mesh", Name: "cert_expiry_seconds", ConstLabels: prometheus.Labels{"cert": "ca_root"},
		Help: "Seconds until a certificate expires: the agent's workload certificate (cert=workload); on mesh control the earliest root of the trust bundle (cert=ca_root) and the xDS server certificate (cert=xds_server).",
	}, func() float64 {
		var first time.Time
		for _, r := range authority.Roots() {
			if first.IsZero() || r.NotAfter.Before(first) {
				first = r.NotAfter
			}
		}
		return time.Until(first).Seconds()
	}))
	c.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "mesh", Name: "cert_expiry_seconds", ConstLabels: prometheus.Labels{"cert": "xds_server"},
		Help: "Seconds until a certificate expires: the agent's workload certificate (cert=workload); on mesh control the earliest root of the trust bundle (cert=ca_root) and the xDS server certificate (cert=xds_server).",
	}, func() float64 {
		if l := p.cert.Leaf(); l != nil {
			return time.Until(l.NotAfter).Seconds()
		}
		return 0
	}))
	c.prot = p
	return nil
}

// serverSANs are the server certificate's DNS and IP SANs: the configured
// ones, else localhost, the loopback addresses, the host name and the
// host of xds_addr when it is not a wildcard.
func serverSANs(xdsAddr string, sans []string) ([]string, []net.IP) {
	if len(sans) == 0 {
		sans = []string{"localhost", "127.0.0.1", "::1"}
		if h, err := os.Hostname(); err == nil && h != "" {
			sans = append(sans, h)
		}
		if host, _, err := net.SplitHostPort(xdsAddr); err == nil && host != "" {
			if ip := net.ParseIP(host); ip == nil || !ip.IsUnspecified() {
				sans = append(sans, host)
			}
		}
	}
	var dns []string
	var ips []net.IP
	seen := map[string]bool{}
	for _, s := range sans {
		if seen[s] {
			continue
		}
		seen[s] = true
		if ip := net.ParseIP(s); ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, s)
		}
	}
	return dns, ips
}

// grpcOptions are the xDS server's transport and interceptors.
func (p *protection) grpcOptions() []grpc.ServerOption {
	if p.ca == nil {
		return nil
	}
	opts := []grpc.ServerOption{grpc.Creds(xdsauth.Transport(p.cert.TLSConfig()))}
	if p.mode != wire.XDSAuthOff {
		opts = append(opts, grpc.ChainUnaryInterceptor(p.auth.UnaryInterceptor), grpc.ChainStreamInterceptor(p.auth.StreamInterceptor))
	}
	return opts
}

// start issues the server certificate and registers the signing RPC.
func (p *protection) start(g *grpc.Server) error {
	if p.ca == nil {
		return nil
	}
	if err := p.cert.Issue(); err != nil {
		return fmt.Errorf("issue the xds server certificate: %w", err)
	}
	p.signer.Register(g)
	return nil
}

// run renews the server certificate and follows the CA files.
func (p *protection) run(ctx context.Context) {
	if p.ca != nil {
		p.cert.Run(ctx)
	}
}

// caDump is the CA's part of the control plane's /config_dump: never a
// private key.
type caDump struct {
	TrustDomain string     `json:"trust_domain"`
	Auth        string     `json:"xds_auth"`
	Roots       []certInfo `json:"roots"`
	Server      *certInfo  `json:"xds_server_certificate,omitempty"`
	Issued      uint64     `json:"issued"`
}

type certInfo struct {
	Subject     string    `json:"subject"`
	SPIFFEID    string    `json:"spiffe_id,omitempty"`
	Serial      string    `json:"serial"`
	NotAfter    time.Time `json:"not_after"`
	Fingerprint string    `json:"fingerprint,omitempty"`
	DNS         []string  `json:"dns_sans,omitempty"`
	IPs         []string  `json:"ip_sans,omitempty"`
}

func (p *protection) dump() *caDump {
	if p == nil || p.ca == nil {
		return nil
	}
	d := &caDump{TrustDomain: p.ca.TrustDomain(), Auth: p.mode, Issued: p.signer.Issued()}
	for _, r := range p.ca.Roots() {
		d.Roots = append(d.Roots, certInfo{Subject: r.Subject.String(), Serial: r.SerialNumber.Text(16), NotAfter: r.NotAfter,
			Fingerprint: identity.CAFingerprint(r)})
	}
	if l := p.cert.Leaf(); l != nil {
		ci := certInfo{Subject: l.Subject.String(), Serial: l.SerialNumber.Text(16), NotAfter: l.NotAfter, DNS: l.DNSNames}
		if id, err := identity.FromCertificate(l); err == nil {
			ci.SPIFFEID = id.String()
		}
		for _, ip := range l.IPAddresses {
			ci.IPs = append(ci.IPs, ip.String())
		}
		d.Server = &ci
	}
	return d
}
