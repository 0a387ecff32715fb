// Package enroll gives a workload (an agent's service, a gateway) its
// mesh identity from a join token: the key it generates, the certificate
// mesh control signs over the signing RPC (wire.CertificateSignMethod,
// against the token first, then the current certificate), the trust
// bundle (SDS updates on the ADS stream), their cache on disk, and the
// TLS and per-RPC credentials the workload dials mesh control with.
package enroll

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshvm/mesh/identity"
	"github.com/meshvm/mesh/observability"
	"github.com/meshvm/mesh/wire"
	"github.com/meshvm/mesh/xdsclient"
)

// Options configure an Enrollment. Field is the config key the token
// file came from (agent.join_token_file, gateway.join_token_file), to
// name it in errors.
type Options struct {
	TokenFile string
	Field     string
	// ConsulToken, when TokenFile is empty, is the credential instead: a
	// Consul ACL token mesh control asks Consul about (service:write on
	// Service). It carries no CA hashes, so CAFile must pin mesh control,
	// and the trust domain is read from CAFile's root (its spiffe:// URI).
	ConsulToken string
	// CAFile pins mesh control's roots before a bundle is held
	// (agent.control_plane_ca_file, named by CAField); optional.
	CAFile   string
	CAField  string
	Servers  []string
	Service  string
	NodeName string
	NodeID   string
	// Dir caches the certificate, key and bundle.
	Dir string
	Log zerolog.Logger
}

// Enrollment is a workload's identity: the key it generates, the
// certificate mesh control signs, the trust bundle, their cache on disk,
// and the TLS the workload dials mesh control with.
type Enrollment struct {
	log         zerolog.Logger
	tokenFile   string
	consulToken string
	servers     []string
	nodeName    string
	nodeID      string
	id          identity.ID
	// pinned are the roots the control plane is trusted by before the
	// workload holds a bundle: the CA file's, and caHashes, the join
	// token's CA fingerprints.
	pinned   []*x509.Certificate
	caHashes []string

	creds *identity.Credentials
	rot   *identity.Rotator
	// next is the control plane tried first (the last that answered).
	next atomic.Int64
}

// New prepares the identity. The SPIFFE ID comes from the token's claims
// (trust domain, namespace) and o.Service; without a readable token, from
// the cached certificate, so a workload whose token was removed after it
// joined still starts. It reads files and starts nothing.
func New(o Options) (*Enrollment, error) {
	field := o.Field
	if field == "" {
		field = "join_token_file"
	}
	ai := &Enrollment{log: o.Log, tokenFile: o.TokenFile, consulToken: o.ConsulToken, servers: o.Servers, nodeName: o.NodeName, nodeID: o.NodeID,
		creds: &identity.Credentials{}}
	dir := o.Dir
	if o.CAFile != "" {
		data, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", o.CAField, err)
		}
		roots, err := identity.ParseCertificates(data)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", o.CAField, o.CAFile, err)
		}
		ai.pinned = roots
	}
	if o.TokenFile == "" && o.ConsulToken != "" {
		id, err := consulTokenID(ai.pinned, dir, o)
		if err != nil {
			return nil, err
		}
		ai.id = id
		ai.rot = &identity.Rotator{ID: ai.id, Dir: dir, Issuer: ai, Creds: ai.creds, Log: o.Log}
		return ai, nil
	}
	tok, terr := ai.token()
	if terr == nil {
		claims, err := identity.ReadTokenClaims(tok)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", field, o.TokenFile, err)
		}
		ns := claims.Namespace
		if ns == "" {
			ns = identity.DefaultNamespace
		}
		if ai.id, err = identity.NewID(claims.TrustDomain, ns, o.Service); err != nil {
			return nil, fmt.Errorf("identity: %w", err)
		}
		ai.caHashes = claims.CAHashes
	} else {
		cached, err := cachedID(dir)
		if err != nil {
			return nil, fmt.Errorf("%s: %w, and no usable cached certificate in %s (%v)", field, terr, dir, err)
		}
		if cached.Service != o.Service {
			return nil, fmt.Errorf("%s: %w, and the cached certificate in %s is for %s, not service %s", field, terr, dir, cached, o.Service)
		}
		ai.id = cached
	}
	ai.rot = &identity.Rotator{ID: ai.id, Dir: dir, Issuer: ai, Creds: ai.creds, Log: o.Log}
	return ai, nil
}

// ID is the workload's SPIFFE ID.
func (ai *Enrollment) ID() identity.ID { return ai.id }

// Credentials are the current certificate and bundle, updated in place
// as they rotate.
func (ai *Enrollment) Credentials() *identity.Credentials { return ai.creds }

// Run renews the certificate until ctx is done.
func (ai *Enrollment) Run(ctx context.Context) error { return ai.rot.Run(ctx) }

// token reads the join token file (again at each use: an operator may
// replace it).
func (ai *Enrollment) token() (string, error) {
	b, err := os.ReadFile(ai.tokenFile)
	if err != nil {
		return "", err
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("%s is empty", ai.tokenFile)
	}
	return t, nil
}

// consulTokenID is the SPIFFE ID of a workload whose credential is a
// Consul ACL token: the trust domain of the pinned roots (a mesh root
// carries spiffe://<trust domain> as its URI), the default namespace, or
// the cached certificate's when it is for the same service.
func consulTokenID(pinned []*x509.Certificate, dir string, o Options) (identity.ID, error) {
	if cached, err := cachedID(dir); err == nil && cached.Service == o.Service {
		return cached, nil
	}
	if len(pinned) == 0 {
		return identity.ID{}, fmt.Errorf("%s is required with a Consul ACL token as the credential: the token pins no CA to verify mesh control with", o.CAField)
	}
	for _, r := range pinned {
		for _, u := range r.URIs {
			if u.Scheme == "spiffe" && u.Host != "" && (u.Path == "" || u.Path == "/") {
				id, err := identity.NewID(u.Host, identity.DefaultNamespace, o.Service)
				if err != nil {
					return identity.ID{}, fmt.Errorf("identity: %w", err)
				}
				return id, nil
			}
		}
	}
	return identity.ID{}, fmt.Errorf("%s %s: no root names its trust domain (a spiffe://<trust domain> URI SAN), which a Consul ACL token credential needs", o.CAField, o.CAFile)
}

func cachedID(dir string) (identity.ID, error) {
	data, err := os.ReadFile(filepath.Join(dir, "cert.pem"))
	if err != nil {
		return identity.ID{}, err
	}
	certs, err := identity.ParseCertificates(data)
	if err != nil {
		return identity.ID{}, err
	}
	return identity.FromCertificate(certs[0])
}

// validCert is the current certificate when it is still valid.
func (ai *Enrollment) validCert() *tls.Certificate {
	c := ai.creds.TLSCertificate()
	if c == nil || c.Leaf == nil || time.Now().After(c.Leaf.NotAfter) {
		return nil
	}
	return c
}

// controlPlaneTLS is the TLS the agent dials mesh control with: it
// presents its certificate when it holds a valid one, and accepts only a
// server certificate for the control plane's SPIFFE ID that chains to the
// agent's bundle, agent.control_plane_ca_file, or, before either, a root
// the join token pins by fingerprint. Never trust on first use.
func (ai *Enrollment) controlPlaneTLS() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Verified in VerifyConnection, by SPIFFE ID and pinned roots
		// rather than host name (agents dial control planes by IP).
		InsecureSkipVerify: true, //nolint:gosec // verified below
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if c := ai.validCert(); c != nil {
				return c, nil
			}
			return &tls.Certificate{}, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error { return ai.verifyControlPlane(cs.PeerCertificates) },
	}
}

func (ai *Enrollment) verifyControlPlane(chain []*x509.Certificate) error {
	if len(chain) == 0 {
		return errors.New("mesh control presented no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	verify := func(pool *x509.CertPool) error {
		_, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		return err
	}
	pool := x509.NewCertPool()
	trusted := 0
	for _, r := range append(ai.creds.Roots(), ai.pinned...) {
		pool.AddCert(r)
		trusted++
	}
	err := errors.New("no trust bundle, agent.control_plane_ca_file or CA hash in the join token to verify mesh control with")
	if trusted > 0 {
		err = verify(pool)
	}
	if err != nil && len(ai.caHashes) > 0 {
		// Bootstrap: a root in the presented chain pinned by the token.
		for _, c := range chain[1:] {
			for _, h := range ai.caHashes {
				if identity.CAFingerprint(c) == h {
					p := x509.NewCertPool()
					p.AddCert(c)
					if verr := verify(p); verr == nil {
						err = nil
					}
				}
			}
		}
		if err != nil {
			err = fmt.Errorf("mesh control's certificate chains to no root the join token pins (%s)", strings.Join(ai.caHashes, ", "))
		}
	}
	if err != nil {
		return fmt.Errorf("mesh control's certificate: %w", err)
	}
	id, err := identity.FromCertificate(chain[0])
	if err != nil {
		return fmt.Errorf("mesh control's certificate: %w", err)
	}
	if id.Service != wire.ControlPlaneService || id.TrustDomain != ai.id.TrustDomain {
		return fmt.Errorf("mesh control's certificate is for %s, want spiffe://%s/ns/.../svc/%s", id, ai.id.TrustDomain, wire.ControlPlaneService)
	}
	return nil
}

// perRPC sends the join token (authorization: Bearer) while the agent
// holds no valid certificate; with one, the connection presents it
// instead, so a token expiring or being revoked never stops renewal.
type perRPC struct{ ai *Enrollment }

func (p perRPC) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	md := map[string]string{wire.NodeNameMetadata: p.ai.nodeName, wire.NodeIDMetadata: p.ai.nodeID}
	if p.ai.validCert() != nil {
		return md, nil
	}
	if p.ai.tokenFile == "" && p.ai.consulToken != "" {
		md[wire.ConsulTokenMetadata] = p.ai.consulToken
		return md, nil
	}
	tok, err := p.ai.token()
	if err != nil {
		return md, nil // no token: the server says what is missing
	}
	// Sent even when expired by its claims: mesh control then says so,
	// which tells the operator what to replace.
	md[wire.AuthorizationMetadata] = "Bearer " + tok
	return md, nil
}

func (perRPC) RequireTransportSecurity() bool { return true }

// DialOptions are the xDS client's (and the signing RPC's) TLS and
// per-RPC credentials.
func (ai *Enrollment) DialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(ai.controlPlaneTLS())),
		grpc.WithPerRPCCredentials(perRPC{ai}),
	}
}

// Issue implements identity.Issuer: the signing RPC on the control planes
// in turn, starting with the last that answered.
func (ai *Enrollment) Issue(ctx context.Context, csr []byte) ([]byte, []byte, error) {
	var errs []error
	start := int(ai.next.Load())
	for i := range ai.servers {
		k := (start + i) % len(ai.servers)
		server := ai.servers[k]
		chain, bundle, err := ai.issueFrom(ctx, server, csr)
		if err == nil {
			ai.next.Store(int64(k))
			return chain, bundle, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", server, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, nil, errors.Join(errs...)
}

func (ai *Enrollment) issueFrom(ctx context.Context, server string, csr []byte) ([]byte, []byte, error) {
	conn, err := grpc.NewClient(server, ai.DialOptions()...)
	if err != nil {
		return nil, nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	out := &structpb.Struct{}
	if err := conn.Invoke(metadata.NewOutgoingContext(ctx, nil), wire.CertificateSignMethod, wrapperspb.Bytes(csr), out); err != nil {
		return nil, nil, err
	}
	chain := out.GetFields()[wire.CertChainField].GetStringValue()
	bundle := out.GetFields()[wire.BundleField].GetStringValue()
	if chain == "" || bundle == "" {
		return nil, nil, errors.New("the answer lacks the certificate chain or the bundle")
	}
	return []byte(chain), []byte(bundle), nil
}

// OnSecrets takes the SDS secrets pushed on the ADS stream: a new trust
// bundle is installed live (a root rotation reaches the agent without a
// restart); the workload chain is only compared with the one held.
func (ai *Enrollment) OnSecrets(s map[string]*tlsv3.Secret) error {
	if b := s[wire.SecretTrustBundle].GetValidationContext().GetTrustedCa().GetInlineBytes(); len(b) > 0 {
		if string(b) != string(ai.creds.BundlePEM()) && ai.creds.Leaf() != nil {
			if _, err := identity.ParseCertificates(b); err != nil {
				return fmt.Errorf("secret %s: %w", wire.SecretTrustBundle, err)
			}
			if err := ai.rot.InstallBundle(b); err != nil {
				return fmt.Errorf("secret %s: %w", wire.SecretTrustBundle, err)
			}
			ai.log.Info().Int("roots", len(ai.creds.Roots())).Msg("installed a new trust bundle from mesh control")
		}
	}
	if sec := s[wire.SecretWorkloadCert]; sec != nil && sec.GetTlsCertificate().GetPrivateKey() != nil {
		return fmt.Errorf("secret %s carries a private key: refused (the key never leaves the node that made it)", wire.SecretWorkloadCert)
	}
	return nil
}

// Condition reports the certificate on /ready without making the
// agent unready: a warning once less than 10% of its life is left.
func (ai *Enrollment) Condition() observability.Condition {
	c := observability.Condition{Name: "identity"}
	leaf := ai.creds.Leaf()
	if leaf == nil {
		c.Detail = "waiting for the first certificate from mesh control"
		return c
	}
	now := time.Now()
	left := leaf.NotAfter.Sub(now)
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	switch {
	case left <= 0:
		c.Detail = fmt.Sprintf("%s: certificate expired at %s; renewal is failing", ai.id, leaf.NotAfter.UTC().Format(time.RFC3339))
	case left < life/10:
		c.Detail = fmt.Sprintf("warning: %s certificate expires in %s (under 10%% of its lifetime left); renewal is failing", ai.id, left.Round(time.Second))
	default:
		c.OK = true
		c.Detail = fmt.Sprintf("%s, certificate expires %s", ai.id, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return c
}

// Dump is the identity's part of /config_dump: never the key.
func (ai *Enrollment) Dump() map[string]any {
	d := map[string]any{"spiffe_id": ai.id.String(), "dir": ai.rot.Dir}
	if ai.tokenFile != "" {
		d["join_token_file"] = ai.tokenFile
	} else if ai.consulToken != "" {
		d["credential"] = "consul_token" // never the token
	}
	if leaf := ai.creds.Leaf(); leaf != nil {
		d["serial"] = leaf.SerialNumber.Text(16)
		d["not_before"] = leaf.NotBefore
		d["not_after"] = leaf.NotAfter
	}
	var roots []map[string]any
	for _, r := range ai.creds.Roots() {
		roots = append(roots, map[string]any{"subject": r.Subject.String(), "serial": r.SerialNumber.Text(16),
			"not_after": r.NotAfter, "fingerprint": identity.CAFingerprint(r)})
	}
	d["bundle_roots"] = roots
	return d
}

// RegisterMetrics adds mesh_cert_expiry_seconds{cert="workload"}.
func (ai *Enrollment) RegisterMetrics(reg prometheus.Registerer) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "mesh", Name: "cert_expiry_seconds", ConstLabels: prometheus.Labels{"cert": "workload"},
		Help: "Seconds until a certificate expires: the agent's or gateway's workload certificate (cert=workload; 0 before the first); on mesh control the earliest root of the trust bundle (cert=ca_root) and the xDS server certificate (cert=xds_server).",
	}, func() float64 {
		if leaf := ai.creds.Leaf(); leaf != nil {
			return time.Until(leaf.NotAfter).Seconds()
		}
		return 0
	}))
}

// SecureXDS makes the xDS client dial with TLS and the per-RPC token and
// subscribe to the SDS secrets, and loads the cached certificate first,
// so a restart while mesh control is down dials with it.
func (ai *Enrollment) SecureXDS(o *xdsclient.Options) {
	if ok, err := ai.rot.LoadCache(); err != nil {
		ai.log.Warn().Err(err).Msg("identity cache not used")
	} else if ok {
		ai.log.Info().Str("spiffe_id", ai.id.String()).Time("expires", ai.creds.Expiry()).Msg("serving with the cached certificate")
	}
	o.DialOptions = append(o.DialOptions, ai.DialOptions()...)
	o.Secrets = []string{wire.SecretTrustBundle, wire.SecretWorkloadCert}
	o.OnSecrets = ai.OnSecrets
}
