package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/meshvm/mesh/wire"
)

// Authorization rules the demo adds to mesh control's config, live: first
// orders refuses everything but its health path (zero trust), then a rule
// lets web's GETs under /orders/ through: web is known by the SPIFFE ID
// of the certificate its agent presents over mTLS, not by its address.
const (
	authzDenyAll = `  authorization:
    - service: orders
      default: deny
      rules:
        - {name: health, action: allow, paths: [/health]}
`
	authzAllowReads = `  authorization:
    - service: orders
      default: deny
      rules:
        - {name: health, action: allow, paths: [/health]}
        - {name: reads, action: allow, from: [web], methods: [GET], paths: [/orders/]}
`
)

// withAuthorization is mesh control's config base with an authorization section (a
// YAML block under control:).
func withAuthorization(base, block string) string {
	const anchor = "  admin_addr: 127.0.0.1:19000\n"
	return strings.Replace(base, anchor, anchor+block, 1)
}

// authorization rewrites mesh control's config at path with the
// authorization block and reloads it (SIGHUP), then calls until a call
// gets want, printing the calls on the way.
func (d *demo) authorization(control *exec.Cmd, path, base, block string, want int, every time.Duration) error {
	if err := os.WriteFile(path, []byte(withAuthorization(base, block)), 0o644); err != nil {
		return err
	}
	if err := control.Process.Signal(syscall.SIGHUP); err != nil {
		return fmt.Errorf("reload mesh control: %w", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for d.ctx.Err() == nil {
		r := d.call(d.client)
		d.print(r)
		if r.status == want {
			for i := 0; i < 2 && d.ctx.Err() == nil; i++ { // it holds
				d.sleep(every)
				d.print(d.call(d.client))
			}
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("calls still get %d %s 10s after the reload, want %d", r.status, r.reason, want)
		}
		d.sleep(every)
	}
	return nil
}

// identities shows who is who on both sides of the allowed call: the
// identity web's agent presents, the one orders' agents hold, and the
// caller's identity as orders' app received it (x-mesh-peer-identity, set
// by orders' agent from the verified client certificate; a copy sent by
// a caller is stripped).
func (d *demo) identities() {
	r := d.call(d.client)
	fmt.Printf("\n    SPIFFE IDs on both sides of the call (mTLS between the agents, certificates from mesh control's CA):\n")
	fmt.Printf("      caller: web's agent (%s) presents      %s\n", d.web.name, orNone(spiffeID(d.web)))
	for _, o := range d.orders {
		fmt.Printf("      callee: orders' agent (%s) presents %s\n", o.name, orNone(spiffeID(o)))
	}
	fmt.Printf("      orders' app (%s) received %s: %s\n", orNone(r.instance), wire.PeerIdentityHeader, orNone(r.peer))
}
