package chain_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/net/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/dataplane/chain"
	"github.com/meshvm/mesh/dataplane/endpoint"
	"github.com/meshvm/mesh/dataplane/proxy"
	"github.com/meshvm/mesh/dataplane/table"
)

// inboundTo starts an agent inbound in front of appAddr, with no policy.
func inboundTo(t *testing.T, host, appAddr string) string {
	t.Helper()
	fwd := proxy.NewForwarder(proxy.Options{Log: zerolog.Nop()})
	t.Cleanup(fwd.CloseIdleConnections)
	h, err := chain.Compile(&table.Table{Version: "1", Static: true}, nil, chain.Local{}, fwd, chain.NewState(nil), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return serve(t, host, h.Inbound(appAddr))
}

// unavailable is a gRPC server that answers every call UNAVAILABLE.
type unavailable struct {
	testgrpc.UnimplementedTestServiceServer
}

func (unavailable) UnaryCall(context.Context, *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	return nil, status.Error(codes.Unavailable, "overloaded")
}

func grpcServer(t *testing.T, host string, srv testgrpc.TestServiceServer) string {
	t.Helper()
	gl, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(gs, srv)
	go func() { _ = gs.Serve(gl) }()
	t.Cleanup(gs.Stop)
	return gl.Addr().String()
}

// A gRPC call answered UNAVAILABLE (a trailers-only response) is retried
// on another endpoint under retry_on: unavailable; without retries the
// caller gets the status, and the breaker counts it as a failure.
func TestGRPCRetryOnUnavailable(t *testing.T) {
	good := inboundTo(t, hostB1, grpcServer(t, hostB1, interop.NewTestServer()))
	down := inboundTo(t, hostB2, grpcServer(t, hostB2, unavailable{}))

	for _, tc := range []struct {
		name     string
		attempts int
		want     codes.Code
	}{
		{name: "retried elsewhere", attempts: 2, want: codes.OK},
		{name: "no retries", attempts: 0, want: codes.Unavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := bare()
			p.Retries = config.Retries{Attempts: tc.attempts, RetryOn: []string{"unavailable"}, BudgetPercent: 100, MinRetryConcurrency: 10}
			p.CircuitBreaker = config.CircuitBreaker{ErrorPercentThreshold: 90, RequestVolumeThreshold: 100, SleepWindow: time.Second}
			tbl := &table.Table{Version: "1", Static: true, Default: p, Services: map[string]*table.Service{
				"interop": {Name: "interop", Policy: p, Endpoints: []endpoint.Endpoint{{Addr: down}, {Addr: good}}},
			}}
			a := startCaller(t, tbl, chain.Local{Service: "a"})
			cc, err := grpc.NewClient(a.outbound, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority("interop"))
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			codesSeen := map[codes.Code]int{}
			for range 10 {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := testgrpc.NewTestServiceClient(cc).UnaryCall(ctx, &testgrpc.SimpleRequest{ResponseSize: 10, Payload: &testgrpc.Payload{Body: make([]byte, 100)}})
				cancel()
				codesSeen[status.Code(err)]++
			}
			if codesSeen[tc.want] == 0 || (tc.want == codes.OK && codesSeen[codes.OK] != 10) {
				t.Errorf("codes %v, want %s", codesSeen, tc.want)
			}
			if tc.want != codes.OK {
				// The failed calls count against the breaker's window.
				if st := a.st.Status()["interop"]; st.WindowFailures == 0 {
					t.Errorf("breaker window %+v counts no failure", st)
				}
			}
		})
	}
}

// The route timeout bounds the wait for a WebSocket upgrade, not the
// upgraded connection.
func TestWebSocketOutlivesRouteTimeout(t *testing.T) {
	echo := serve(t, hostB1, websocket.Handler(func(ws *websocket.Conn) {
		var msg string
		for websocket.Message.Receive(ws, &msg) == nil {
			if websocket.Message.Send(ws, msg) != nil {
				return
			}
		}
	}))
	p := bare()
	p.Timeout = 200 * time.Millisecond
	tbl := &table.Table{Version: "1", Static: true, Services: map[string]*table.Service{
		"echo": {Name: "echo", Policy: p, Endpoints: []endpoint.Endpoint{{Addr: inboundTo(t, hostB1, echo)}}},
	}}
	a := startCaller(t, tbl, chain.Local{Service: "a"})
	conn, err := net.DialTimeout("tcp", a.outbound, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	cfg, _ := websocket.NewConfig("ws://echo/", "http://echo/")
	ws, err := websocket.NewClient(cfg, conn)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	defer ws.Close()
	for i, msg := range []string{"before", "after the route timeout"} {
		if i == 1 {
			time.Sleep(3 * p.Timeout)
		}
		var got string
		if err := websocket.Message.Send(ws, msg); err != nil {
			t.Fatalf("send %q: %v", msg, err)
		}
		if err := websocket.Message.Receive(ws, &got); err != nil || got != msg {
			t.Fatalf("echo of %q: %q, %v", msg, got, err)
		}
	}
}
