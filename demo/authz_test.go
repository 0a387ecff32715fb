package main

import (
	"os"
	"regexp"
	"strconv"
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
	// The edge phase runs before: one demo run checks both (the demo
	// takes minutes to reach them).
	t.Run("edge", func(t *testing.T) { checkEdgePhase(t, out) })
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

// checkEdgePhase: the demo's edge phase shows a request without a token
// (and one with only a forged x-user-id) refused with 401 and a
// WWW-Authenticate challenge, a signed one accepted with the user id
// forwarded (a forged one replaced), and a burst from one client cut off
// with 429 and Retry-After.
func checkEdgePhase(t *testing.T, out string) {
	start, end := strings.Index(out, "=== 4. The edge"), strings.Index(out, "=== 5. Authorization")
	if start < 0 || end < start {
		t.Fatalf("no edge phase before the authorization phase:\n%s", out)
	}
	phase := out[start:end]
	t.Log(phase)
	lineOf := func(prefix string) string {
		for _, l := range strings.Split(phase, "\n") {
			if strings.HasPrefix(strings.TrimSpace(l), prefix) {
				return l
			}
		}
		t.Fatalf("the edge phase has no line %q:\n%s", prefix, phase)
		return ""
	}
	for _, prefix := range []string{"no token ", "forged x-user-id, no token"} {
		if l := lineOf(prefix); !strings.Contains(l, " 401 x-mesh-reason=auth-missing") || !strings.Contains(l, `WWW-Authenticate="Bearer realm=`) {
			t.Errorf("want 401 auth-missing with a WWW-Authenticate challenge: %q", l)
		}
	}
	for _, prefix := range []string{"token signed for alice", "token for alice + forged x-user-id: admin"} {
		if l := lineOf(prefix); !strings.Contains(l, " 200 ") || !strings.Contains(l, `which saw x-user-id="alice"`) {
			t.Errorf("want 200 with x-user-id alice reaching the app: %q", l)
		}
	}
	burst := phase[strings.Index(phase, "a burst of 40"):]
	m := regexp.MustCompile(`(?m)^\s+429 rate-limited\s+(\d+)$`).FindStringSubmatch(burst)
	if m == nil {
		t.Fatalf("the burst shows no 429 rate-limited:\n%s", burst)
	}
	if n, _ := strconv.Atoi(m[1]); n < 20 { // 40 at once, a bucket of 10 refilled 5/s
		t.Errorf("only %d of 40 cut off with 429:\n%s", n, burst)
	}
	if !regexp.MustCompile(`(?m)^\s+200\s+\d+$`).MatchString(burst) || !strings.Contains(burst, "refused ones carry Retry-After: ") {
		t.Errorf("the burst shows no served requests or no Retry-After:\n%s", burst)
	}
}
