package mtls

import (
	"net/http"

	"github.com/meshvm/mesh/identity"
)

// PeerHeader hands the verified caller to the app in header name (e.g.
// wire.PeerIdentityHeader): it deletes whatever the caller sent under
// that name, whatever the mode (a caller cannot claim an identity), and
// sets the SPIFFE ID the handshake verified, if any.
func PeerHeader(name string, h http.Handler) http.Handler {
	key := http.CanonicalHeaderKey(name)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, sent := r.Header[key]; sent {
			delete(r.Header, key)
		}
		if id, ok := identity.FromContext(r.Context()); ok {
			r.Header[key] = []string{id.String()}
		}
		h.ServeHTTP(w, r)
	})
}
