//go:build kube

package kubetest

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshvm/mesh/meshtest"
)

// TestKubeControlBinaryKubeconfigFlag (issue 13, item 1): the real
// `mesh control --kubeconfig FILE` (the mesh-control service account's
// kubeconfig, no control.kubernetes in its file) turns the Kubernetes
// source on and serves a Kubernetes service's endpoints over ADS.
func TestKubeControlBinaryKubeconfigFlag(t *testing.T) {
	ns(t, "flag")
	createService(t, "flag", "api", corev1.ServicePort{Name: "http", Port: 80})
	createSlice(t, slice("flag", "api", "api-a", "http", 8080, endpoint("10.7.0.1", "z1", "", true)))

	bin := meshtest.BuildMesh(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "mesh.yaml")
	if err := os.WriteFile(file, []byte(fmt.Sprintf("control:\n  ca:\n    dir: %s\n", filepath.Join(dir, "ca"))), 0o600); err != nil {
		t.Fatal(err)
	}
	xdsAddr := "127.0.0.1:" + strconv.Itoa(meshtest.FreePort("127.0.0.1"))
	adminAddr := "127.0.0.1:" + strconv.Itoa(meshtest.FreePort("127.0.0.1"))
	proc := meshtest.StartProcess(t, nil, bin, "control", "--config", file, "--kubeconfig", saKubeconfig,
		"--consul-addr", testConsul.Addr, "--xds-addr", xdsAddr, "--admin-addr", adminAddr, "--debounce", "20ms")
	meshtest.Eventually(t, 60*time.Second, func() error {
		resp, err := http.Get("http://" + adminAddr + "/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/ready: %d", resp.StatusCode)
		}
		return nil
	})
	e := dialEDS(t, xdsAddr, "api.flag")
	want(t, e, "api.flag", "10.7.0.1:8080 HEALTHY /z1")
	if out := proc.Output(); !strings.Contains(out, "kubernetes informers synced") {
		t.Errorf("the binary's log does not show the kubernetes source:\n%s", out)
	}
}
