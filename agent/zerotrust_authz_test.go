package agent_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/meshvm/mesh/meshapi"
	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/wire"
)

// TestZeroTrustAuthorization: rules by caller identity over real mTLS.
// ztweb and ztorders hold certificates from mesh control (join tokens,
// strict mode); orders' rules name ztweb by service, which the control
// plane turns into its SPIFFE ID and the callee's agent matches against
// the certificate the caller presented. A rule change pushed live denies
// ztweb by name, and the callee's access log names the caller and rule.
func TestZeroTrustAuthorization(t *testing.T) {
	p := startZTPair(t, wire.MTLSStrict, "1h", false)
	p.call(t) // mTLS up, no rules yet

	// mesh status shows each agent's certificate expiry, from what the
	// control plane issued it.
	meshtest.Eventually(t, 20*time.Second, func() error {
		var st meshapi.Status
		if err := json.Unmarshal([]byte(fetch(t, "http://"+p.cp.adminAddr+meshapi.StatusPath)), &st); err != nil {
			return err
		}
		for _, px := range st.Proxies {
			if px.Service != "ztweb" {
				continue
			}
			if px.CertExpiry == nil {
				return fmt.Errorf("ztweb's proxy shows no certificate expiry")
			}
			if left := time.Until(*px.CertExpiry); left <= 0 || left > time.Hour+time.Minute {
				return fmt.Errorf("ztweb's certificate expires in %s, want within its 1h lifetime", left)
			}
			return nil
		}
		return fmt.Errorf("no proxy for ztweb in %+v", st.Proxies)
	})

	expect := func(phase string, calls map[[2]string]int) {
		t.Helper()
		expectAuthz(t, p.web.Addr("outbound"), "ztorders", phase, calls)
	}
	get, post := http.MethodGet, http.MethodPost

	// Zero trust for orders: only ztweb, only GETs under /api/.
	p.cp.reload(t, `  authorization:
    - service: ztorders
      default: deny
      rules:
        - {name: batch-never, action: deny, from: [ztbatch]}
        - {name: web-reads, action: allow, from: [ztweb], methods: [GET], paths: [/api/]}
`)
	expect("allow from ztweb", map[[2]string]int{{get, "/api/x"}: 200, {post, "/api/x"}: 403, {get, "/other"}: 403})

	// The same caller denied by name, live: deny rules come first.
	p.cp.reload(t, `  authorization:
    - service: ztorders
      default: deny
      rules:
        - {name: web-out, action: deny, from: [ztweb]}
        - {name: web-reads, action: allow, from: [ztweb], methods: [GET], paths: [/api/]}
`)
	expect("deny ztweb", map[[2]string]int{{get, "/api/x"}: 403})

	// The callee's agent counts the decision under the rule's name.
	if n := metricValue(t, p.orders.Addr("admin"), "mesh_rbac_decisions_total", "service", "ztorders", "action", "deny", "rule", "web-out"); n < 1 {
		t.Errorf("mesh_rbac_decisions_total{rule=web-out,action=deny} = %v, want ≥ 1", n)
	}
}
