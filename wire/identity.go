package wire

// Workload identity and mTLS: what the agent, the gateway and the control
// plane must agree on to deliver certificates and secure the hops between
// proxies.
const (
	// SecretWorkloadCert is the SDS Secret (tls_certificate) holding a
	// node's own certificate chain. Its private key stays on the node: the
	// Secret mesh control sends an agent carries the chain only; the agent
	// pairs it with the key it generated. Istio's name, so Envoy bootstraps
	// written for Istio read it.
	SecretWorkloadCert = "default"
	// SecretTrustBundle is the SDS Secret (validation_context) holding the
	// mesh's trust bundle: every root an identity may chain to, old and new
	// during a root rotation.
	SecretTrustBundle = "ROOTCA"

	// MTLSModeMetadataKey, in the Listener's filter_metadata under
	// GovernanceNamespace, repeats the inbound mTLS mode (MTLSPermissive,
	// MTLSStrict) the filter chains express, for readers that do not
	// evaluate filter_chain_match.
	MTLSModeMetadataKey = "mtls_mode"
	MTLSPermissive      = "permissive"
	MTLSStrict          = "strict"

	// ALPNMesh is offered first by an agent dialing another agent over
	// mTLS, then the app protocol's own ("h2", "http/1.1"); Istio's
	// "istio-peer-exchange" plays the same role.
	ALPNMesh = "mesh/1"

	// PeerIdentityHeader is the default header carrying a caller's
	// verified SPIFFE ID to the app (stripped from requests that arrive
	// without a verified identity).
	PeerIdentityHeader = "x-mesh-peer-identity"

	// ReasonRBACDenied is the x-mesh-reason of a request refused by an
	// authorization rule.
	ReasonRBACDenied = "rbac-denied"
	// RBACFilter is the standard RBAC HTTP filter on an inbound listener;
	// RBACNetworkFilter its L4 form on a TCP listener.
	RBACFilter        = "envoy.filters.http.rbac"
	RBACNetworkFilter = "envoy.filters.network.rbac"
)

// gRPC metadata (per-RPC credentials) on the xDS and certificate RPCs.
const (
	// AuthorizationMetadata carries "Bearer <join token>" before an agent
	// holds a certificate.
	AuthorizationMetadata = "authorization"
	// NodeNameMetadata names the VM (agent.node) on the certificate RPC,
	// checked against a join token bound to a node; NodeIDMetadata is the
	// caller's xDS node id, under which mesh control then serves the
	// issued chain as the SecretWorkloadCert secret.
	NodeNameMetadata = "x-mesh-node"
	NodeIDMetadata   = "x-mesh-node-id"
	// ConsulTokenMetadata carries a Consul ACL token (its secret ID)
	// before an agent holds a certificate, when the agent's credential is
	// its Consul token (agent.identity_credential: consul_token) rather
	// than a join token; mesh control asks Consul what it grants.
	ConsulTokenMetadata = "x-consul-token"
)

// ControlPlaneService is the service name in the SPIFFE ID of mesh
// control's own xDS server certificate
// (spiffe://<trust_domain>/ns/<namespace>/svc/mesh-control): agents check
// it when they dial the control plane. The CA never signs a workload CSR
// or mints a join token for it.
const ControlPlaneService = "mesh-control"

// Values of control.xds.auth.
const (
	XDSAuthOff      = "off"
	XDSAuthOptional = "optional"
	XDSAuthRequired = "required"
)

// The certificate-signing RPC served beside ADS on the xDS port.
const (
	// CertificateService is the gRPC service name; its one method,
	// CertificateSignMethod, takes a CSR (DER, in a
	// google.protobuf.BytesValue) and returns the chain and bundle (PEM,
	// leaf first, in a google.protobuf.Struct with CertChainField and
	// BundleField), authenticated by a join token (AuthorizationMetadata)
	// or the caller's current certificate.
	CertificateService    = "mesh.identity.v1.Certificates"
	CertificateSignMethod = "/mesh.identity.v1.Certificates/Sign"
	CertChainField        = "cert_chain"
	BundleField           = "bundle"
)
