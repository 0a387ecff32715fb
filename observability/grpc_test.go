package observability_test

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/observability"
)

// TestGRPCThroughTwoHops calls the gRPC interop server through two
// instrumented agents (h2c) and checks that each call is one request with
// its gRPC status in both access logs, and that streaming still streams.
func TestGRPCThroughTwoHops(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.40:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(gs, interop.NewTestServer())
	go func() { _ = gs.Serve(ln) }()
	defer gs.Stop()

	fwd := newForwarder()
	defer fwd.CloseIdleConnections()
	logA, logB := &meshtest.SyncBuffer{}, &meshtest.SyncBuffer{}
	obsB, err := observability.NewObserver(defaultObs(), observability.Options{Service: "orders", Registry: observability.NewRegistry(), Stdout: logB})
	if err != nil {
		t.Fatal(err)
	}
	obsA, err := observability.NewObserver(defaultObs(), observability.Options{Service: "web", Registry: observability.NewRegistry(), Stdout: logA})
	if err != nil {
		t.Fatal(err)
	}
	in := serve(t, "127.0.0.40", obsB.Instrument(observability.Inbound, "orders", inbound(fwd, ln.Addr().String())))
	res := resolver{"orders": {in}}
	out := serve(t, "127.0.0.41", obsA.Instrument(observability.Outbound, "web", outbound(fwd, res)))

	cc, err := grpc.NewClient(out, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority("orders"))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	tc := testgrpc.NewTestServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	if _, err := tc.EmptyCall(ctx, &testgrpc.Empty{}); err != nil {
		t.Fatalf("EmptyCall: %v", err)
	}
	_, err = tc.UnaryCall(ctx, &testgrpc.SimpleRequest{ResponseStatus: &testgrpc.EchoStatus{Code: int32(codes.InvalidArgument), Message: "bad"}})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("UnaryCall: got %v, want InvalidArgument", err)
	}
	stream, err := tc.StreamingOutputCall(ctx, &testgrpc.StreamingOutputCallRequest{
		ResponseParameters: []*testgrpc.ResponseParameters{{Size: 10}, {Size: 20}, {Size: 30}}})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := stream.Recv(); err != nil {
			t.Fatalf("stream message %d: %v", i, err)
		}
	}
	if _, err := stream.Recv(); err == nil {
		t.Fatal("stream did not end")
	}
	_ = obsA.Close(ctx)
	_ = obsB.Close(ctx)

	for name, text := range map[string]string{"A": logA.String(), "B": logB.String()} {
		lines := logLines(t, text)
		if len(lines) != 3 {
			t.Fatalf("%s logged %d lines for 3 calls:\n%s", name, len(lines), text)
		}
		want := []struct{ path, grpcStatus string }{
			{"/grpc.testing.TestService/EmptyCall", "0"},
			{"/grpc.testing.TestService/UnaryCall", "3"},
			{"/grpc.testing.TestService/StreamingOutputCall", "0"},
		}
		for i, w := range want {
			l := lines[i]
			if l["path"] != w.path || l["grpc_status"] != w.grpcStatus || l["protocol"] != "HTTP/2.0" || l["status"] != 200.0 {
				t.Errorf("%s line %d = %v, want path %s grpc_status %s over HTTP/2.0", name, i, l, w.path, w.grpcStatus)
			}
		}
	}
}
