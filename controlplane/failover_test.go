package controlplane_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/wire"
	"github.com/meshvm/mesh/xdsclient"
)

// TestFailoverBetweenReplicasWithoutResync: an agent's delta ADS client
// (xdsclient, Delta) with two replicas of mesh control in its list, over
// one real Consul, synced from the first; the first stops; the client
// moves to the second, which sends it nothing (it holds the versions the
// second serves: no full resync), counted at the client and at the
// server; a change afterwards arrives from the second as that one
// resource.
func TestFailoverBetweenReplicasWithoutResync(t *testing.T) {
	replicaCatalog(t, "fo", 6)
	caDir := t.TempDir() + "/ca"
	shareCA := func(c *config.Config) { c.Control.CA.Dir = caDir }
	p1 := startPlane(t, "", shareCA)
	p2 := startPlane(t, "", shareCA)
	waitServices(t, p1, "fo", 6)
	waitServices(t, p2, "fo", 6)

	var mu sync.Mutex
	var held xdsclient.Resources
	received := map[string]int{} // resources updated per type since reset
	connected := ""
	services := []string{"fo-00", "fo-01", "fo-02"}
	routes := make([]string, len(services))
	for i, s := range services {
		routes[i] = wire.ServiceRoute(s)
	}
	c, err := xdsclient.New(xdsclient.Options{
		Servers:   []string{p1.xdsAddr, p2.xdsAddr},
		Node:      agentNode("vm-failover", "fo-05", 8080),
		Delta:     true,
		Listeners: wire.AgentListeners(),
		Clusters:  services,
		Routes:    routes,
		Apply: func(r xdsclient.Resources) error {
			mu.Lock()
			held = r
			mu.Unlock()
			return nil
		},
		OnResources: func(typeURL string, updated, _ int) {
			mu.Lock()
			received[typeURL] += updated
			mu.Unlock()
		},
		OnConnection: func(server string, up bool) {
			mu.Lock()
			if up {
				connected = server
			} else if connected == server {
				connected = ""
			}
			mu.Unlock()
		},
		BackoffBase: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()

	meshtest.Eventually(t, 15*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if connected != p1.xdsAddr {
			return fmt.Errorf("connected to %q, want %s", connected, p1.xdsAddr)
		}
		for _, s := range services {
			if held.Clusters[s] == nil || held.Endpoints[s] == nil {
				return fmt.Errorf("does not hold %s yet", s)
			}
		}
		if len(held.Listeners) == 0 {
			return errors.New("no listeners yet")
		}
		return nil
	})
	time.Sleep(500 * time.Millisecond) // the sync is complete: nothing more comes
	mu.Lock()
	if len(held.Clusters) > len(services)+1 {
		t.Errorf("holds %d clusters, subscribed to %d (+ local_app)", len(held.Clusters), len(services))
	}
	for k := range received {
		delete(received, k)
	}
	mu.Unlock()
	sentBefore := resourcesSent(t, p2.adminAddr)

	p1.stop()
	meshtest.Eventually(t, 15*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if connected != p2.xdsAddr {
			return fmt.Errorf("connected to %q, want %s", connected, p2.xdsAddr)
		}
		return nil
	})
	time.Sleep(time.Second) // what a resync would send has arrived by now
	mu.Lock()
	got := fmt.Sprint(received)
	n := 0
	for _, v := range received {
		n += v
	}
	mu.Unlock()
	if n != 0 {
		t.Errorf("after failing over the client received %s resources, want none (no resync)", got)
	}
	if sent := resourcesSent(t, p2.adminAddr) - sentBefore; sent != 0 {
		t.Errorf("the second replica sent %v resources after the failover, want 0", sent)
	}

	// A change now comes from the second replica, as that one resource.
	setCheck(t, "fo-01-0", "critical")
	waitHealth(t, p2, "fo-01", "fo-01-0", model.Unhealthy)
	meshtest.Eventually(t, 10*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if received[resourcev3.EndpointType] != 1 {
			return fmt.Errorf("received %v after the change, want 1 load assignment", received)
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	if received[resourcev3.ClusterType]+received[resourcev3.ListenerType]+received[resourcev3.RouteType] != 0 {
		t.Errorf("a health change sent %v, want one load assignment only", received)
	}
}

// resourcesSent sums mesh_xds_resources_sent_total over types.
func resourcesSent(t *testing.T, admin string) float64 {
	t.Helper()
	sum := 0.0
	for _, line := range strings.Split(metricsText(t, admin), "\n") {
		if strings.HasPrefix(line, "mesh_xds_resources_sent_total{") {
			var v float64
			if _, err := fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v); err == nil {
				sum += v
			}
		}
	}
	return sum
}
