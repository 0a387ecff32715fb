//go:build browser

package meshctl_test

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/png"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	consulapi "github.com/hashicorp/consul/api"
)

// chromium is the browser the dashboard test drives: Debian's, never one
// a tool downloads.
func chromium(t *testing.T) string {
	for _, p := range []string{os.Getenv("MESH_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatal("the dashboard test needs Chromium: apt-get install chromium (or set MESH_CHROMIUM)")
	return ""
}

// TestDashboardInChromium opens /ui/ in a real headless Chromium: the map
// shows the services, an edge appears and its rate moves when traffic
// starts, a service turning critical in Consul turns red without a
// reload, the screenshot is not blank, and every request the page makes
// goes to 127.0.0.1.
func TestDashboardInChromium(t *testing.T) {
	bin := chromium(t)
	m := startControl(t)
	web := m.addVM("web1", "127.0.16.51", "web")
	m.addVM("orders1", "127.0.16.53", "orders")
	c, err := consulapi.NewClient(&consulapi.Config{Address: testConsul.Addr})
	if err != nil {
		t.Fatal(err)
	}
	reg := &consulapi.AgentServiceRegistration{ID: "payments-1", Name: "payments", Address: "127.0.16.54", Port: 15006,
		Check: &consulapi.AgentServiceCheck{CheckID: "payments-1-ttl", TTL: "10m", Status: consulapi.HealthPassing}}
	if err := c.Agent().ServiceRegister(reg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Agent().ServiceDeregister("payments-1") })
	m.waitInSync(t, 2)

	opts := append([]chromedp.ExecAllocatorOption{}, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck, chromedp.Headless,
		chromedp.ExecPath(bin), chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("no-sandbox", true), chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true), chromedp.Flag("no-first-run", true),
		chromedp.WindowSize(1280, 800))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelA()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancelT := context.WithTimeout(ctx, 3*time.Minute)
	defer cancelT()

	var mu sync.Mutex
	var urls []string
	if err := chromedp.Listen(ctx, func(ev any) {
		if e, ok := ev.(*network.EventRequestWillBeSent); ok {
			mu.Lock()
			urls = append(urls, e.Request.URL)
			mu.Unlock()
		}
	}); err != nil {
		t.Fatalf("start chromium %s: %v", bin, err)
	}
	start := time.Now()
	url := "http://" + m.adminAddr + "/ui/"
	if err := chromedp.Do(ctx, chromedp.Navigate(url),
		chromedp.WaitVisible(`g.node[data-service="orders"]`),
		chromedp.WaitVisible(`g.node[data-service="web"]`),
		chromedp.WaitVisible(`g.node[data-service="payments"]`)); err != nil {
		t.Fatalf("dashboard did not show the services: %v", err)
	}
	t.Logf("map with 3 services rendered %s after navigation started", time.Since(start).Round(time.Millisecond))

	eval := func(js string, v *string) {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Evaluate[string](js))
		if err != nil {
			t.Fatalf("evaluate %s: %v", js, err)
		}
		*v = s
	}
	var marker string
	eval(`window.__notReloaded = "yes"`, &marker)
	rpsOf := func() float64 {
		var s string
		eval(`(document.querySelector('[data-edge="web->orders"]') || {dataset: {rps: "0"}}).dataset.rps`, &s)
		f, _ := strconv.ParseFloat(s, 64)
		return f
	}
	if r := rpsOf(); r != 0 {
		t.Fatalf("web -> orders shows %v req/s before any traffic", r)
	}

	// Traffic starts: the edge appears and its rate moves.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		client := &http.Client{Timeout: 5 * time.Second}
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			path := "/hello"
			if i%4 == 0 {
				path = "/fail"
			}
			req, _ := http.NewRequest(http.MethodGet, "http://"+web.outbound()+path, nil)
			req.Host = "orders"
			if resp, err := client.Do(req); err == nil {
				resp.Body.Close()
			}
		}
	}()
	defer func() { close(stop); <-done }()
	deadline := time.Now().Add(30 * time.Second)
	var first float64
	for first = rpsOf(); first == 0 && time.Now().Before(deadline); first = rpsOf() {
		time.Sleep(200 * time.Millisecond)
	}
	if first == 0 {
		t.Fatal("the web -> orders edge never showed a rate while traffic flowed")
	}
	moved := first
	for time.Now().Before(deadline) && moved == first {
		time.Sleep(300 * time.Millisecond)
		moved = rpsOf()
	}
	if moved == first {
		t.Errorf("the web -> orders rate stayed at %v req/s while traffic kept flowing", first)
	}
	var label string
	eval(`document.querySelector('[data-edge="web->orders"] text').textContent`, &label)
	if !strings.Contains(label, "rps") || !strings.Contains(label, "%") || !strings.Contains(label, "p99") {
		t.Errorf("edge label %q lacks rate, error ratio or p99", label)
	}
	t.Logf("edge web -> orders: %v then %v req/s, label %q", first, moved, label)

	// payments turns critical in Consul: its node turns red, no reload.
	var h string
	eval(`document.querySelector('g.node[data-service="payments"]').dataset.health`, &h)
	if h != "ok" {
		t.Fatalf("payments shows %q before its check fails", h)
	}
	if err := c.Agent().UpdateTTL("payments-1-ttl", "failing for the test", consulapi.HealthCritical); err != nil {
		t.Fatal(err)
	}
	turned := time.Now()
	for h != "bad" && time.Since(turned) < 15*time.Second {
		time.Sleep(100 * time.Millisecond)
		eval(`document.querySelector('g.node[data-service="payments"]').dataset.health`, &h)
	}
	if h != "bad" {
		t.Fatalf("payments shows %q %s after turning critical", h, time.Since(turned).Round(time.Millisecond))
	}
	var fill string
	eval(`getComputedStyle(document.querySelector('g.node[data-service="payments"] circle')).fill`, &fill)
	if fill != "rgb(211, 58, 44)" {
		t.Errorf("payments' node is filled %q, want red", fill)
	}
	t.Logf("payments turned red %s after its check turned critical", time.Since(turned).Round(time.Millisecond))
	eval(`String(window.__notReloaded)`, &marker)
	if marker != "yes" {
		t.Error("the page reloaded")
	}

	// The proxies page lists both agents in sync.
	eval(`location.hash = "#/proxies"`, &marker)
	if err := chromedp.Do(ctx, chromedp.WaitVisible(`#proxies tr[data-node]`)); err != nil {
		t.Fatal(err)
	}
	proxies, err := chromedp.Run(ctx, chromedp.Text(`#proxies tbody`))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{web.nodeID(), "orders-orders1-8080", "in sync"} {
		if !strings.Contains(proxies, want) {
			t.Errorf("proxies page lacks %q:\n%s", want, proxies)
		}
	}

	// orders' page: its instance with health and locality, drain, its
	// policy, and web among its callers with a rate.
	eval(`location.hash = "#/service/orders"`, &marker)
	if err := chromedp.Do(ctx, chromedp.WaitVisible(`#view-service h2`)); err != nil {
		t.Fatal(err)
	}
	var page string
	deadline = time.Now().Add(20 * time.Second)
	for ; time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		eval(`document.getElementById("view-service").innerText`, &page)
		if strings.Contains(page, "orders-orders1-8080") && !strings.Contains(page, "loading") {
			break
		}
	}
	for _, want := range []string{"1/1 healthy, 0 draining", "eu/eu-orders1", "127.0.16.53:15006", "healthy", "Callers", "Callees", "Policy"} {
		if !strings.Contains(page, want) {
			t.Errorf("orders' page lacks %q:\n%s", want, page)
		}
	}
	var callerRPS string
	eval(`(() => { const rows = [...document.querySelectorAll("#view-service table")[1].querySelectorAll("tr")];
		const web = rows.find(r => r.cells[0] && r.cells[0].innerText === "web"); return web ? web.cells[1].innerText : ""; })()`, &callerRPS)
	if f, err := strconv.ParseFloat(callerRPS, 64); err != nil || f <= 0 {
		t.Errorf("orders' page: web calls at %q req/s, want a rate:\n%s", callerRPS, page)
	}
	var policy string
	eval(`document.querySelector("#view-service pre").innerText`, &policy)
	if !strings.Contains(policy, "timeout") {
		t.Errorf("orders' page shows no policy: %q", policy)
	}

	// web calls a service whose instance has a host name for an address:
	// its agent NACKs the load assignment, and the proxies page shows it
	// with the reason, without a reload.
	if err := c.Agent().ServiceRegister(&consulapi.AgentServiceRegistration{ID: "broken-1", Name: "broken", Address: "broken.invalid", Port: 8080}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Agent().ServiceDeregister("broken-1") })
	eval(`location.hash = "#/proxies"`, &marker)
	called := make(chan struct{})
	go func() {
		defer close(called)
		req, _ := http.NewRequest(http.MethodGet, "http://"+web.outbound()+"/", nil)
		req.Host = "broken"
		if resp, err := (&http.Client{Timeout: 20 * time.Second}).Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	var row string
	start = time.Now()
	var shown time.Duration
	for deadline = time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		eval(`(document.querySelector('#proxies tr.state-nacked[data-node="`+web.nodeID()+`"]') || {innerText: ""}).innerText`, &row)
		if row != "" {
			shown = time.Since(start)
			break
		}
	}
	<-called
	if !strings.Contains(row, "nacked") || !strings.Contains(row, "not an IP address") {
		t.Errorf("the proxies page never showed web's NACK with its reason (last row %q)", row)
	} else {
		t.Logf("web's NACK on the proxies page %s after the call started: %q", shown.Round(time.Millisecond), row)
	}
	eval(`String(window.__notReloaded)`, &marker)
	if marker != "yes" {
		t.Error("the page reloaded")
	}

	// A screenshot of the map, checked to be more than one colour.
	eval(`location.hash = "#/map"`, &marker)
	if err := chromedp.Do(ctx, chromedp.WaitVisible(`g.node[data-service="payments"]`),
		chromedp.Sleep(500*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if n := colours(img); n < 8 {
		t.Errorf("screenshot has %d colours: blank", n)
	}
	if dir := os.Getenv("MESH_SCREENSHOT_DIR"); dir != "" {
		_ = os.WriteFile(dir+"/dashboard.png", shot, 0o644)
	}

	mu.Lock()
	defer mu.Unlock()
	if len(urls) == 0 {
		t.Fatal("no request seen")
	}
	for _, u := range urls {
		if !strings.HasPrefix(u, "http://127.0.0.1:") && !strings.HasPrefix(u, "data:") {
			t.Errorf("a request left 127.0.0.1: %s", u)
		}
	}
	t.Logf("%d requests, all to 127.0.0.1", len(urls))
}

// colours counts the distinct colours of img (up to 1000).
func colours(img image.Image) int {
	seen := map[string]bool{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y += 3 {
		for x := b.Min.X; x < b.Max.X; x += 3 {
			r, g, bl, _ := img.At(x, y).RGBA()
			seen[fmt.Sprintf("%d,%d,%d", r>>8, g>>8, bl>>8)] = true
			if len(seen) >= 1000 {
				return len(seen)
			}
		}
	}
	return len(seen)
}
