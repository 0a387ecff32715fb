package agent_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/xds"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/meshtest"
	"github.com/meshvm/mesh/wire"
)

const ztGRPC = "127.0.0.161"

// TestZeroTrustGRPCProxylessStrict: a gRPC proxyless client (gRPC's own
// xDS client: bootstrap pointing at mesh control over TLS, xds
// credentials with file_watcher certificate providers holding an identity
// mesh control issued for a join token) calls a gRPC app behind an agent
// whose inbound is strict, over mTLS; the same client without a
// certificate (insecure credentials) is refused.
func TestZeroTrustGRPCProxylessStrict(t *testing.T) {
	caDir := filepath.Join(t.TempDir(), "ca")
	cp := newControl(t, controlOptions{caDir: caDir, auth: "optional", extra: "  mtls: {default_mode: strict}\n"})
	gl, err := net.Listen("tcp", ztGRPC+":0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(gs, interop.NewTestServer())
	go func() { _ = gs.Serve(gl) }()
	t.Cleanup(gs.Stop)
	svcTok := mintToken(t, cp.bin, caDir, "ztgrpc", "1h")
	ident := withIdentity(cp, svcTok, t.TempDir())
	ag := startAgent(t, ztGRPC, "ztgrpc", &app{port: gl.Addr().(*net.TCPAddr).Port}, func(c *config.Config) {
		ident(c)
		c.Agent.AppHealth = ""
		c.Agent.AppProtocol = config.AppProtocolGRPC
	})
	waitPassing(t, "ztgrpc", 1)

	// The client's identity from `mesh identity issue`: its key made
	// here, its certificate signed by mesh control against a join token,
	// written as cert.pem, key.pem (0600) and bundle.pem for the watchers.
	idDir := filepath.Join(t.TempDir(), "id")
	out, err := exec.Command(cp.bin, "identity", "issue", "--join-token-file", mintToken(t, cp.bin, caDir, "ztgrpcclient", "1h"),
		"--control-plane", cp.xdsAddr, "--service", "ztgrpcclient", "--out-dir", idDir).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "issued spiffe://mesh.local/ns/default/svc/ztgrpcclient") {
		t.Fatalf("mesh identity issue: %v\n%s", err, out)
	}
	if fi, err := os.Stat(filepath.Join(idDir, "key.pem")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key.pem: %v %v, want mode 0600", fi.Mode(), err)
	}
	// A token for another service gets nothing, and says why.
	out, err = exec.Command(cp.bin, "identity", "issue", "--join-token-file", mintToken(t, cp.bin, caDir, "ztother", "1h"),
		"--control-plane", cp.xdsAddr, "--service", "ztgrpcclient", "--out-dir", t.TempDir()).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "does not allow service ztgrpcclient") {
		t.Fatalf("mesh identity issue with a token for another service: %v\n%s", err, out)
	}

	bootstrap := func(nodeID string) []byte {
		return []byte(fmt.Sprintf(`{
		"xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "tls", "config": {"ca_certificate_file": %q}}], "server_features": ["xds_v3"]}],
		"node": {"id": %q},
		"certificate_providers": {
			%q: {"plugin_name": "file_watcher", "config": {"certificate_file": %q, "private_key_file": %q, "refresh_interval": "1s"}},
			%q: {"plugin_name": "file_watcher", "config": {"ca_certificate_file": %q, "refresh_interval": "1s"}}
		}
	}`, cp.xdsAddr, filepath.Join(caDir, "bundle.crt"), nodeID,
			wire.SecretWorkloadCert, filepath.Join(idDir, "cert.pem"), filepath.Join(idDir, "key.pem"),
			wire.SecretTrustBundle, filepath.Join(idDir, "bundle.pem")))
	}
	dial := func(nodeID string, withCert bool) testgrpc.TestServiceClient {
		t.Helper()
		resolver, err := xds.NewXDSResolverWithConfigForTesting(bootstrap(nodeID))
		if err != nil {
			t.Fatal(err)
		}
		creds := insecure.NewCredentials()
		if withCert {
			if creds, err = xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()}); err != nil {
				t.Fatal(err)
			}
		}
		conn, err := grpc.NewClient("xds:///ztgrpc", grpc.WithResolvers(resolver), grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return testgrpc.NewTestServiceClient(conn)
	}
	call := func(c testgrpc.TestServiceClient) error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_, err := c.EmptyCall(ctx, &testgrpc.Empty{})
		return err
	}

	before := metricValue(t, ag.Addr("admin"), "mesh_inbound_connections_total", "tls", "mtls")
	withCert := dial("grpc-zt-client", true)
	meshtest.Eventually(t, 30*time.Second, func() error { return call(withCert) })
	for i := 0; i < 20; i++ {
		if err := call(withCert); err != nil {
			t.Fatalf("call %d with a mesh certificate: %v", i, err)
		}
	}
	if after := metricValue(t, ag.Addr("admin"), "mesh_inbound_connections_total", "tls", "mtls"); after <= before {
		t.Errorf("no mTLS connection reached the strict agent (%v → %v)", before, after)
	}

	// Without a certificate the client resolves the same endpoints but the
	// strict agent refuses it at the connection.
	plainBefore := metricValue(t, ag.Addr("admin"), "mesh_tls_handshake_errors_total", "side", "server", "reason", "plaintext")
	noCert := dial("grpc-zt-nocert", false)
	meshtest.Eventually(t, 30*time.Second, func() error {
		if err := call(noCert); err == nil {
			t.Fatal("a client without a certificate was served by a strict agent")
		}
		if n := metricValue(t, ag.Addr("admin"), "mesh_tls_handshake_errors_total", "side", "server", "reason", "plaintext"); n <= plainBefore {
			return fmt.Errorf("the strict agent has not refused the plaintext client yet")
		}
		return nil
	})
}
