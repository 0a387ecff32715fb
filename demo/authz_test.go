package main

import (
	"os"
	"strings"
	"testing"
	"time"
)

// TestDemoShowsAuthorization: the demo's authorization phase shows a call
// refused by a rule (403 rbac-denied), then allowed once a rule naming the
// caller (from: [web], known by its certificate) is added, live, with the
// SPIFFE IDs on both sides, and the demo goes on to its last phase.
func TestDemoShowsAuthorization(t *testing.T) {
	d := startDemo(t, demoDir(t))
	d.waitFor(t, "=== 6. Traffic management", 5*time.Minute)
	out := d.output()
	phase := out[strings.Index(out, "=== 5. Authorization"):strings.Index(out, "=== 6. Traffic management")]
	denied := strings.Index(phase, "403 Forbidden")
	added := strings.Index(phase, "The rule {name: reads")
	if denied < 0 || !strings.Contains(phase, "x-mesh-reason: rbac-denied") || added < denied {
		t.Fatalf("the authorization phase shows no refusal before the rule is added:\n%s", phase)
	}
	t.Log(phase)
	if !strings.Contains(phase[added:], "200 OK") {
		t.Fatalf("no call allowed once the rule is added:\n%s", phase)
	}
	// The SPIFFE IDs on both sides: what each agent presents, and the
	// caller's identity as orders' app received it over mTLS.
	for _, want := range []string{
		"caller: web's agent (vm-web-1) presents      spiffe://mesh.local/ns/default/svc/web",
		"callee: orders' agent (vm-orders-1) presents spiffe://mesh.local/ns/default/svc/orders",
		"received x-mesh-peer-identity: spiffe://mesh.local/ns/default/svc/web",
	} {
		if !strings.Contains(phase[added:], want) {
			t.Fatalf("the authorization phase does not show %q:\n%s", want, phase)
		}
	}
	if !strings.Contains(out, "vm-web-1     holds the workload identity spiffe://mesh.local/ns/default/svc/web") {
		t.Fatalf("the demo does not say which identity web's agent holds:\n%s", out[:strings.Index(out, "=== 1.")])
	}
	if err := d.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if err := d.wait(t, time.Minute); err != nil {
		t.Errorf("demo exited with %v", err)
	}
}
