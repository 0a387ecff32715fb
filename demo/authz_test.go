package main

import (
	"os"
	"strings"
	"testing"
	"time"
)

// TestDemoShowsAuthorization: the demo's authorization phase shows a call
// refused by a rule (403 rbac-denied), then allowed once the rule is
// added, live, and the demo goes on to its last phase.
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
	if err := d.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if err := d.wait(t, time.Minute); err != nil {
		t.Errorf("demo exited with %v", err)
	}
}
