package controlplane_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/meshvm/mesh/meshtest"
)

// TestNodeGRPCXDSClient: the Node.js gRPC xDS client (@grpc/grpc-js-xds,
// pinned in testdata/nodexds, installed by npm into a cache outside the
// repository) resolves xds:///nodegreeter through mesh control over
// state of the world, calls the instance registered in Consul, balances
// over a second one when it is added, and follows the first one's
// removal. Node and npm missing fail the test.
func TestNodeGRPCXDSClient(t *testing.T) {
	dir, err := filepath.Abs(filepath.Join("testdata", "nodexds"))
	if err != nil {
		t.Fatal(err)
	}
	modules := meshtest.NodeModules(t, dir)

	a, b := meshtest.LoopbackHost(26), meshtest.LoopbackHost(27)
	portA := whoServer(t, a, "a")
	portB := whoServer(t, b, "b")
	register(t, consulapi.AgentServiceRegistration{ID: "nodegreeter-a", Name: "nodegreeter", Address: a, Port: portA,
		Meta: map[string]string{"mesh_zone": "z1", "mesh_region": "r1"}}, "passing")

	p := startPlane(t, "", nil)
	bootstrap := filepath.Join(t.TempDir(), "bootstrap.json")
	if err := os.WriteFile(bootstrap, fmt.Appendf(nil, `{
		"xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
		"node": {"id": "node-grpc-client-1", "locality": {"region": "r1", "zone": "z1"}}
	}`, p.xdsAddr), 0o644); err != nil {
		t.Fatal(err)
	}
	c := startNodeClient(t, filepath.Join(dir, "client.js"), modules, bootstrap, "xds:///nodegreeter")

	// The first calls wait for the xDS client's resources.
	meshtest.Eventually(t, 30*time.Second, func() error {
		r := c.calls(t, 1)
		if r.OK != 1 || r.Who["a"] != 1 {
			return fmt.Errorf("first call: %+v", r)
		}
		return nil
	})
	if r := c.calls(t, 20); r.OK != 20 || r.Who["a"] != 20 {
		t.Fatalf("20 calls with only a registered: %+v", r)
	}
	// b joins in the same locality: calls are balanced over both.
	register(t, consulapi.AgentServiceRegistration{ID: "nodegreeter-b", Name: "nodegreeter", Address: b, Port: portB,
		Meta: map[string]string{"mesh_zone": "z1", "mesh_region": "r1"}}, "passing")
	meshtest.Eventually(t, 15*time.Second, func() error {
		r := c.calls(t, 40)
		if r.OK != 40 {
			return fmt.Errorf("40 calls with a and b registered: %+v", r)
		}
		// Round robin over two endpoints: about 20 each; allow for the
		// update landing mid-batch.
		if r.Who["a"] < 10 || r.Who["b"] < 10 {
			return fmt.Errorf("not balanced over a and b: %+v", r)
		}
		return nil
	})

	// a leaves: every call lands on b.
	deregister(t, "nodegreeter-a")
	meshtest.Eventually(t, 15*time.Second, func() error {
		if r := c.calls(t, 10); r.OK != 10 || r.Who["b"] != 10 {
			return fmt.Errorf("10 calls after a was removed: %+v", r)
		}
		return nil
	})
	if r := c.calls(t, 20); r.OK != 20 || r.Who["b"] != 20 {
		t.Fatalf("20 calls after a was removed: %+v", r)
	}
}

// whoServer is a real gRPC server (the standard health service) on host
// that sets the response header `who: name` on every call.
func whoServer(t *testing.T, host, name string) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		_ = grpc.SetHeader(ctx, metadata.Pairs("who", name))
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(g, health.NewServer())
	go func() { _ = g.Serve(l) }()
	t.Cleanup(g.Stop)
	return l.Addr().(*net.TCPAddr).Port
}

// nodeClient is testdata/nodexds/client.js running under node.
type nodeClient struct {
	in    io.WriteCloser
	lines chan string
	logs  *meshtest.SyncBuffer
}

// nodeBatch is one line of client.js's output.
type nodeBatch struct {
	OK     int            `json:"ok"`
	Who    map[string]int `json:"who"`
	Errors []string       `json:"errors"`
}

func startNodeClient(t *testing.T, script, modules, bootstrap, target string) *nodeClient {
	t.Helper()
	cmd := exec.Command("node", script, target)
	cmd.Env = append(os.Environ(), "NODE_PATH="+modules, "GRPC_XDS_BOOTSTRAP="+bootstrap,
		"GRPC_VERBOSITY=ERROR")
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &nodeClient{in: in, lines: make(chan string, 1), logs: &meshtest.SyncBuffer{}}
	cmd.Stderr = c.logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start node: %v", err)
	}
	go func() {
		s := bufio.NewScanner(out)
		s.Buffer(make([]byte, 64<<10), 4<<20)
		for s.Scan() {
			c.lines <- s.Text()
		}
		close(c.lines)
	}()
	t.Cleanup(func() {
		_ = in.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("node client stderr:\n%s", c.logs.String())
		}
	})
	return c
}

// calls has the client make n calls and returns their outcome.
func (c *nodeClient) calls(t *testing.T, n int) nodeBatch {
	t.Helper()
	if _, err := fmt.Fprintf(c.in, "%d\n", n); err != nil {
		t.Fatalf("write to the node client: %v\n%s", err, c.logs.String())
	}
	// Each call has a 2 s deadline.
	select {
	case line, ok := <-c.lines:
		if !ok {
			t.Fatalf("the node client exited:\n%s", c.logs.String())
		}
		var r nodeBatch
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("node client output %q: %v", line, err)
		}
		return r
	case <-time.After(time.Duration(n)*2*time.Second + 10*time.Second):
		t.Fatalf("the node client did not answer %d calls in time:\n%s", n, c.logs.String())
	}
	return nodeBatch{}
}
