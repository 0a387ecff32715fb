package xdsauth

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshvm/mesh/controlplane/ca"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/wire"
)

// TestAuthenticateAndAdmit: what a client without TLS, with a good, a
// malformed, a revoked or no token is taken for, and which nodes each
// may be.
func TestAuthenticateAndAdmit(t *testing.T) {
	authority, err := ca.Open(ca.Config{Dir: t.TempDir()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	web, _, _ := authority.MintToken([]string{"web"}, "", time.Hour)
	gone, claims, _ := authority.MintToken([]string{"web"}, "", time.Hour)
	if err := authority.Revoke(claims.ID); err != nil {
		t.Fatal(err)
	}
	// Over plaintext a token is refused whatever it is; these cases check
	// the parsing and the modes without a TLS peer.
	for _, tc := range []struct {
		name     string
		mode     string
		auth     []string
		code     codes.Code
		contains string
	}{
		{name: "no credential, optional", mode: wire.XDSAuthOptional, code: codes.OK},
		{name: "no credential, required", mode: wire.XDSAuthRequired, code: codes.Unauthenticated, contains: "connect with TLS"},
		{name: "token over plaintext", mode: wire.XDSAuthOptional, auth: []string{"Bearer " + web}, code: codes.Unauthenticated, contains: "over TLS only"},
		{name: "revoked token over plaintext", mode: wire.XDSAuthOptional, auth: []string{"Bearer " + gone}, code: codes.Unauthenticated, contains: "over TLS only"},
		{name: "not bearer", mode: wire.XDSAuthOptional, auth: []string{"Basic abc"}, code: codes.Unauthenticated, contains: `want "Bearer <join token>"`},
		{name: "empty bearer", mode: wire.XDSAuthOptional, auth: []string{"Bearer  "}, code: codes.Unauthenticated, contains: "Bearer"},
		{name: "two headers", mode: wire.XDSAuthOptional, auth: []string{"Bearer a", "Bearer b"}, code: codes.Unauthenticated, contains: "more than one"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := &Authenticator{Mode: tc.mode, CA: authority}
			md := metadata.MD{}
			for _, v := range tc.auth {
				md.Append(wire.AuthorizationMetadata, v)
			}
			p, err := a.Authenticate(metadata.NewIncomingContext(context.Background(), md))
			if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.contains) {
				t.Fatalf("got %v, want %v containing %q", err, tc.code, tc.contains)
			}
			if err == nil && !p.Anonymous() {
				t.Errorf("principal %v, want anonymous", p)
			}
		})
	}

	tok, err := authority.VerifyToken(web)
	if err != nil {
		t.Fatal(err)
	}
	p := Principal{Token: web, Claims: tok}
	ctx := NewContext(context.Background(), p)
	if owner, err := Admit(ctx, model.Node{ID: "web-1", Service: "web"}); err != nil || owner != "web" {
		t.Errorf("web token as web: owner %q, %v", owner, err)
	}
	if _, err := Admit(ctx, model.Node{ID: "orders-1", Service: "orders"}); status.Code(err) != codes.PermissionDenied ||
		!strings.Contains(err.Error(), `join token `+tok.ID+` may not get config as node "orders-1" of service "orders"`) {
		t.Errorf("web token as orders: %v", err)
	}
	if owner, err := Admit(context.Background(), model.Node{ID: "x", Service: "orders"}); err != nil || owner != "" {
		t.Errorf("anonymous under optional: owner %q, %v", owner, err)
	}
	if strings.Contains(p.String(), web) {
		t.Error("a principal's name shows its token")
	}
}
