package agent_test

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/observability"
)

// logBuffer collects an agent's JSON log lines (and passes them to t).
type logBuffer struct {
	t  *testing.T
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.t.Log(strings.TrimSpace(string(p)))
	return l.b.Write(p)
}

// count is how many lines carry msg (as their message field).
func (l *logBuffer) count(msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range strings.Split(l.b.String(), "\n") {
		var f struct{ Message string }
		if json.Unmarshal([]byte(line), &f) == nil && f.Message == msg {
			n++
		}
	}
	return n
}

func (l *logBuffer) contains(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Contains(l.b.String(), s)
}

// waitAdmin waits until ra's admin listener is bound.
func waitAdmin(t *testing.T, ra *runningAgent) {
	t.Helper()
	meshtest.Eventually(t, 15*time.Second, func() error {
		if ra.Addr("admin") == "" {
			return &readyErr{"admin listener not bound yet"}
		}
		return nil
	})
}

func readiness(t *testing.T, admin string) (int, observability.Readiness, string) {
	t.Helper()
	resp, body := get(t, "http://"+admin+"/ready?format=json", "")
	var rd observability.Readiness
	if err := json.Unmarshal([]byte(body), &rd); err != nil {
		t.Fatalf("/ready?format=json: %v: %s", err, body)
	}
	_, text := get(t, "http://"+admin+"/ready", "")
	return resp.StatusCode, rd, text
}

func condition(rd observability.Readiness, name string) observability.Condition {
	for _, c := range rd.Conditions {
		if c.Name == name {
			return c
		}
	}
	return observability.Condition{Name: name, Detail: "missing"}
}

const (
	msgAppDown  = "app not reachable; /ready reports it but stays ready: consul's health check keeps callers away"
	msgAppBack  = "app reachable again"
	msgLastGood = "consul query failing, keeping the last good answer"
)

// An agent whose app does not listen is ready for traffic (its outbound
// side works; Consul's check keeps callers away), but /ready reports the
// app check failing, and the log says so once, then once again when the
// app comes up.
func TestReadyReportsAnUnreachableApp(t *testing.T) {
	const ip = "127.0.0.91"
	appPort := meshtest.FreePort(ip)
	logs := &logBuffer{t: t}
	ra := launchAgent(t, ip, "late", appPort, func(c *config.Config) {
		c.Agent.AppHealth = ""               // TCP check
		c.Agent.HealthInterval = time.Second // the floor: Consul checks no more often
	}, zerolog.New(logs))
	waitAdmin(t, ra)
	meshtest.Eventually(t, 15*time.Second, func() error {
		if code, rd, text := readiness(t, ra.Addr("admin")); code != http.StatusOK || !rd.Ready {
			return &readyErr{text}
		}
		return nil
	})
	code, rd, text := readiness(t, ra.Addr("admin"))
	app := condition(rd, "app")
	if code != http.StatusOK || app.OK || app.Required || !strings.Contains(app.Detail, "connection refused") {
		t.Errorf("/ready with the app down = %d, app %+v:\n%s", code, app, text)
	}
	for _, name := range []string{"listeners", "consul_registration", "control_plane"} {
		if c := condition(rd, name); !c.OK || c.Detail == "" {
			t.Errorf("condition %s = %+v", name, c)
		}
	}
	if !strings.HasPrefix(text, "ready\n") || !strings.Contains(text, "app") || !strings.Contains(text, "FAILING") ||
		!strings.Contains(text, "consul_registration") {
		t.Errorf("text /ready:\n%s", text)
	}
	time.Sleep(3 * time.Second) // three more failed checks
	if n := logs.count(msgAppDown); n != 1 {
		t.Errorf("%q logged %d times over 3+ failed checks, want once", msgAppDown, n)
	}

	ln, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(appPort)))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	meshtest.Eventually(t, 10*time.Second, func() error {
		if _, rd, text := readiness(t, ra.Addr("admin")); !condition(rd, "app").OK {
			return &readyErr{text}
		}
		return nil
	})
	time.Sleep(600 * time.Millisecond)
	if n, m := logs.count(msgAppBack), logs.count(msgAppDown); n != 1 || m != 1 {
		t.Errorf("after the app came up: %q logged %d times, %q %d times; want once each", msgAppBack, n, msgAppDown, m)
	}
}

type readyErr struct{ text string }

func (e *readyErr) Error() string { return "/ready:\n" + e.text }

// With Consul unreachable from the start, /ready says why it is not
// ready; discovery does not claim a last good answer it never had, and
// shutdown does not try to deregister what was never registered.
func TestReadyWithoutConsul(t *testing.T) {
	const ip = "127.0.0.92"
	b := startApp(t, ip, "lonely", nil)
	logs := &logBuffer{t: t}
	deadConsul := net.JoinHostPort(ip, strconv.Itoa(meshtest.FreePort(ip)))
	ra := launchAgent(t, ip, "lonely", b.port, func(c *config.Config) {
		c.Consul.Addr = deadConsul
	}, zerolog.New(logs))
	waitAdmin(t, ra)
	meshtest.Eventually(t, 15*time.Second, func() error {
		_, rd, text := readiness(t, ra.Addr("admin"))
		if c := condition(rd, "consul_registration"); !strings.Contains(c.Detail, "connection refused") {
			return &readyErr{text}
		}
		return nil
	})
	code, rd, text := readiness(t, ra.Addr("admin"))
	if code != http.StatusServiceUnavailable || rd.Ready || !strings.HasPrefix(text, "not ready: consul_registration\n") {
		t.Errorf("/ready without consul = %d:\n%s", code, text)
	}
	if c := condition(rd, "listeners"); !c.OK {
		t.Errorf("listeners = %+v", c)
	}
	meshtest.Eventually(t, 10*time.Second, func() error {
		if !logs.contains("consul query failing before its first answer") {
			return &readyErr{"discovery has not logged its failure yet"}
		}
		return nil
	})
	ra.stop(t)
	if logs.count(msgLastGood) != 0 {
		t.Errorf("discovery logged %q without ever having an answer", msgLastGood)
	}
	if !logs.contains("never registered in consul; nothing to deregister") || logs.contains("deregister failed") ||
		logs.contains("deregistered from consul") {
		t.Errorf("shutdown tried to deregister what was never registered")
	}
}
