package xdsauth

import (
	"context"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshvm/mesh/controlplane/ca"
	"github.com/meshvm/mesh/identity"
	"github.com/meshvm/mesh/wire"
)

// Signer is the certificate RPC (wire.CertificateService): a CSR (DER in
// a BytesValue) in, the signed chain and the trust bundle (PEM in a
// Struct) out, for the services the caller's credential allows: its join
// token's, or its current certificate's own (renewal).
type Signer struct {
	Auth *Authenticator
	Log  zerolog.Logger
	// OnIssued, if set, is called with the caller's xDS node id
	// (wire.NodeIDMetadata, may be "") and the issued certificate.
	OnIssued func(nodeID string, iss *ca.Issued)

	issued  atomic.Uint64
	metrics *prometheus.CounterVec
}

// NewSigner returns a Signer counting into reg.
func NewSigner(a *Authenticator, log zerolog.Logger, reg prometheus.Registerer) *Signer {
	s := &Signer{Auth: a, Log: log,
		metrics: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "mesh", Name: "certificates_issued_total",
			Help: "Certificate signing requests answered by mesh control, by result (issued, refused)."}, []string{"result"})}
	if reg != nil {
		reg.MustRegister(s.metrics)
	}
	return s
}

// Issued is how many certificates this process signed.
func (s *Signer) Issued() uint64 { return s.issued.Load() }

// Register adds the service to g.
func (s *Signer) Register(g *grpc.Server) {
	g.RegisterService(&grpc.ServiceDesc{
		ServiceName: wire.CertificateService,
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: strings.TrimPrefix(wire.CertificateSignMethod, "/"+wire.CertificateService+"/"),
			Handler: func(_ any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
				in := &wrapperspb.BytesValue{}
				if err := dec(in); err != nil {
					return nil, err
				}
				if icpt == nil {
					return s.Sign(ctx, in)
				}
				info := &grpc.UnaryServerInfo{FullMethod: wire.CertificateSignMethod}
				return icpt(ctx, in, info, func(ctx context.Context, req any) (any, error) {
					return s.Sign(ctx, req.(*wrapperspb.BytesValue))
				})
			},
		}},
		Metadata: "mesh/identity/v1/certificates",
	}, s)
}

// Sign answers one request.
func (s *Signer) Sign(ctx context.Context, in *wrapperspb.BytesValue) (*structpb.Struct, error) {
	out, err := s.sign(ctx, in)
	result := "issued"
	if err != nil {
		result = "refused"
	}
	if s.metrics != nil {
		s.metrics.WithLabelValues(result).Inc()
	}
	return out, err
}

func (s *Signer) sign(ctx context.Context, in *wrapperspb.BytesValue) (*structpb.Struct, error) {
	p, ok := FromContext(ctx)
	if !ok { // auth off: the interceptors did not run, this RPC still needs a credential
		var err error
		if p, err = s.Auth.Authenticate(ctx); err != nil {
			return nil, err
		}
	}
	md, _ := metadata.FromIncomingContext(ctx)
	node, nodeID := first(md.Get(wire.NodeNameMetadata)), first(md.Get(wire.NodeIDMetadata))
	log := s.Log.With().Str("caller", p.String()).Str("node", node).Logger()
	if p.Anonymous() {
		return nil, status.Error(codes.Unauthenticated, "no credential: present a join token (authorization: Bearer <token>) or your current mesh certificate")
	}
	_, id, err := identity.ParseCSR(in.GetValue())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "%v", err)
	}
	if err := p.allowsErr(ctx, s.Auth.CA.ServiceName(id)); err != nil {
		log.Warn().Str("asked", id.String()).Msg("certificate refused: the credential does not allow this service")
		return nil, err
	}
	if p.Token != "" && p.Claims.Node != "" && p.Claims.Node != node {
		return nil, status.Errorf(codes.PermissionDenied, "join token %s is bound to node %s, not %q", p.Claims.ID, p.Claims.Node, node)
	}
	cred := ca.Credential{Token: p.Token, Peer: p.Peer, Node: node}
	if p.Consul != nil && p.Token == "" && p.Peer == nil {
		cred.Verified = "consul:" + p.Consul.AccessorID // Consul granted service:write above
	}
	iss, err := s.Auth.CA.Sign(in.GetValue(), cred)
	if err != nil {
		log.Warn().Err(err).Str("asked", id.String()).Msg("certificate refused")
		return nil, status.Errorf(codes.PermissionDenied, "%v", err)
	}
	s.issued.Add(1)
	log.Info().Str("spiffe_id", iss.ID.String()).Str("serial", iss.Cert.SerialNumber.Text(16)).
		Time("expires", iss.Expires).Msg("certificate issued")
	if s.OnIssued != nil {
		s.OnIssued(nodeID, iss)
	}
	return &structpb.Struct{Fields: map[string]*structpb.Value{
		wire.CertChainField: structpb.NewStringValue(string(iss.ChainPEM)),
		wire.BundleField:    structpb.NewStringValue(string(s.Auth.CA.BundlePEM())),
	}}, nil
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return strings.TrimSpace(v[0])
}
