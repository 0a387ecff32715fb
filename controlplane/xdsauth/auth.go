// Package xdsauth protects mesh control's xDS port: the transport that
// serves TLS (with the control plane's own certificate from its CA) and
// plaintext on one port, the authentication of every RPC (a mesh
// certificate presented in the handshake, or a join token as
// "authorization: Bearer <token>" metadata, or a Consul ACL token as
// "x-consul-token" metadata, verified against Consul), the binding of an xDS node to
// the identity that presented it, and the certificate-signing RPC served
// beside ADS (wire.CertificateService).
package xdsauth

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/meshvm/mesh/controlplane/ca"
	"github.com/meshvm/mesh/controlplane/consulacl"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/identity"
	"github.com/meshvm/mesh/wire"
)

// Principal is who an RPC authenticated as. The zero Principal is an
// anonymous client (no certificate, no token).
type Principal struct {
	// Peer is the verified client certificate (a mesh workload's), nil
	// for a token or an anonymous client.
	Peer *x509.Certificate
	// ID is the certificate's SPIFFE ID; Name its mesh service name
	// (orders, or orders.shop for ns/shop/svc/orders: ca.ServiceName).
	ID   identity.ID
	Name string
	// Token is the join token presented, Claims what it grants.
	Token  string
	Claims identity.Claims
	// Consul is the Consul ACL token presented (known to Consul), nil
	// for other credentials. What it allows is Consul's to say, per
	// service (Allows).
	Consul *consulacl.Token
}

// Anonymous reports whether the client presented no credential.
func (p Principal) Anonymous() bool { return p.Peer == nil && p.Token == "" && p.Consul == nil }

// Allows reports whether p may act as service: its certificate's
// service, one its join token names, or one its Consul ACL token grants
// service:write on (asked of Consul; an error when Consul cannot say).
func (p Principal) Allows(ctx context.Context, service string) (bool, error) {
	if p.Consul != nil && p.Peer == nil && p.Token == "" {
		return p.Consul.AllowsServiceWrite(ctx, service)
	}
	return slices.Contains(p.Services(), service), nil
}

// refusal is the error for a service p does not allow.
func (p Principal) refusal(service string) string {
	if p.Consul != nil && p.Peer == nil && p.Token == "" {
		return fmt.Sprintf("%s does not grant service:write on %s (Consul's ACL policies, roles and service identities decide)", p, service)
	}
	return fmt.Sprintf("%s does not allow service %s (it allows %s)", p, service, strings.Join(p.Services(), ", "))
}

// allowsErr is Allows as a gRPC status: PermissionDenied naming what is
// refused, Unavailable when Consul cannot be asked.
func (p Principal) allowsErr(ctx context.Context, service string) error {
	ok, err := p.Allows(ctx, service)
	switch {
	case err != nil && errors.Is(err, consulacl.ErrRefused):
		return status.Errorf(codes.PermissionDenied, "%s: %v", p, err)
	case err != nil:
		return status.Errorf(codes.Unavailable, "%s: %v", p, err)
	case !ok:
		return status.Error(codes.PermissionDenied, p.refusal(service))
	}
	return nil
}

// Services are the services p may act as, as far as mesh control knows
// them (nil for a Consul ACL token: ask Allows).
func (p Principal) Services() []string {
	switch {
	case p.Peer != nil:
		if p.Name == "" {
			return []string{p.ID.ServiceName("")}
		}
		return []string{p.Name}
	case p.Token != "":
		return p.Claims.Services
	}
	return nil
}

// String names p for errors and logs (never the token itself).
func (p Principal) String() string {
	switch {
	case p.Peer != nil:
		return "certificate " + p.ID.String()
	case p.Token != "":
		return "join token " + p.Claims.ID
	case p.Consul != nil:
		return p.Consul.String()
	}
	return "anonymous client"
}

// Owner is the key a node id is bound to: the services p may act as.
func (p Principal) Owner() string {
	if p.Services() == nil && p.Consul != nil {
		return "consul token " + p.Consul.AccessorID
	}
	s := slices.Clone(p.Services())
	slices.Sort(s)
	return strings.Join(s, ",")
}

type principalKey struct{}

// NewContext returns ctx carrying p.
func NewContext(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// FromContext returns the principal the interceptors stored, and false
// when none ran (auth off).
func FromContext(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}

// Authenticator checks the credentials of RPCs on the xDS port.
type Authenticator struct {
	// Mode is wire.XDSAuthOff, XDSAuthOptional or XDSAuthRequired.
	Mode string
	CA   *ca.CA
	// Consul verifies Consul ACL tokens (wire.ConsulTokenMetadata); nil
	// refuses them.
	Consul *consulacl.Verifier
	// Now may be nil for time.Now.
	Now func() time.Time
}

func (a *Authenticator) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

// Authenticate returns who the RPC in ctx is: the client certificate of
// its TLS connection when it chains to the CA's bundle, else the join token
// in its metadata (over TLS only), else anonymous. A credential that is presented and bad is an
// Unauthenticated error whatever the mode; with Mode required, so is no
// credential.
func (a *Authenticator) Authenticate(ctx context.Context) (Principal, error) {
	var state *credentials.TLSInfo
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			state = &ti
		}
	}
	tok, err := bearer(ctx)
	if err != nil {
		return Principal{}, err
	}
	ctok, err := consulToken(ctx)
	if err != nil {
		return Principal{}, err
	}
	if state != nil && len(state.State.PeerCertificates) > 0 {
		id, cerr := a.CA.VerifyWorkload(state.State.PeerCertificates)
		if cerr == nil {
			return Principal{Peer: state.State.PeerCertificates[0], ID: id, Name: a.CA.ServiceName(id)}, nil
		}
		if tok == "" && ctok == "" {
			return Principal{}, status.Errorf(codes.Unauthenticated, "%v", cerr)
		}
	}
	if tok != "" {
		if state == nil {
			return Principal{}, status.Error(codes.Unauthenticated, "a join token is accepted over TLS only: connect to mesh control with TLS")
		}
		claims, err := a.CA.VerifyToken(tok)
		if err != nil {
			return Principal{}, status.Errorf(codes.Unauthenticated, "%v", err)
		}
		if now := a.now(); now.Unix() >= claims.Expires {
			return Principal{}, status.Errorf(codes.Unauthenticated, "join token %s expired at %s", claims.ID,
				time.Unix(claims.Expires, 0).UTC().Format(time.RFC3339))
		}
		if claims.TrustDomain != a.CA.TrustDomain() {
			return Principal{}, status.Errorf(codes.Unauthenticated, "join token %s is for trust domain %s, not %s", claims.ID, claims.TrustDomain, a.CA.TrustDomain())
		}
		return Principal{Token: tok, Claims: claims}, nil
	}
	if ctok != "" {
		if state == nil {
			return Principal{}, status.Error(codes.Unauthenticated, "a Consul ACL token is accepted over TLS only: connect to mesh control with TLS")
		}
		if a.Consul == nil {
			return Principal{}, status.Error(codes.Unauthenticated, "this mesh control does not verify Consul ACL tokens")
		}
		t, err := a.Consul.Lookup(ctx, ctok)
		if errors.Is(err, consulacl.ErrRefused) {
			return Principal{}, status.Errorf(codes.Unauthenticated, "%v", err)
		}
		if err != nil {
			return Principal{}, status.Errorf(codes.Unavailable, "%v", err)
		}
		return Principal{Consul: &t}, nil
	}
	if a.Mode == wire.XDSAuthRequired {
		if state == nil {
			return Principal{}, status.Error(codes.Unauthenticated, "mesh control requires authentication (control.xds.auth: required): connect with TLS and present a mesh certificate or a join token (authorization: Bearer <token>)")
		}
		return Principal{}, status.Error(codes.Unauthenticated, "mesh control requires authentication (control.xds.auth: required): present a mesh certificate or a join token (authorization: Bearer <token>)")
	}
	return Principal{}, nil
}

// bearer returns the join token in the RPC's authorization metadata.
func bearer(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get(wire.AuthorizationMetadata)
	if len(vals) == 0 {
		return "", nil
	}
	if len(vals) > 1 {
		return "", status.Error(codes.Unauthenticated, "more than one authorization header")
	}
	v := strings.TrimSpace(vals[0])
	scheme, tok, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "bearer") || strings.TrimSpace(tok) == "" {
		return "", status.Error(codes.Unauthenticated, "authorization: want \"Bearer <join token>\"")
	}
	return strings.TrimSpace(tok), nil
}

// consulToken returns the Consul ACL token in the RPC's metadata.
func consulToken(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get(wire.ConsulTokenMetadata)
	switch {
	case len(vals) == 0:
		return "", nil
	case len(vals) > 1:
		return "", status.Errorf(codes.Unauthenticated, "more than one %s header", wire.ConsulTokenMetadata)
	}
	v := strings.TrimSpace(vals[0])
	if v == "" || len(v) > identity.MaxTokenBytes {
		return "", status.Errorf(codes.Unauthenticated, "%s: want a Consul ACL token (its secret ID)", wire.ConsulTokenMetadata)
	}
	return v, nil
}

// UnaryInterceptor authenticates every unary RPC and stores the
// principal in its context.
func (a *Authenticator) UnaryInterceptor(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	p, err := a.Authenticate(ctx)
	if err != nil {
		return nil, err
	}
	return h(NewContext(ctx, p), req)
}

// StreamInterceptor authenticates every stream (ADS) and stores the
// principal in its context, where the xDS server's stream callbacks find
// it to bind the stream's node (CheckNode).
func (a *Authenticator) StreamInterceptor(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	p, err := a.Authenticate(ss.Context())
	if err != nil {
		return err
	}
	return h(srv, &stream{ServerStream: ss, ctx: NewContext(ss.Context(), p)})
}

type stream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *stream) Context() context.Context { return s.ctx }

// Admit decides whether the stream in ctx may get config as node n, and
// returns the owner the node id is bound to while it is connected ("" for
// an anonymous client). An authenticated client may act only as a service
// its credential allows (the node's service metadata), and as a node bound
// to its token's node name when the token is.
func Admit(ctx context.Context, n model.Node) (string, error) {
	p, ok := FromContext(ctx)
	if !ok || p.Anonymous() {
		return "", nil
	}
	if n.Service != "" {
		if err := p.allowsErr(ctx, n.Service); err != nil {
			st := status.Convert(err)
			if st.Code() != codes.PermissionDenied {
				return "", err
			}
			if p.Consul != nil && p.Services() == nil {
				return "", status.Errorf(codes.PermissionDenied, "%s may not get config as node %q of service %q: %s", p, n.ID, n.Service, st.Message())
			}
			return "", status.Errorf(codes.PermissionDenied, "%s may not get config as node %q of service %q: it allows %s",
				p, n.ID, n.Service, strings.Join(p.Services(), ", "))
		}
		if p.Consul != nil && p.Services() == nil {
			return n.Service, nil // the owner a certificate for that service has
		}
	}
	return p.Owner(), nil
}
