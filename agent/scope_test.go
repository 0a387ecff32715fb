package agent_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/meshtest"
)

// heldServices are the services an agent's table holds (its /config_dump),
// sorted.
func heldServices(t *testing.T, ra *runningAgent) []string {
	t.Helper()
	var out []string
	for s := range configDump(t, ra).Services {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

func callVia(t *testing.T, ra *runningAgent, host string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+ra.Addr("outbound")+"/", nil)
	req.Host = host
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("call %s: %v", host, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header.Get("x-mesh-reason")
}

// TestAgentHoldsOnlyWhatItUses: in a 1,000-service mesh an agent that
// declares an upstream and a dependency holds exactly those two services;
// a call to a third one fetches it on demand and succeeds; services it
// never calls never reach it; a name that does not exist answers 503
// no-route after the bound; an endpoint change of a service goes to the
// agents subscribed to it and not to the others.
func TestAgentHoldsOnlyWhatItUses(t *testing.T) {
	api, err := consulapi.NewClient(&consulapi.Config{Address: consul.Addr})
	if err != nil {
		t.Fatal(err)
	}
	const bulk = 1000
	for i := range bulk {
		name := fmt.Sprintf("scbulk-%04d", i)
		if err := api.Agent().ServiceRegister(&consulapi.AgentServiceRegistration{ID: name, Name: name, Address: "127.0.0.250", Port: 20000 + i}); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for i := range bulk {
			_ = api.Agent().ServiceDeregister(fmt.Sprintf("scbulk-%04d", i))
		}
	})
	cp := newControl(t, controlOptions{})
	for _, s := range []struct{ ip, name string }{{"127.0.0.151", "scorders"}, {"127.0.0.152", "scpay"}, {"127.0.0.153", "scledger"}} {
		startAgent(t, s.ip, s.name, startApp(t, s.ip, s.name, nil), nil)
	}
	upstream := "127.0.0.150:" + strconv.Itoa(meshtest.FreePort("127.0.0.150"))
	web := startAgent(t, "127.0.0.150", "scweb", startApp(t, "127.0.0.150", "scweb", nil), func(c *config.Config) {
		c.Agent.ControlPlane = []string{cp.xdsAddr}
		c.Agent.Upstreams = []config.Upstream{{Service: "scorders", Listen: upstream}}
		c.Agent.Dependencies = []string{"scpay"}
		c.Agent.OnDemand.Timeout = 3 * time.Second
	})
	// A second caller that declares only scledger: it must not hear of
	// scpay's changes.
	other := startAgent(t, "127.0.0.154", "scother", startApp(t, "127.0.0.154", "scother", nil), func(c *config.Config) {
		c.Agent.ControlPlane = []string{cp.xdsAddr}
		c.Agent.Dependencies = []string{"scledger"}
	})

	meshtest.Eventually(t, 60*time.Second, func() error {
		d := configDump(t, web)
		if got := heldServices(t, web); fmt.Sprint(got) != "[scorders scpay]" || len(d.Services["scorders"]) != 1 || len(d.Services["scpay"]) != 1 {
			return fmt.Errorf("web holds %v (%d, %d endpoints), want exactly [scorders scpay] with one endpoint each", got, len(d.Services["scorders"]), len(d.Services["scpay"]))
		}
		return nil
	})
	meshtest.Eventually(t, 60*time.Second, func() error {
		if got := heldServices(t, other); fmt.Sprint(got) != "[scledger]" {
			return fmt.Errorf("other holds %v, want [scledger]", got)
		}
		return nil
	})
	// What the control plane says the agent was sent: the clusters it
	// subscribed to, not the mesh's 1,000.
	var dump struct {
		XDSSubscriptions map[string][]string `json:"xds_subscriptions"`
	}
	resp, err := http.Get("http://" + web.Addr("admin") + "/config_dump")
	if err != nil {
		t.Fatal(err)
	}
	_ = json.NewDecoder(resp.Body).Decode(&dump)
	resp.Body.Close()
	if got := fmt.Sprint(dump.XDSSubscriptions["clusters"]); got != "[local_app scorders scpay]" {
		t.Errorf("web subscribes to clusters %s, want [local_app scorders scpay]", got)
	}

	// On demand: a third service, met for the first time on the request
	// path (once Consul says its instance is healthy).
	// The first call fetches scledger within the bound (anything but
	// no-route); mesh control may not have seen its check pass yet
	// (no-healthy-endpoint), so calls then succeed once it has.
	waitPassing(t, "scledger", 1)
	if code, reason := callVia(t, web, "scledger"); reason == "no-route" {
		t.Fatalf("on-demand call to scledger: %d %s: its resources did not arrive within the bound", code, reason)
	}
	meshtest.Eventually(t, 10*time.Second, func() error {
		if code, reason := callVia(t, web, "scledger"); code != http.StatusOK {
			return fmt.Errorf("call to scledger: %d %s, want 200", code, reason)
		}
		return nil
	})
	if got := heldServices(t, web); fmt.Sprint(got) != "[scledger scorders scpay]" {
		t.Errorf("after the on-demand call web holds %v", got)
	}
	// A name that does not exist: no-route after the bound, and again at
	// once (remembered).
	for range 2 {
		if code, reason := callVia(t, web, "scnowhere"); code != http.StatusServiceUnavailable || reason != "no-route" {
			t.Fatalf("call to a service that does not exist: %d %s, want 503 no-route", code, reason)
		}
	}

	// One endpoint change of scpay: the load assignments the server sends
	// all go to web (subscribed to scpay), one resource per change, and
	// none to other.
	sent := func() float64 {
		return metricValue(t, cp.adminAddr, "mesh_xds_resources_sent_total", "type", "endpoint")
	}
	received := func(ra *runningAgent) float64 {
		return metricValue(t, ra.Addr("admin"), "mesh_xds_client_resources_received_total", "change", "updated", "type", "endpoint")
	}
	acks := func(ra *runningAgent) float64 {
		return metricValue(t, ra.Addr("admin"), "mesh_xds_client_acks_total", "type", "endpoint")
	}
	time.Sleep(2 * time.Second) // let the bulk registrations settle
	s0, w0, wa0, o0 := sent(), received(web), acks(web), received(other)
	startAgent(t, "127.0.0.155", "scpay", startApp(t, "127.0.0.155", "scpay-2", nil), nil)
	waitEndpoints(t, web, "scpay", 2)
	time.Sleep(time.Second)
	s1, w1, wa1, o1 := sent(), received(web), acks(web), received(other)
	if s1-s0 < 1 || s1-s0 != w1-w0 || w1-w0 != wa1-wa0 {
		t.Errorf("scpay's change: server sent %v load assignments, web received %v in %v responses; want the same, one per response", s1-s0, w1-w0, wa1-wa0)
	}
	if o1 != o0 {
		t.Errorf("other received %v load assignments on scpay's change, want none", o1-o0)
	}
	// Never called, never held.
	for _, s := range heldServices(t, web) {
		if len(s) > 6 && s[:6] == "scbulk" {
			t.Errorf("web holds %s, which it never called", s)
		}
	}
}
