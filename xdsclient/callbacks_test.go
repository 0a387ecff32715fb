package xdsclient_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/xdsclient"
)

// events records the client's callbacks, as the agent's metrics see them.
type events struct {
	mu        sync.Mutex
	conns     []string
	responses map[string][2]int // type URL -> accepted, rejected
}

func (e *events) connection(server string, up bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.conns = append(e.conns, fmt.Sprintf("%s=%v", server, up))
}

func (e *events) response(typeURL string, accepted bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := e.responses[typeURL]
	if accepted {
		n[0]++
	} else {
		n[1]++
	}
	e.responses[typeURL] = n
}

func (e *events) snapshot() ([]string, map[string][2]int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[string][2]int{}
	for k, v := range e.responses {
		out[k] = v
	}
	return append([]string(nil), e.conns...), out
}

// TestCallbacksReportConnectionAndResponses: the client says when its
// stream connects and ends, and how each response went (ACK or NACK, by
// type), once per event.
func TestCallbacksReportConnectionAndResponses(t *testing.T) {
	cp := startControlPlane(t)
	_ = cp.cache.SetSnapshot(context.Background(), "node-1", snapshot(t, "v1", "127.0.0.2:15006"))
	ev := &events{responses: map[string][2]int{}}
	rec := &recorder{}
	c, err := xdsclient.New(xdsclient.Options{
		Servers: []string{cp.addr}, Node: &corev3.Node{Id: "node-1"}, Apply: rec.apply,
		BackoffBase: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
		Log:          zerolog.New(zerolog.NewTestWriter(t)),
		OnConnection: ev.connection, OnResponse: ev.response,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	meshtest.Eventually(t, 5*time.Second, rec.complete)

	rec.mu.Lock()
	rec.reject = func(r xdsclient.Resources) error {
		if len(r.Endpoints["orders"].GetEndpoints()[0].GetLbEndpoints()) > 1 {
			return errors.New("endpoint not usable")
		}
		return nil
	}
	rec.mu.Unlock()
	_ = cp.cache.SetSnapshot(context.Background(), "node-1", snapshot(t, "v2", "127.0.0.2:15006", "127.0.0.9:1"))
	meshtest.Eventually(t, 5*time.Second, func() error {
		if _, r := ev.snapshot(); r[resource.EndpointType][1] == 0 {
			return fmt.Errorf("no NACK reported yet: %v", r)
		}
		return nil
	})
	cancel()
	<-done

	conns, resp := ev.snapshot()
	if want := []string{cp.addr + "=true", cp.addr + "=false"}; fmt.Sprint(conns) != fmt.Sprint(want) {
		t.Errorf("connection events %v, want %v", conns, want)
	}
	// v1 of every type, then v2 accepted but for the endpoints.
	for typ, want := range map[string]int{resource.ClusterType: 2, resource.EndpointType: 1, resource.ListenerType: 2, resource.RouteType: 2} {
		if resp[typ][0] != want {
			t.Errorf("%s: %d ACKs reported, want %d", typ, resp[typ][0], want)
		}
	}
	s := c.State()
	var acks, nacks int
	for _, v := range resp {
		acks += v[0]
		nacks += v[1]
	}
	if uint64(acks) != s.Acks || uint64(nacks) != s.Nacks || nacks == 0 {
		t.Errorf("callbacks reported %d ACKs and %d NACKs, the client counted %d and %d", acks, nacks, s.Acks, s.Nacks)
	}
}
