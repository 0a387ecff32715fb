package agent

import (
	"path/filepath"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/enroll"
	"github.com/meshvm/mesh/xdsclient"
)

// identityDir is where the certificate, key and bundle are cached.
func identityDir(c config.Agent) string {
	if c.IdentityDir != "" {
		return c.IdentityDir
	}
	return filepath.Join(c.CacheDir, "identity", c.Service)
}

// newIdentity prepares the agent's workload identity (package enroll)
// from its config: nil without agent.join_token_file or
// agent.identity_credential consul_token.
func newIdentity(cfg config.Config, nodeName, nodeID string, log zerolog.Logger) (*enroll.Enrollment, error) {
	c := cfg.Agent
	if !c.HasIdentity() {
		return nil, nil
	}
	var consulToken string
	if c.JoinTokenFile == "" {
		consulToken = cfg.Consul.Token
	}
	return enroll.New(enroll.Options{TokenFile: c.JoinTokenFile, Field: "agent.join_token_file", ConsulToken: consulToken,
		CAFile: c.ControlPlaneCAFile, CAField: "agent.control_plane_ca_file",
		Servers: c.ControlPlane, Service: c.Service, NodeName: nodeName, NodeID: nodeID, Dir: identityDir(c), Log: log})
}

// secureXDS makes the xDS client dial mesh control with the identity's
// TLS and token, and take its SDS secrets.
func (a *Agent) secureXDS(o *xdsclient.Options) {
	if a.ident != nil {
		a.ident.SecureXDS(o)
	}
}
