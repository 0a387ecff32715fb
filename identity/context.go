package identity

import "context"

type peerKey struct{}

// NewContext returns ctx carrying the caller's verified identity: the
// inbound side of an mTLS hop stores it there for the steps after it
// (authorization, the peer-identity header, the access log).
func NewContext(ctx context.Context, peer ID) context.Context {
	return context.WithValue(ctx, peerKey{}, peer)
}

// FromContext returns the verified caller identity NewContext stored, and
// false for a caller that presented none (plaintext, permissive mode).
func FromContext(ctx context.Context) (ID, bool) {
	id, ok := ctx.Value(peerKey{}).(ID)
	return id, ok
}
