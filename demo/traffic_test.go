package main

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDemoShowsTrafficManagement: the demo's traffic phase shows the
// canary's share of v2 near 10%, then near 50%, the testers' calls all
// on v2, and the rehearsed fault opening orders/v1's breaker.
func TestDemoShowsTrafficManagement(t *testing.T) {
	d := startDemo(t, demoDir(t))
	d.waitFor(t, "=== 7. Steady traffic", 6*time.Minute)
	out := d.output()
	phase := out[strings.Index(out, "=== 6. Traffic management"):strings.Index(out, "=== 7. Steady traffic")]
	t.Log(phase)
	shares := regexp.MustCompile(`\(v2 (\d+)%, configured (\d+)%\)`).FindAllStringSubmatch(phase, -1)
	if len(shares) != 2 {
		t.Fatalf("want two split summaries, got %q", shares)
	}
	for _, s := range shares {
		got, _ := strconv.Atoi(s[1])
		want, _ := strconv.Atoi(s[2])
		if got < want-8 || got > want+8 { // 200 calls: a generous bound
			t.Errorf("v2 got %d%% of the canary's calls, configured %d%%", got, want)
		}
	}
	testers := phase[strings.Index(phase, "A tester's calls"):strings.Index(phase, "v2 looks good")]
	if n := strings.Count(testers, "orders@vm-orders-2"); n != 4 || strings.Contains(testers, "orders@vm-orders-1") {
		t.Errorf("tester calls not all on v2 (%d of 4):\n%s", n, testers)
	}
	rehearsal := phase[strings.Index(phase, "Rehearsing a failure"):]
	if !strings.Contains(rehearsal, "x-mesh-reason: fault-injected") || !strings.Contains(rehearsal, "x-mesh-reason: circuit-open") ||
		!strings.Contains(rehearsal, "breaker is closed again") {
		t.Errorf("the rehearsal does not show injected faults, then the breaker open, then closed:\n%s", rehearsal)
	}
	if err := d.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if err := d.wait(t, time.Minute); err != nil {
		t.Errorf("demo exited with %v", err)
	}
}
