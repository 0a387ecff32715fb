//go:build browser

package meshctl_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	lrsv3 "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
	consulapi "github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/wire"
)

// TestDashboardAt500Services: 500 services in Consul and 500 edges
// reported over LRS; the map renders them all, and the time to that and
// the page's weight are logged (docs/benchmarks.md).
func TestDashboardAt500Services(t *testing.T) {
	bin := chromium(t)
	m := startControl(t)
	c, err := consulapi.NewClient(&consulapi.Config{Address: testConsul.Addr})
	if err != nil {
		t.Fatal(err)
	}
	const n = 500
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("scale%03d-1", i)
		reg := &consulapi.AgentServiceRegistration{ID: id, Name: fmt.Sprintf("scale%03d", i), Address: fmt.Sprintf("127.0.17.%d", 1+i%250), Port: 15006 + i/250}
		if err := c.Agent().ServiceRegister(reg); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Agent().ServiceDeregister(id) })
	}
	meshtest.Eventually(t, 60*time.Second, func() error {
		if st := m.status(t); len(st.Services) < n {
			return fmt.Errorf("%d services in the model", len(st.Services))
		}
		return nil
	})
	// 100 callers, 5 callees each: 500 edges, over real LRS streams.
	conn, err := grpc.NewClient(m.xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := 0; i < 100; i++ {
		md, _ := structpb.NewStruct(map[string]any{wire.NodeService: fmt.Sprintf("scale%03d", i)})
		st, err := lrsv3.NewLoadReportingServiceClient(conn).StreamLoadStats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var cs []*endpointv3.ClusterStats
		for k := 1; k <= 5; k++ {
			cs = append(cs, &endpointv3.ClusterStats{ClusterName: fmt.Sprintf("scale%03d", (i*5+k)%n), UpstreamLocalityStats: []*endpointv3.UpstreamLocalityStats{
				{Locality: &corev3.Locality{}, TotalIssuedRequests: 50, TotalSuccessfulRequests: 49, TotalErrorRequests: 1}}})
		}
		if err := st.Send(&lrsv3.LoadStatsRequest{Node: &corev3.Node{Id: fmt.Sprintf("scale-%d", i), Metadata: md}, ClusterStats: cs}); err != nil {
			t.Fatal(err)
		}
	}
	meshtest.Eventually(t, 20*time.Second, func() error {
		if tr := m.traffic(t); len(tr.Edges) < n {
			return fmt.Errorf("%d edges", len(tr.Edges))
		}
		return nil
	})

	opts := []chromedp.ExecAllocatorOption{chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck, chromedp.Headless,
		chromedp.ExecPath(bin), chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("no-sandbox", true), chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.WindowSize(1280, 800)}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelA()
	bctx, cancelB := chromedp.NewContext(actx)
	defer cancelB()
	bctx, cancelT := context.WithTimeout(bctx, 2*time.Minute)
	defer cancelT()
	if err := chromedp.Do(bctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	url := "http://" + m.adminAddr + "/ui/"
	start := time.Now()
	if err := chromedp.Do(bctx, chromedp.Navigate(url), chromedp.WaitVisible(`g.node[data-service="scale499"]`)); err != nil {
		t.Fatal(err)
	}
	rendered := time.Since(start)
	nodes, err := chromedp.Run(bctx, chromedp.Evaluate[int](`document.querySelectorAll("g.node").length`))
	if err != nil {
		t.Fatal(err)
	}
	edges, err := chromedp.Run(bctx, chromedp.Evaluate[int](`document.querySelectorAll("g.edge").length`))
	if err != nil {
		t.Fatal(err)
	}
	if nodes < n || edges < n {
		t.Errorf("map shows %d nodes and %d edges, want %d of each", nodes, edges, n)
	}
	// Usable at that size: no two nodes overlap, the filter narrows the
	// map to one service, and a click on it opens its page.
	minGap, err := chromedp.Run(bctx, chromedp.Evaluate[float64](`(() => {
		const ps = [...document.querySelectorAll("g.node")].map(g => { const b = g.querySelector("circle").getBoundingClientRect(); return [b.x + b.width / 2, b.y + b.height / 2, b.width]; });
		let min = Infinity;
		for (let i = 0; i < ps.length; i++) for (let j = i + 1; j < ps.length; j++) min = Math.min(min, Math.hypot(ps[i][0] - ps[j][0], ps[i][1] - ps[j][1]) - ps[i][2]);
		return min; })()`))
	if err != nil {
		t.Fatal(err)
	}
	if minGap < 1 {
		t.Errorf("two of the 500 nodes overlap (closest gap %.1f px)", minGap)
	}
	shown, err := chromedp.Run(bctx, chromedp.Evaluate[int](`(() => { const f = document.getElementById("filter"); f.value = "scale123";
		f.dispatchEvent(new Event("input")); return document.querySelectorAll("g.node").length; })()`))
	if err != nil {
		t.Fatal(err)
	}
	if shown != 1 {
		t.Errorf("filter scale123 shows %d nodes, want 1", shown)
	}
	if err := chromedp.Do(bctx, chromedp.Click(`g.node[data-service="scale123"] circle`),
		chromedp.WaitVisible(`#view-service h2`)); err != nil {
		t.Fatalf("open scale123's page from the map: %v", err)
	}
	var page string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		page, err = chromedp.Run(bctx, chromedp.Evaluate[string](`document.getElementById("view-service").innerText`))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(page, "127.0.17.124:15006") {
			break
		}
	}
	if !strings.HasPrefix(page, "scale123") || !strings.Contains(page, "127.0.17.124:15006") || !strings.Contains(page, "scale024") {
		t.Errorf("scale123's page (its instance, scale024 among its callers):\n%s", page)
	}

	// Page weight: the three assets and one overview event.
	weight := 0
	for _, p := range []string{"", "app.js", "style.css"} {
		weight += bodySize(t, url+p)
	}
	ov := 0
	{
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+m.adminAddr+"/api/v1/events", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4<<20)
		for total := 0; ; {
			k, err := resp.Body.Read(buf[total:])
			total += k
			if err != nil || (total > 2 && string(buf[total-2:total]) == "\n\n") {
				ov = total
				break
			}
		}
		resp.Body.Close()
	}
	t.Logf("500 services, %d edges: map rendered %s after navigation; assets %d bytes, one overview event %d bytes", edges, rendered.Round(time.Millisecond), weight, ov)
}

func bodySize(t *testing.T, url string) int {
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return len(b)
}
