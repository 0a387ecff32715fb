package observability_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/observability"
)

// /ready says why: every condition with its state, as text and as JSON;
// only required conditions make it 503.
func TestReadySaysWhy(t *testing.T) {
	var rd observability.Readiness
	srv := httptest.NewServer(observability.NewAdminMux(observability.NewRegistry(), func() observability.Readiness { return rd }))
	defer srv.Close()
	get := func(query string) (int, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + "/ready" + query)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	rd = observability.NewReadiness(
		observability.Condition{Name: "listeners", Required: true, OK: true, Detail: "inbound 127.0.0.1:15006"},
		observability.Condition{Name: "consul_registration", Required: true, Detail: "not registered: connection refused"},
		observability.Condition{Name: "app", Detail: "TCP 127.0.0.1:8080: connection refused"},
	)
	code, body := get("")
	if code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "not ready: consul_registration\n") ||
		!strings.Contains(body, "listeners") || !strings.Contains(body, "not registered: connection refused") ||
		!strings.Contains(body, "app") || !strings.Contains(body, "FAILING (reported only)") {
		t.Errorf("text /ready = %d:\n%s", code, body)
	}

	code, body = get("?format=json")
	var got observability.Readiness
	if err := json.Unmarshal([]byte(body), &got); err != nil || code != http.StatusServiceUnavailable || got.Ready ||
		len(got.Conditions) != 3 || got.Conditions[1].Name != "consul_registration" || got.Conditions[1].OK ||
		!got.Conditions[1].Required || got.Conditions[2].Required {
		t.Errorf("JSON /ready = %d %v: %s", code, err, body)
	}

	// An app that does not answer is reported, and the role stays ready.
	rd.Conditions[1].OK = true
	rd = observability.NewReadiness(rd.Conditions...)
	if code, body = get(""); code != http.StatusOK || !strings.HasPrefix(body, "ready\n") || !strings.Contains(body, "8080: connection refused") {
		t.Errorf("/ready with only the app failing = %d:\n%s", code, body)
	}
}

// /config_dump speaks the config's language: snake_case keys, durations
// as written in YAML, secrets redacted.
func TestPlainSpeaksTheConfigLanguage(t *testing.T) {
	p := config.DefaultPolicy()
	p.CircuitBreaker.SleepWindow = 3 * time.Second
	p.RateLimit.FillInterval = 100 * time.Millisecond
	type status struct {
		LastNack   string
		XDSAddr    string
		ID         string
		LastUpdate time.Time
	}
	v := map[string]any{
		"policy": p,
		"status": status{LastNack: "bad", XDSAddr: "127.0.0.1:18000", ID: "x"},
		"consul": config.Consul{Addr: "127.0.0.1:8500", Token: "s3cret"},
	}
	rec := httptest.NewRecorder()
	observability.WriteJSON(rec, v)
	body := rec.Body.String()
	for _, want := range []string{`"sleep_window": "3s"`, `"fill_interval": "100ms"`, `"timeout": "15s"`,
		`"circuit_breaker": {`, `"last_nack": "bad"`, `"xds_addr": "127.0.0.1:18000"`, `"id": "x"`,
		`"last_update": "0001-01-01T00:00:00Z"`, `"token": "<redacted>"`, `"retry_on": [`} {
		if !strings.Contains(body, want) {
			t.Errorf("dump lacks %s:\n%s", want, body)
		}
	}
	for _, bad := range []string{"SleepWindow", "3000000000", "s3cret", "LastNack"} {
		if strings.Contains(body, bad) {
			t.Errorf("dump has %s:\n%s", bad, body)
		}
	}
	// Field order is the struct's (timeout before retries).
	if strings.Index(body, `"timeout"`) > strings.Index(body, `"retries"`) {
		t.Errorf("fields out of order:\n%s", body)
	}
}
