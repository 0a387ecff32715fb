package controlplane

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/translate"
)

// maxJWKSFile bounds a jwks_file read by the control plane.
const maxJWKSFile = 1 << 20

// gatewaySettings reads what the gateways get: control.gateway and the
// key sets of its jwks_file providers (read now, at start and on every
// reload, and pushed inline; the translation checks them).
func gatewaySettings(c config.ControlGateway) (*translate.Gateway, error) {
	g := &translate.Gateway{Config: c, JWKS: map[string]string{}}
	for i, p := range c.JWTProviders {
		if p.JWKSFile == "" {
			continue
		}
		b, err := readJWKS(p.JWKSFile)
		if err != nil {
			return nil, fmt.Errorf("control.gateway.jwt_providers[%d].jwks_file (%s): %w", i, p.Name, err)
		}
		g.JWKS[p.Name] = string(b)
	}
	return g, nil
}

func readJWKS(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("cannot read %s: %w", path, pe.Err)
		}
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxJWKSFile+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > maxJWKSFile {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, maxJWKSFile)
	}
	return b, nil
}

// setGateway gives the translator the gateway input (Run goroutine).
func (r *reconciler) setGateway(g *translate.Gateway) {
	r.gateway = g
	r.translator.SetGateway(g)
}
