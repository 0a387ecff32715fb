package consul_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/controlplane/source/consul"
	"github.com/meshvm/mesh/meshtest"
)

var testConsul *meshtest.Consul

func TestMain(m *testing.M) { meshtest.RunWithConsul(m, &testConsul) }

// run is a running source and the views it sent.
type run struct {
	src   *consul.Source
	views chan model.View
	stop  func()
}

// start runs a source against addr until the test ends.
func start(t testing.TB, addr string, opts consul.Options) *run {
	t.Helper()
	if opts.Wait == 0 {
		opts.Wait = 5 * time.Second
	}
	if opts.MinBackoff == 0 {
		opts.MinBackoff, opts.MaxBackoff = 20*time.Millisecond, 200*time.Millisecond
	}
	src, err := consul.New(config.Consul{Addr: addr}, zerolog.New(zerolog.NewTestWriter(t)).Level(logLevel), opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &run{src: src, views: make(chan model.View, 1000)}
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, r.views) }()
	var once sync.Once
	r.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("source did not stop in 10s")
			}
		})
	}
	t.Cleanup(r.stop)
	return r
}

// byService indexes a view's instances by service.
func byService(v model.View) map[string][]model.Instance {
	m := map[string][]model.Instance{}
	for _, in := range v.Instances {
		m[in.Service] = append(m[in.Service], in)
	}
	return m
}

// await returns the first view (in at most timeout) that cond accepts.
func (r *run) await(t testing.TB, timeout time.Duration, cond func(map[string][]model.Instance) error) map[string][]model.Instance {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	err := fmt.Errorf("no view")
	for {
		select {
		case v := <-r.views:
			m := byService(v)
			if err = cond(m); err == nil {
				return m
			}
		case <-deadline.C:
			t.Fatalf("no view as expected in %s: %v", timeout, err)
			return nil
		}
	}
}

// quiet fails if a view arrives within d.
func (r *run) quiet(t testing.TB, d time.Duration, why string) {
	t.Helper()
	select {
	case v := <-r.views:
		t.Fatalf("%s: got a view (%d instances), want none", why, len(v.Instances))
	case <-time.After(d):
	}
}

func find(m map[string][]model.Instance, service, id string) *model.Instance {
	for i := range m[service] {
		if m[service][i].ID == id {
			return &m[service][i]
		}
	}
	return nil
}

func txn(t testing.TB, ops api.TxnOps) {
	t.Helper()
	for len(ops) > 0 {
		n := min(len(ops), 64) // Consul's limit per transaction
		ok, resp, _, err := testConsul.Client.Txn().Txn(ops[:n], nil)
		if err != nil {
			t.Fatalf("txn: %v", err)
		}
		if !ok {
			t.Fatalf("txn failed: %+v", resp.Errors[0])
		}
		ops = ops[n:]
	}
}

// catalog registers services x instances (one per node, nodes nodes,
// each instance with one passing check) with the transaction API, and
// removes the nodes when the test ends.
type catalog struct {
	prefix               string
	services, per, nodes int
}

func (c catalog) node(i int) string       { return fmt.Sprintf("%s-vm-%d", c.prefix, i) }
func (c catalog) service(s int) string    { return fmt.Sprintf("%s-svc-%05d", c.prefix, s) }
func (c catalog) id(s, i int) string      { return fmt.Sprintf("%s-%d", c.service(s), i) }
func (c catalog) checkID(s, i int) string { return "check-" + c.id(s, i) }

func (c catalog) check(s, i int, status string) api.HealthCheck {
	return api.HealthCheck{Node: c.node(i % c.nodes), CheckID: c.checkID(s, i), Name: "app", ServiceID: c.id(s, i), ServiceName: c.service(s), Status: status}
}

func (c catalog) register(t testing.TB) {
	t.Helper()
	var ops api.TxnOps
	for i := 0; i < c.nodes; i++ {
		ops = append(ops, &api.TxnOp{Node: &api.NodeTxnOp{Verb: api.NodeSet, Node: api.Node{Node: c.node(i), Address: "127.0.0.1"}}})
	}
	for s := 0; s < c.services; s++ {
		for i := 0; i < c.per; i++ {
			ops = append(ops,
				&api.TxnOp{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: c.node(i % c.nodes), Service: api.AgentService{
					ID: c.id(s, i), Service: c.service(s), Address: fmt.Sprintf("10.%d.%d.%d", s/250, s%250, i+1), Port: 15006,
					Meta: map[string]string{"app_port": "8080", "mesh_zone": fmt.Sprintf("z%d", i%2)},
				}}},
				&api.TxnOp{Check: &api.CheckTxnOp{Verb: api.CheckSet, Check: c.check(s, i, api.HealthPassing)}})
		}
	}
	txn(t, ops)
	t.Cleanup(func() {
		for i := 0; i < c.nodes; i++ {
			_, _ = testConsul.Client.Catalog().Deregister(&api.CatalogDeregistration{Node: c.node(i)}, nil)
		}
	})
}

func (c catalog) setCheck(t testing.TB, s, i int, status string) {
	t.Helper()
	txn(t, api.TxnOps{{Check: &api.CheckTxnOp{Verb: api.CheckSet, Check: c.check(s, i, status)}}})
}

// TestThousandServices: with 1,000 services (two instances each) in the
// catalog, the first view has them all; one check going critical reaches
// a view promptly; the source never holds more than Workers+3 connections
// to Consul and never sees an error (Consul answers 429 past its
// per-client connection limit).
func TestThousandServices(t *testing.T) {
	c := catalog{prefix: "k", services: 1000, per: 2, nodes: 10}
	c.register(t)
	rl := meshtest.StartRelay(t, testConsul.Addr)
	t0 := time.Now()
	r := start(t, rl.Addr(), consul.Options{})
	m := r.await(t, 60*time.Second, func(m map[string][]model.Instance) error {
		if n := len(m); n < c.services {
			return fmt.Errorf("%d services, want %d", n, c.services)
		}
		return nil
	})
	t.Logf("first view with %d services in %v", len(m), time.Since(t0).Round(time.Millisecond))
	for s := 0; s < c.services; s++ {
		if n := len(m[c.service(s)]); n != c.per {
			t.Fatalf("%s has %d instances, want %d", c.service(s), n, c.per)
		}
	}

	t0 = time.Now()
	c.setCheck(t, 617, 1, api.HealthCritical)
	m = r.await(t, 5*time.Second, func(m map[string][]model.Instance) error {
		if in := find(m, c.service(617), c.id(617, 1)); in == nil || in.Check != model.CheckCritical {
			return fmt.Errorf("%s: %+v, want critical", c.id(617, 1), in)
		}
		return nil
	})
	t.Logf("one check change reached the view in %v", time.Since(t0).Round(time.Millisecond))
	if len(m) != c.services {
		t.Fatalf("view after the change has %d services, want %d", len(m), c.services)
	}
	if in := find(m, c.service(617), c.id(617, 0)); in == nil || in.Check != model.CheckPassing {
		t.Fatalf("the other instance: %+v, want passing", in)
	}
	if p, limit := rl.PeakConns(), 8+3; p > limit {
		t.Errorf("%d connections to Consul at once, want at most %d", p, limit)
	} else {
		t.Logf("at most %d connections to Consul at once", p)
	}
	if st := r.src.Status(); st.Errors != 0 {
		t.Errorf("source errors: %d, last %q; want none", st.Errors, st.LastError)
	}
}

// TestChangesReachTheView: with the source running, each registry change
// a user makes reaches the next view - including those that change no
// check (found by the per-service index sweep) - and changes that matter
// to no instance send no view at all.
func TestChangesReachTheView(t *testing.T) {
	c := catalog{prefix: "ch", services: 6, per: 2, nodes: 2}
	c.register(t)
	// An instance without an address of its own (it takes its node's).
	txn(t, api.TxnOps{{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: c.node(0), Service: api.AgentService{ID: "noaddr-1", Service: "ch-noaddr", Port: 15006}}}})
	// An instance registered through the agent, as mesh agents do.
	agentReg := api.AgentServiceRegistration{ID: "ch-agent-1", Name: "ch-agent", Address: "127.0.0.71", Port: 15006, Tags: []string{"v1"},
		Check: &api.AgentServiceCheck{CheckID: "ttl-ch-agent-1", TTL: "10m", Status: api.HealthPassing}}
	if err := testConsul.Client.Agent().ServiceRegister(&agentReg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = testConsul.Client.Agent().ServiceDeregister("ch-agent-1") })

	r := start(t, testConsul.Addr, consul.Options{})
	r.await(t, 30*time.Second, func(m map[string][]model.Instance) error {
		if len(m[c.service(5)]) != 2 || len(m["ch-noaddr"]) != 1 || len(m["ch-agent"]) != 1 {
			return fmt.Errorf("catalog not all there yet")
		}
		return nil
	})
	service := func(s int, i int, edit func(*api.AgentService)) api.TxnOps {
		svc := api.AgentService{ID: c.id(s, i), Service: c.service(s), Address: fmt.Sprintf("10.%d.%d.%d", s/250, s%250, i+1), Port: 15006,
			Meta: map[string]string{"app_port": "8080", "mesh_zone": fmt.Sprintf("z%d", i%2)}}
		edit(&svc)
		return api.TxnOps{{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: c.node(i % c.nodes), Service: svc}}}
	}
	instance := func(service, id string, check func(*model.Instance) error) func(map[string][]model.Instance) error {
		return func(m map[string][]model.Instance) error {
			in := find(m, service, id)
			if in == nil {
				return fmt.Errorf("%s/%s missing", service, id)
			}
			return check(in)
		}
	}

	for _, tc := range []struct {
		name string
		do   func(t *testing.T)
		// want accepts the view the change must produce; nil: no view.
		want func(map[string][]model.Instance) error
	}{
		{
			name: "instance with a check added to an existing service",
			do: func(t *testing.T) {
				ops := service(0, 2, func(*api.AgentService) {})
				ops = append(ops, &api.TxnOp{Check: &api.CheckTxnOp{Verb: api.CheckSet, Check: c.check(0, 2, api.HealthWarning)}})
				txn(t, ops)
			},
			want: instance(c.service(0), c.id(0, 2), func(in *model.Instance) error {
				if in.Check != model.CheckWarning {
					return fmt.Errorf("check %s, want warning", in.Check)
				}
				return nil
			}),
		},
		{
			name: "instance without a check added to an existing service",
			do:   func(t *testing.T) { txn(t, service(1, 3, func(*api.AgentService) {})) },
			want: instance(c.service(1), c.id(1, 3), func(in *model.Instance) error { return nil }),
		},
		{
			name: "port changed, checks untouched",
			do:   func(t *testing.T) { txn(t, service(2, 0, func(s *api.AgentService) { s.Port = 16000 })) },
			want: instance(c.service(2), c.id(2, 0), func(in *model.Instance) error {
				if in.Port != 16000 {
					return fmt.Errorf("port %d, want 16000", in.Port)
				}
				return nil
			}),
		},
		{
			name: "tag added to one instance",
			do:   func(t *testing.T) { txn(t, service(3, 1, func(s *api.AgentService) { s.Tags = []string{"canary"} })) },
			want: instance(c.service(3), c.id(3, 1), func(in *model.Instance) error {
				if len(in.Tags) != 1 || in.Tags[0] != "canary" {
					return fmt.Errorf("tags %v, want [canary]", in.Tags)
				}
				return nil
			}),
		},
		{
			name: "tag changed through the agent",
			do: func(t *testing.T) {
				reg := agentReg
				reg.Tags = []string{"v2"}
				if err := testConsul.Client.Agent().ServiceRegister(&reg); err != nil {
					t.Fatal(err)
				}
			},
			want: instance("ch-agent", "ch-agent-1", func(in *model.Instance) error {
				if len(in.Tags) != 1 || in.Tags[0] != "v2" {
					return fmt.Errorf("tags %v, want [v2]", in.Tags)
				}
				return nil
			}),
		},
		{
			name: "check critical through the agent",
			do: func(t *testing.T) {
				if err := testConsul.Client.Agent().UpdateTTL("ttl-ch-agent-1", "down", api.HealthCritical); err != nil {
					t.Fatal(err)
				}
			},
			want: instance("ch-agent", "ch-agent-1", func(in *model.Instance) error {
				if in.Check != model.CheckCritical {
					return fmt.Errorf("check %s, want critical", in.Check)
				}
				return nil
			}),
		},
		{
			name: "check output changed, status the same",
			do: func(t *testing.T) {
				if err := testConsul.Client.Agent().UpdateTTL("ttl-ch-agent-1", "still down", api.HealthCritical); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "check passing again through the agent",
			do: func(t *testing.T) {
				if err := testConsul.Client.Agent().UpdateTTL("ttl-ch-agent-1", "up", api.HealthPassing); err != nil {
					t.Fatal(err)
				}
			},
			want: instance("ch-agent", "ch-agent-1", func(in *model.Instance) error {
				if in.Check != model.CheckPassing {
					return fmt.Errorf("check %s, want passing", in.Check)
				}
				return nil
			}),
		},
		{
			name: "passing check output changed",
			do: func(t *testing.T) {
				chk := c.check(2, 0, api.HealthPassing)
				chk.Output = "still fine"
				txn(t, api.TxnOps{{Check: &api.CheckTxnOp{Verb: api.CheckSet, Check: chk}}})
			},
		},
		{
			name: "identical re-registration",
			do:   func(t *testing.T) { txn(t, service(4, 0, func(*api.AgentService) {})) },
		},
		{
			name: "instance deregistered",
			do: func(t *testing.T) {
				if _, err := testConsul.Client.Catalog().Deregister(&api.CatalogDeregistration{Node: c.node(1), ServiceID: c.id(4, 1)}, nil); err != nil {
					t.Fatal(err)
				}
			},
			want: func(m map[string][]model.Instance) error {
				if find(m, c.service(4), c.id(4, 1)) != nil || len(m[c.service(4)]) != 1 {
					return fmt.Errorf("%s: %+v, want only %s", c.service(4), m[c.service(4)], c.id(4, 0))
				}
				return nil
			},
		},
		{
			name: "service deregistered",
			do: func(t *testing.T) {
				for i := 0; i < 2; i++ {
					if _, err := testConsul.Client.Catalog().Deregister(&api.CatalogDeregistration{Node: c.node(i), ServiceID: c.id(5, i)}, nil); err != nil {
						t.Fatal(err)
					}
				}
			},
			want: func(m map[string][]model.Instance) error {
				if n := len(m[c.service(5)]); n != 0 {
					return fmt.Errorf("%s still has %d instances", c.service(5), n)
				}
				if len(m[c.service(4)]) != 1 {
					return fmt.Errorf("other services lost: %v", m[c.service(4)])
				}
				return nil
			},
		},
		{
			name: "node check critical",
			do: func(t *testing.T) {
				txn(t, api.TxnOps{{Check: &api.CheckTxnOp{Verb: api.CheckSet, Check: api.HealthCheck{Node: c.node(1), CheckID: "node-health", Name: "node", Status: api.HealthCritical}}}})
			},
			want: func(m map[string][]model.Instance) error {
				for _, s := range []int{0, 3} {
					if in := find(m, c.service(s), c.id(s, 1)); in == nil || in.Check != model.CheckCritical {
						return fmt.Errorf("%s on the node: %+v, want critical", c.id(s, 1), in)
					}
					if in := find(m, c.service(s), c.id(s, 0)); in == nil || in.Check != model.CheckPassing {
						return fmt.Errorf("%s on the other node: %+v, want passing", c.id(s, 0), in)
					}
				}
				return nil
			},
		},
		{
			name: "node readdressed",
			do: func(t *testing.T) {
				txn(t, api.TxnOps{{Node: &api.NodeTxnOp{Verb: api.NodeSet, Node: api.Node{Node: c.node(0), Address: "127.0.0.72"}}}})
			},
			want: instance("ch-noaddr", "noaddr-1", func(in *model.Instance) error {
				if in.Address != "127.0.0.72" {
					return fmt.Errorf("address %s, want the node's new 127.0.0.72", in.Address)
				}
				return nil
			}),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t0 := time.Now()
			tc.do(t)
			if tc.want == nil {
				r.quiet(t, time.Second, "a change no instance shows")
				return
			}
			r.await(t, 5*time.Second, tc.want)
			t.Logf("in the view after %v", time.Since(t0).Round(time.Millisecond))
		})
	}
	if st := r.src.Status(); st.Errors != 0 {
		t.Errorf("source errors: %d, last %q", st.Errors, st.LastError)
	}
}

// TestOutageKeepsTheLastView: with Consul unreachable the source reports
// errors and sends nothing (above all no empty view); when Consul is back
// the changes made meanwhile arrive; stopped, it leaves no goroutine.
func TestOutageKeepsTheLastView(t *testing.T) {
	c := catalog{prefix: "out", services: 3, per: 2, nodes: 2}
	c.register(t)
	rl := meshtest.StartRelay(t, testConsul.Addr)
	before := goleak.IgnoreCurrent()
	r := start(t, rl.Addr(), consul.Options{})
	r.await(t, 30*time.Second, func(m map[string][]model.Instance) error {
		for s := 0; s < c.services; s++ {
			if len(m[c.service(s)]) != c.per {
				return fmt.Errorf("%s: %d instances", c.service(s), len(m[c.service(s)]))
			}
		}
		return nil
	})

	rl.Down()
	meshtest.Eventually(t, 5*time.Second, func() error {
		if st := r.src.Status(); st.Errors == 0 {
			return fmt.Errorf("no error reported yet")
		}
		return nil
	})
	// Changes while Consul is unreachable: a check, a new instance, a
	// removed service.
	c.setCheck(t, 0, 1, api.HealthCritical)
	txn(t, api.TxnOps{
		{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: c.node(0), Service: api.AgentService{ID: "out-new", Service: c.service(1), Address: "10.9.9.9", Port: 15006}}},
		{Check: &api.CheckTxnOp{Verb: api.CheckSet, Check: api.HealthCheck{Node: c.node(0), CheckID: "check-out-new", Name: "app", ServiceID: "out-new", Status: api.HealthPassing}}},
	})
	for i := 0; i < c.per; i++ {
		if _, err := testConsul.Client.Catalog().Deregister(&api.CatalogDeregistration{Node: c.node(i), ServiceID: c.id(2, i)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	r.quiet(t, 1500*time.Millisecond, "Consul unreachable")
	if st := r.src.Status(); st.LastError == "" {
		t.Errorf("status has no last error while Consul is unreachable: %+v", st)
	}

	rl.Up(t)
	r.await(t, 10*time.Second, func(m map[string][]model.Instance) error {
		if in := find(m, c.service(0), c.id(0, 1)); in == nil || in.Check != model.CheckCritical {
			return fmt.Errorf("%s: %+v, want critical", c.id(0, 1), in)
		}
		if find(m, c.service(1), "out-new") == nil {
			return fmt.Errorf("out-new missing")
		}
		if n := len(m[c.service(2)]); n != 0 {
			return fmt.Errorf("%s has %d instances, want none", c.service(2), n)
		}
		return nil
	})
	if st := r.src.Status(); st.LastError != "" {
		t.Errorf("status still reports %q after recovery", st.LastError)
	}
	r.stop()
	rl.Down()
	goleak.VerifyNone(t, before)
}

var logLevel = func() zerolog.Level {
	if os.Getenv("MESH_TEST_DEBUG") != "" {
		return zerolog.DebugLevel
	}
	return zerolog.InfoLevel
}()
