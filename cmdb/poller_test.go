package cmdb_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/cmdb"
	"github.com/meshvm/mesh/meshtest"
)

// syncBuffer is a log sink the poller goroutine and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) count(substr string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Count(s.b.String(), substr)
}

// collector receives a poller's views as the control plane would.
type collector struct {
	mu    sync.Mutex
	views [][]cmdb.Host
}

func (c *collector) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.views)
}

// wait returns the n-th view (1-based) once it has arrived.
func (c *collector) wait(t *testing.T, n int) []cmdb.Host {
	t.Helper()
	var v []cmdb.Host
	meshtest.Eventually(t, 5*time.Second, func() error {
		c.mu.Lock()
		defer c.mu.Unlock()
		if len(c.views) < n {
			return fmt.Errorf("%d views, waiting for %d", len(c.views), n)
		}
		v = c.views[n-1]
		return nil
	})
	return v
}

// runPoller runs p until the test ends, collecting its views, and checks
// that Run returns once cancelled.
func runPoller(t *testing.T, p *cmdb.Poller) *collector {
	ctx, cancel := context.WithCancel(context.Background())
	views := make(chan []cmdb.Host)
	c := &collector{}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, views) }()
	collected := make(chan struct{})
	go func() {
		defer close(collected)
		for {
			select {
			case v := <-views:
				c.mu.Lock()
				c.views = append(c.views, v)
				c.mu.Unlock()
			case <-ctx.Done():
				return
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-collected
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	return c
}

// waitStats waits until cond holds for the poller's stats.
func waitStats(t *testing.T, p *cmdb.Poller, what string, cond func(cmdb.Stats) bool) cmdb.Stats {
	t.Helper()
	var st cmdb.Stats
	meshtest.Eventually(t, 5*time.Second, func() error {
		if st = p.Stats(); !cond(st) {
			return fmt.Errorf("%s: stats %+v", what, st)
		}
		return nil
	})
	return st
}

func TestPollerKeepsLastGoodView(t *testing.T) {
	f := newFakeNetBox(t)
	cfg := netboxConfig(f.url())
	cfg.Timeout = 200 * time.Millisecond
	nb, err := cmdb.NewNetBox(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	p := cmdb.NewPoller(nb, 30*time.Millisecond, zerolog.New(logs))
	views := runPoller(t, p)

	// The first view arrives at once, with the record skips reported.
	v := views.wait(t, 1)
	if len(v) != len(wantNetBox) || hostByName(v)["web-02"].Status != "active" {
		t.Fatalf("first view: %+v", v)
	}
	st := waitStats(t, p, "first view", func(st cmdb.Stats) bool { return st.Fetches >= 1 })
	if st.Hosts != len(wantNetBox) || st.Skipped != 1 || st.LastSuccess.IsZero() || st.ConsecutiveFailures != 0 ||
		!strings.Contains(st.LastWarning, "no primary IP") {
		t.Errorf("stats after the first view: %+v", st)
	}

	// Every kind of failure in turn: none of them may produce a view.
	failures := []struct {
		name    string
		handler http.HandlerFunc
		wantErr string
	}{
		{name: "500", handler: func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "boom", http.StatusInternalServerError)
		}, wantErr: "status 500"},
		{name: "garbage", handler: func(w http.ResponseWriter, r *http.Request) {
			_, _ = w.Write([]byte(`{"results": "nope"}`))
		}, wantErr: `field "results": expected a list, got string`},
		{name: "hang", handler: func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
		}, wantErr: "timed out after 200ms"},
		{name: "no usable host", handler: func(w http.ResponseWriter, r *http.Request) {
			_, _ = w.Write([]byte(`{"count": 1, "next": null, "results": [{"id": 1, "name": "x", "primary_ip4": null}]}`))
		}, wantErr: "no usable host"},
	}
	var sent int // views sent before the failures took hold
	var lastGood time.Time
	for i, fc := range failures {
		f.setOverride(fc.handler)
		before := p.Stats().Failures
		waitStats(t, p, fc.name, func(st cmdb.Stats) bool {
			return st.Failures >= before+2 && strings.Contains(st.LastError, fc.wantErr)
		})
		if i == 0 {
			// A fetch that began before the override may have sent one
			// more good view; from here on there must be none.
			sent = views.count()
			lastGood = p.Stats().LastSuccess
		}
	}
	if got := views.count(); got != sent {
		t.Fatalf("a failing CMDB produced %d views", got-sent)
	}
	st = p.Stats()
	if st.ConsecutiveFailures < 8 || st.LastSuccess != lastGood || st.Hosts != len(wantNetBox) {
		t.Errorf("stats while failing: %+v", st)
	}
	if n := logs.count("cmdb fetch failed"); n != 1 {
		t.Errorf("logged %d failures for one streak, want 1", n)
	}
	if logs.count(testToken) != 0 {
		t.Error("the log contains the token")
	}

	// Recovery, with web-02 now offline: the next view shows it.
	f.set(vmsAPI, jsonEdit(t, readTestdata(t, "netbox/vms_page1.json"), func(p map[string]any) {
		p["results"].([]any)[1].(map[string]any)["status"] = map[string]any{"value": "offline", "label": "Offline"}
	}))
	f.setOverride(nil)
	v = views.wait(t, sent+1)
	if got := hostByName(v)["web-02"].Status; got != "offline" {
		t.Errorf("after recovery web-02 is %q, want offline", got)
	}
	st = waitStats(t, p, "recovery", func(st cmdb.Stats) bool { return st.ConsecutiveFailures == 0 })
	if st.LastError != "" || !st.LastSuccess.After(lastGood) {
		t.Errorf("stats after recovery: %+v", st)
	}
	if n := logs.count("cmdb fetch recovered"); n != 1 {
		t.Errorf("logged recovery %d times", n)
	}

	// A second failure streak is logged again, once.
	f.setOverride(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "down", http.StatusBadGateway) })
	waitStats(t, p, "second streak", func(st cmdb.Stats) bool { return st.ConsecutiveFailures >= 3 })
	if n := logs.count("cmdb fetch failed"); n != 2 {
		t.Errorf("logged %d failures for two streaks, want 2", n)
	}
}

func TestPollerStatusChangeOnNextPoll(t *testing.T) {
	f := newFakeCMDB(t, "Authorization", "Bearer "+testToken)
	f.set("/hosts", []byte(`[{"ip": "10.0.0.1", "hostname": "a", "status": "active"}]`))
	g, err := cmdb.NewGeneric(genericConfig(f.url()+"/hosts"), nil)
	if err != nil {
		t.Fatal(err)
	}
	p := cmdb.NewPoller(g, 20*time.Millisecond, zerolog.Nop())
	views := runPoller(t, p)
	if v := views.wait(t, 1); len(v) != 1 || v[0].Status != "active" {
		t.Fatalf("first view %+v", v)
	}
	f.set("/hosts", []byte(`[{"ip": "10.0.0.1", "hostname": "a", "status": "Decommissioning"}]`))
	// A fetch in flight during the change may still send the old status;
	// the one after it must not.
	n := views.count()
	for i := n + 1; i <= n+2; i++ {
		if v := views.wait(t, i); len(v) == 1 && v[0].Status == "decommissioning" {
			return
		}
	}
	t.Fatal("the status change did not show on the next poll")
}

func TestPollerSendsEveryGoodView(t *testing.T) {
	f := newFakeCMDB(t, "Authorization", "Bearer "+testToken)
	f.set("/hosts", []byte(`[]`))
	g, err := cmdb.NewGeneric(genericConfig(f.url()+"/hosts"), nil)
	if err != nil {
		t.Fatal(err)
	}
	p := cmdb.NewPoller(g, 10*time.Millisecond, zerolog.Nop())
	views := runPoller(t, p)
	for i := 1; i <= 3; i++ {
		if v := views.wait(t, i); v == nil || len(v) != 0 {
			t.Fatalf("an empty CMDB must send an empty, non-nil view: %#v", v)
		}
	}
	if st := p.Stats(); st.Fetches < 3 || st.Failures != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestPollerBadSetup(t *testing.T) {
	tests := []struct {
		name     string
		interval time.Duration
		out      chan []cmdb.Host
	}{
		{name: "zero interval", interval: 0, out: make(chan []cmdb.Host)},
		{name: "nil channel", interval: time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g, err := cmdb.NewGeneric(genericConfig("http://127.0.0.1:1/"), nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := cmdb.NewPoller(g, tc.interval, zerolog.Nop()).Run(context.Background(), tc.out); err == nil {
				t.Error("want an error")
			}
		})
	}
}
