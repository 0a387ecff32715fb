package agent_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/meshvm/mesh/meshtest"
)

// TestXDSClientMetrics: an agent routing by a real `mesh control` shows on
// /metrics which control plane it streams from, the updates it accepted
// per type with their time, and the endpoints it routes to; when the
// control plane goes away, that it is no longer connected.
func TestXDSClientMetrics(t *testing.T) {
	cp := newControl(t, controlOptions{})
	b := startApp(t, "127.0.0.88", "xm-orders-1", nil)
	startAgent(t, "127.0.0.88", "xm-orders", b, nil)
	waitPassing(t, "xm-orders", 1)
	caller := startApp(t, "127.0.0.87", "xm-web", nil)
	other := "127.0.0.1:1" // a second control plane the agent never reaches first
	a := startAgent(t, "127.0.0.87", "xm-web", caller, withControlPlane(cp.xdsAddr, other))
	waitEndpoints(t, a, "xm-orders", 1)

	m := scrapeAgent(t, a.Addr("admin"))
	if got, want := seriesOf(m, "mesh_xds_client_connected"), map[string]float64{
		lbl("control_plane", cp.xdsAddr): 1, lbl("control_plane", other): 0,
	}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("mesh_xds_client_connected = %v, want %v", got, want)
	}
	acks, last := seriesOf(m, "mesh_xds_client_acks_total"), seriesOf(m, "mesh_xds_client_last_update_timestamp_seconds")
	for _, typ := range []string{"cluster", "endpoint", "listener", "route"} {
		l := lbl("type", typ)
		if acks[l] < 1 {
			t.Errorf("mesh_xds_client_acks_total{type=%q} = %v, want at least 1", typ, acks[l])
		}
		if age := float64(time.Now().UnixNano())/1e9 - last[l]; age < 0 || age > 60 {
			t.Errorf("mesh_xds_client_last_update_timestamp_seconds{type=%q} = %v, not a recent time", typ, last[l])
		}
	}
	if n := seriesOf(m, "mesh_xds_client_nacks_total"); len(n) != 0 {
		t.Errorf("NACKs counted for a good config: %v", n)
	}
	if got := seriesOf(m, "mesh_discovery_endpoints")[lbl("service", "xm-orders")]; got != 1 {
		t.Errorf("mesh_discovery_endpoints{service=xm-orders} = %v, want 1 (from the control plane's table)", got)
	}

	cp.stop()
	meshtest.Eventually(t, 10*time.Second, func() error {
		if v := seriesOf(scrapeAgent(t, a.Addr("admin")), "mesh_xds_client_connected")[lbl("control_plane", cp.xdsAddr)]; v != 0 {
			return fmt.Errorf("still connected to the stopped control plane: %v", v)
		}
		return nil
	})
}
