package chain_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

// TestGRPCInterop runs the official gRPC interop cases from a real gRPC
// client through agent A and agent B to the interop server, both through a
// per-upstream listener and through the outbound listener by authority.
func TestGRPCInterop(t *testing.T) {
	cases := []struct {
		name string
		run  func(ctx context.Context, cc *grpc.ClientConn)
	}{
		{"empty_unary", func(ctx context.Context, cc *grpc.ClientConn) {
			interop.DoEmptyUnaryCall(ctx, testgrpc.NewTestServiceClient(cc))
		}},
		{"large_unary", func(ctx context.Context, cc *grpc.ClientConn) {
			interop.DoLargeUnaryCall(ctx, testgrpc.NewTestServiceClient(cc))
		}},
		{"client_streaming", func(ctx context.Context, cc *grpc.ClientConn) {
			interop.DoClientStreaming(ctx, testgrpc.NewTestServiceClient(cc))
		}},
		{"server_streaming", func(ctx context.Context, cc *grpc.ClientConn) {
			interop.DoServerStreaming(ctx, testgrpc.NewTestServiceClient(cc))
		}},
		{"ping_pong", func(ctx context.Context, cc *grpc.ClientConn) {
			interop.DoPingPong(ctx, testgrpc.NewTestServiceClient(cc))
		}},
		{"empty_stream", func(ctx context.Context, cc *grpc.ClientConn) {
			interop.DoEmptyStream(ctx, testgrpc.NewTestServiceClient(cc))
		}},
		{"timeout_on_sleeping_server", func(ctx context.Context, cc *grpc.ClientConn) {
			interop.DoTimeoutOnSleepingServer(ctx, testgrpc.NewTestServiceClient(cc))
		}},
		{"cancel_after_begin", func(ctx context.Context, cc *grpc.ClientConn) {
			interop.DoCancelAfterBegin(ctx, testgrpc.NewTestServiceClient(cc))
		}},
		{"cancel_after_first_response", func(ctx context.Context, cc *grpc.ClientConn) {
			interop.DoCancelAfterFirstResponse(ctx, testgrpc.NewTestServiceClient(cc))
		}},
		{"status_code_and_message", func(ctx context.Context, cc *grpc.ClientConn) {
			interop.DoStatusCodeAndMessage(ctx, testgrpc.NewTestServiceClient(cc))
		}},
		{"special_status_message", func(ctx context.Context, cc *grpc.ClientConn) {
			interop.DoSpecialStatusMessage(ctx, testgrpc.NewTestServiceClient(cc))
		}},
		{"custom_metadata", func(ctx context.Context, cc *grpc.ClientConn) {
			interop.DoCustomMetadata(ctx, testgrpc.NewTestServiceClient(cc))
		}},
		{"unimplemented_method", func(ctx context.Context, cc *grpc.ClientConn) {
			interop.DoUnimplementedMethod(ctx, cc)
		}},
		{"unimplemented_service", func(ctx context.Context, cc *grpc.ClientConn) {
			interop.DoUnimplementedService(ctx, testgrpc.NewUnimplementedServiceClient(cc))
		}},
	}
	for _, path := range []struct {
		name      string
		target    string
		authority string
	}{
		{name: "upstream listener", target: topo.grpcUpstream},
		{name: "outbound by authority", target: topo.outbound, authority: "interop.mesh"},
	} {
		t.Run(path.name, func(t *testing.T) {
			opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
			if path.authority != "" {
				opts = append(opts, grpc.WithAuthority(path.authority))
			}
			cc, err := grpc.NewClient(path.target, opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					defer func() {
						if r := recover(); r != nil {
							f, ok := r.(interopFailure)
							if !ok {
								panic(r)
							}
							t.Fatalf("interop case %s failed: %s", tc.name, f.msg)
						}
					}()
					tc.run(ctx, cc)
				})
			}
		})
	}
}

// TestGRPCMeshErrors checks that the mesh's own refusals reach gRPC
// clients as gRPC statuses, not as HTTP errors the client cannot read.
func TestGRPCMeshErrors(t *testing.T) {
	for _, tc := range []struct {
		name, authority string
		want            codes.Code
	}{
		{name: "unknown service", authority: "billing", want: codes.Unavailable},
		{name: "no healthy endpoint", authority: "empty", want: codes.Unavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cc, err := grpc.NewClient(topo.outbound,
				grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority(tc.authority))
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err = testgrpc.NewTestServiceClient(cc).EmptyCall(ctx, &testgrpc.Empty{})
			if status.Code(err) != tc.want {
				t.Fatalf("error %v, want code %s", err, tc.want)
			}
			if want := "mesh: " + map[string]string{"billing": "no-route", "empty": "no-healthy-endpoint"}[tc.authority]; status.Convert(err).Message() != want {
				t.Errorf("message %q, want %q", status.Convert(err).Message(), want)
			}
		})
	}
}
