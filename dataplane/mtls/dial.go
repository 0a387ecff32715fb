package mtls

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"

	"github.com/meshvm/mesh/identity"
	"github.com/meshvm/mesh/wire"
)

// DialFunc dials a connection (net.Dialer.DialContext's shape).
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Dialer dials peer agents over mTLS where they take it.
type Dialer struct {
	// Creds is the agent's identity; nil or empty dials in plain text.
	Creds *identity.Credentials
	// Peer says whether the endpoint at addr takes mTLS and which
	// identity it must prove; false dials in plain text.
	Peer func(ctx context.Context, addr string) (identity.ID, bool)
	// Protocol returns the application protocol the dial is for (ALPNH2
	// or ALPNHTTP1), from the dial's context; nil or "" offers the mesh's
	// own ALPN only (TCP).
	Protocol func(ctx context.Context) string
	Metrics  *Metrics
}

// Wrap returns dial with mTLS on top for peers that take it: the
// handshake completes within ctx before the connection is returned, so a
// peer that is not who it must be is a dial error (the request was never
// sent, another endpoint may be tried).
func (d *Dialer) Wrap(dial DialFunc) DialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if d.Creds == nil || d.Peer == nil || d.Creds.Leaf() == nil {
			return dial(ctx, network, addr)
		}
		want, ok := d.Peer(ctx, addr)
		if !ok {
			return dial(ctx, network, addr)
		}
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		cfg := d.Creds.ClientConfig(want)
		cfg.NextProtos = []string{wire.ALPNMesh}
		if d.Protocol != nil {
			if p := d.Protocol(ctx); p != "" {
				cfg.NextProtos = []string{p, wire.ALPNMesh}
			}
		}
		tc := tls.Client(c, cfg)
		hctx, cancel := context.WithTimeout(ctx, HandshakeTimeout)
		err = tc.HandshakeContext(hctx)
		cancel()
		d.Metrics.handshake(SideClient, err)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("mtls to %s at %s: %w", want, addr, err)
		}
		return tc, nil
	}
}
