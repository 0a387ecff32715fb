package routematch_test

import (
	"net/http/httptest"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"

	"github.com/meshvm/mesh/routematch"
	"github.com/meshvm/mesh/wire/wiretest"
)

// FuzzCompile: any route configuration either compiles or is refused with
// an error, and a compiled table matches any request without panicking.
func FuzzCompile(f *testing.F) {
	for _, name := range []string{wiretest.Gateway, wiretest.AgentPayments, wiretest.AgentTuned} {
		for _, rc := range wiretest.Load(f, name).Routes {
			b, err := proto.Marshal(rc)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b, "shop.example.com:8443", "/api/orders/1?debug=1")
		}
	}
	f.Fuzz(func(t *testing.T, b []byte, host, target string) {
		var rc routev3.RouteConfiguration
		if proto.Unmarshal(b, &rc) != nil {
			return
		}
		tb, err := routematch.Compile(&rc)
		if err != nil {
			return
		}
		if len(target) == 0 || target[0] != '/' {
			target = "/" + target
		}
		r := httptest.NewRequest("GET", "/", nil)
		if u, err := r.URL.Parse(target); err == nil {
			r.URL = u
		}
		r.Host = host
		if rt, ok := tb.Match(r); ok {
			c := rt.Pick(12345)
			rt.RewritePath(r.URL.EscapedPath())
			rt.ApplyRequestHeaders(r.Header, c)
			rt.RedirectLocation(r)
		}
	})
}
