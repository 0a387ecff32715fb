package wire_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/meshvm/mesh/wire"
	"github.com/meshvm/mesh/wire/wiretest"
)

// TestGoldenGatewayResourcesUseTheContract: what the control plane sends a
// gateway is named and keyed as this package says, and is no agent's.
func TestGoldenGatewayResourcesUseTheContract(t *testing.T) {
	r := wiretest.Load(t, wiretest.Gateway)
	if got, want := names(r.Listeners), []string{wire.GatewayHTTPListener, wire.GatewayHTTPSListener}; !slices.Equal(got, want) {
		t.Errorf("listeners %v, want %v", got, want)
	}
	if got := names(r.Routes); !slices.Equal(got, []string{wire.GatewayRoute}) {
		t.Errorf("route configurations %v, want [%s]", got, wire.GatewayRoute)
	}
	if _, ok := r.Clusters[wire.LocalAppCluster]; ok {
		t.Error("a gateway got the local app cluster")
	}
	if _, ok := r.Clusters[wire.JWKSClusterPrefix+"partners"]; !ok {
		t.Errorf("no JWKS cluster in %v", names(r.Clusters))
	}
	lis := js(t, r.Listeners[wire.GatewayHTTPSListener])
	for _, w := range []string{wire.HTTPConnectionManager, wire.HeaderMutationFilter, wire.JWTAuthnFilter, wire.APIKeyFilter, wire.APIKeyAuthType,
		wire.RBACFilter, wire.RouterFilter, `"routeConfigName":"` + wire.GatewayRoute + `"`, `"payloadInMetadata":"` + wire.JWTPayloadMetadataKey + `"`} {
		if !strings.Contains(lis, w) {
			t.Errorf("no %s in the HTTPS listener", w)
		}
	}
	routes := js(t, r.Routes[wire.GatewayRoute])
	for _, w := range []string{wire.JWTAuthnFilter, wire.APIKeyPerRouteType, wire.RBACFilter, `"filter":"` + wire.JWTAuthnFilter + `"`, `"key":"` + wire.JWTPayloadMetadataKey + `"`} {
		if !strings.Contains(routes, w) {
			t.Errorf("no %s in the route configuration", w)
		}
	}
}
