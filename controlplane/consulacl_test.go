package controlplane_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/enroll"
	"github.com/meshvm/mesh/identity"
	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/wire"
)

// TestConsulACLTokenAsCredential: with a real Consul enforcing ACLs
// (default deny), a workload presenting its Consul ACL token instead of a
// join token (agent.identity_credential: consul_token, through the same
// enroll code the agent runs) gets a certificate for web when Consul
// grants the token service:write on web (by a policy, or by a service
// identity), is refused for orders with an error naming the token and
// the permission, is refused once the token is deleted, and still renews
// with its current certificate after its token is deleted.
func TestConsulACLTokenAsCredential(t *testing.T) {
	const management = "5f1c8f3e-7a3b-4d55-9e55-0d5b1f6a0001"
	c, err := meshtest.StartConsulACL(management)
	if err != nil {
		t.Fatalf("consul with ACLs: %v", err)
	}
	t.Cleanup(c.Stop)
	p, _, dir := caPlane2(t, c.Addr, management)

	acl := c.Client.ACL()
	pol, _, err := acl.PolicyCreate(&consulapi.ACLPolicy{Name: "web-write", Rules: `service "web" { policy = "write" }`}, nil)
	if err != nil {
		t.Fatal(err)
	}
	byPolicy, _, err := acl.TokenCreate(&consulapi.ACLToken{Description: "web by policy", Policies: []*consulapi.ACLTokenPolicyLink{{ID: pol.ID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	byIdentity, _, err := acl.TokenCreate(&consulapi.ACLToken{Description: "web by service identity", ServiceIdentities: []*consulapi.ACLServiceIdentity{{ServiceName: "web"}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	readOnly, _, err := acl.TokenCreate(&consulapi.ACLToken{Description: "nothing"}, nil)
	if err != nil {
		t.Fatal(err)
	}

	bundle := filepath.Join(dir, "bundle.crt")
	enrol := func(service, token string) *enroll.Enrollment {
		t.Helper()
		e, err := enroll.New(enroll.Options{ConsulToken: token, CAFile: bundle, CAField: "agent.control_plane_ca_file",
			Servers: []string{p.xdsAddr}, Service: service, NodeName: "vm-1", NodeID: service + "-vm-1",
			Dir: t.TempDir(), Log: zerolog.New(zerolog.NewTestWriter(t))})
		if err != nil {
			t.Fatalf("enroll %s: %v", service, err)
		}
		return e
	}
	issue := func(e *enroll.Enrollment, service string) ([]byte, error) {
		t.Helper()
		key, err := identity.NewKey()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := identity.NewID(identity.DefaultTrustDomain, identity.DefaultNamespace, service)
		csr, err := identity.NewCSR(key, id)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		chain, _, err := e.Issue(ctx, csr)
		return chain, err
	}

	// Each way Consul grants service:write on web gets web's certificate
	// through the enrollment's own rotation (what a running agent does).
	var web *enroll.Enrollment
	for _, tok := range []*consulapi.ACLToken{byPolicy, byIdentity} {
		e := enrol("web", tok.SecretID)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- e.Run(ctx) }()
		meshtest.Eventually(t, 30*time.Second, func() error {
			if e.Credentials().Leaf() == nil {
				return errString("no certificate yet for " + tok.Description)
			}
			return nil
		})
		cancel()
		<-done
		if got := e.Credentials().Leaf().URIs[0].String(); got != "spiffe://mesh.local/ns/default/svc/web" {
			t.Errorf("%s: issued %s", tok.Description, got)
		}
		if tok == byPolicy {
			web = e
		}
	}

	// Not for orders, with an error that says why.
	_, err = issue(enrol("orders", byPolicy.SecretID), "orders")
	if err == nil || !strings.Contains(err.Error(), "Consul ACL token "+byPolicy.AccessorID+" does not grant service:write on orders") {
		t.Errorf("orders with a web token: %v", err)
	}
	_, err = issue(enrol("web", readOnly.SecretID), "web")
	if err == nil || !strings.Contains(err.Error(), "does not grant service:write on web") {
		t.Errorf("web with a token granting nothing: %v", err)
	}
	_, err = issue(enrol("web", "0d3c0e1e-0000-4000-8000-000000000000"), "web")
	if err == nil || !strings.Contains(err.Error(), "refused by Consul") {
		t.Errorf("web with a token Consul does not know: %v", err)
	}

	// A deleted (revoked) token gets nothing...
	if _, err := acl.TokenDelete(byIdentity.AccessorID, nil); err != nil {
		t.Fatal(err)
	}
	_, err = issue(enrol("web", byIdentity.SecretID), "web")
	if err == nil || !strings.Contains(err.Error(), "refused by Consul") {
		t.Errorf("a deleted token: %v", err)
	}
	// ...but an agent that holds a certificate renews with it.
	if _, err := acl.TokenDelete(byPolicy.AccessorID, nil); err != nil {
		t.Fatal(err)
	}
	before := web.Credentials().Leaf().SerialNumber
	chain, err := issue(web, "web")
	if err != nil {
		t.Fatalf("renewal with the current certificate after the token was deleted: %v", err)
	}
	certs, err := identity.ParseCertificates(chain)
	if err != nil || certs[0].SerialNumber.Cmp(before) == 0 {
		t.Errorf("renewal: %v (serial %v, before %v)", err, certs[0].SerialNumber, before)
	}
	for _, tok := range []*consulapi.ACLToken{byPolicy, byIdentity, readOnly} {
		if strings.Contains(p.logs.String(), tok.SecretID) {
			t.Error("a Consul token's secret appears in the control plane's log")
		}
	}
	if !strings.Contains(p.logs.String(), byPolicy.AccessorID) {
		t.Error("the control plane's log does not name the token's accessor id")
	}
}

type errString string

func (e errString) Error() string { return string(e) }

// caPlane2 is caPlane against consulAddr, reading Consul with token.
func caPlane2(t *testing.T, consulAddr, token string) (*plane, struct{}, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	p := startPlane(t, consulAddr, func(c *config.Config) {
		c.Control.CA.Dir = dir
		c.Control.XDS.Auth = wire.XDSAuthRequired
		c.Consul.Token = token
	})
	return p, struct{}{}, dir
}
