package main

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"time"
)

// The demo's orders instances are two versions: vm-orders-1 registers
// Consul meta version=v1, vm-orders-2 version=v2. Traffic management
// (control.services.orders) names them as subsets and routes between
// them; each block below is the whole control.services section of one
// reload.
const (
	trafficSubsets = `  services:
    orders:
      subsets:
        - {name: v1, match: {version: v1}}
        - {name: v2, match: {version: v2}}
      default_subset: v1
      routes:
        - {name: testers, headers: [{name: x-canary, exact: "1"}], subset: v2}
        - name: rehearse
          headers: [{name: x-fault}]
          fault: {abort: {http_status: 503, percent: 100}}
`
	trafficCanary10 = trafficSubsets + `        - name: canary
          path_prefix: /orders/
          split: [{subset: v1, weight: 90}, {subset: v2, weight: 10}]
`
	trafficCanary50 = trafficSubsets + `        - name: canary
          path_prefix: /orders/
          split: [{subset: v1, weight: 50}, {subset: v2, weight: 50}]
`
)

// versions maps the demo's orders instances to their version meta.
var versions = map[string]string{"vm-orders-1": "v1", "vm-orders-2": "v2"}

// reload writes mesh control's config (base plus the authorization the
// previous phase left and a control.services block) and reloads it.
func reload(control *exec.Cmd, path, base, services string) error {
	if err := os.WriteFile(path, []byte(withAuthorization(base, authzAllowReads+services)), 0o644); err != nil {
		return err
	}
	if err := control.Process.Signal(syscall.SIGHUP); err != nil {
		return fmt.Errorf("reload mesh control: %w", err)
	}
	return nil
}

// traffic is the traffic-management phase: a canary at 10%, then 50%, a
// tester routed by a header, and a fault rehearsed until the breaker
// opens.
func (d *demo) traffic(control *exec.Cmd, path, base string) error {
	fmt.Println("  control.services.orders: subsets v1 (meta version=v1) and v2; testers (x-canary: 1) to v2;")
	fmt.Println("  a canary route sending 10% of /orders/ to v2. Reloaded (SIGHUP), pushed as weighted clusters:")
	if err := reload(control, path, base, trafficCanary10); err != nil {
		return err
	}
	if err := d.waitSplit(func(v2 int) bool { return v2 > 0 }); err != nil {
		return err
	}
	d.split(200, 10)

	fmt.Println("\n  A tester's calls (x-canary: 1) always reach v2:")
	for i := 0; i < 4 && d.ctx.Err() == nil; i++ {
		d.print(d.request(d.client, map[string]string{"x-canary": "1"}))
		d.sleep(50 * time.Millisecond)
	}

	fmt.Println("\n  v2 looks good: the canary moves to 50% (one reload, no request fails on the way):")
	if err := reload(control, path, base, trafficCanary50); err != nil {
		return err
	}
	if err := d.waitSplit(func(v2 int) bool { return v2 >= 6 }); err != nil {
		return err
	}
	d.split(200, 50)

	fmt.Println("\n  Rehearsing a failure: the rehearse route injects 503 into every call with x-fault (in web's")
	fmt.Println("  agent, no app touched). The injected errors count in orders/v1's breaker window, which still")
	fmt.Println("  holds the canary's successes; once errors reach 50% the breaker opens:")
	open, injected := 0, 0
	for i := 0; i < 600 && open < 3 && d.ctx.Err() == nil; i++ {
		r := d.request(d.client, map[string]string{"x-fault": "1"})
		switch r.reason {
		case "circuit-open":
			if open == 0 {
				fmt.Printf("  ... %d calls got 503 fault-injected; then:\n", injected)
				fmt.Println("  --> the breaker is open: calls fail fast, as they would if v1 were really failing")
			}
			open++
			d.print(r)
		case "fault-injected":
			injected++
			if injected <= 3 {
				d.print(r)
			}
		default:
			d.print(r)
		}
		d.sleep(20 * time.Millisecond)
	}
	if open == 0 {
		return fmt.Errorf("the breaker did not open after %d injected faults", injected)
	}
	fmt.Println("  --> the rehearsal stops (no x-fault); after the 3s sleep window a probe closes the breaker")
	deadline := time.Now().Add(8 * time.Second)
	for time.Now().Before(deadline) && d.ctx.Err() == nil {
		r := d.call(d.client)
		d.print(r)
		if r.status == http.StatusOK && versions[r.instance] == "v1" { // v2's breaker never opened
			fmt.Println("  --> orders/v1's breaker is closed again: traffic flows to both versions")
			return nil
		}
		d.sleep(500 * time.Millisecond)
	}
	return nil
}

// waitSplit calls until a sample of 20 calls satisfies ok (the reload
// has reached web's agent).
func (d *demo) waitSplit(ok func(v2 int) bool) error {
	deadline := time.Now().Add(15 * time.Second)
	for d.ctx.Err() == nil {
		v2 := 0
		for i := 0; i < 20; i++ {
			if r := d.request(d.client, nil); versions[r.instance] == "v2" {
				v2++
			}
			d.sleep(12 * time.Millisecond)
		}
		if ok(v2) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the new split did not reach web's agent within 15s (%d of 20 calls to v2)", v2)
		}
	}
	return nil
}

// split sends n calls, paced under orders' rate limit, and prints where
// they went.
func (d *demo) split(n, wantV2 int) {
	counts := map[string]int{}
	for i := 0; i < n && d.ctx.Err() == nil; i++ {
		r := d.request(d.client, nil)
		switch {
		case r.err != nil:
			counts["error"]++
		case r.reason != "":
			counts[fmt.Sprintf("%d %s", r.status, r.reason)]++
		default:
			counts[versions[r.instance]]++
		}
		d.sleep(12 * time.Millisecond)
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, counts[k]))
	}
	fmt.Printf("  %d calls: %s  (v2 %.0f%%, configured %d%%)\n", n, strings.Join(parts, ", "),
		100*float64(counts["v2"])/float64(max(n, 1)), wantV2)
}
