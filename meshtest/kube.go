package meshtest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// Kube is a real Kubernetes API server (kube-apiserver v1.33 and etcd,
// built by `make kube-apiserver etcd`) on free 127.0.0.1 ports, with RBAC
// authorization, a static admin token in group system:masters and service
// account tokens. There is no kubelet, scheduler or controller manager:
// tests create Services and EndpointSlices as the controllers would.
type Kube struct {
	// URL is the API server's https URL.
	URL string
	// CA is the PEM CA the API server's certificate chains to.
	CA []byte
	// AdminToken authenticates as system:masters.
	AdminToken string

	dir       string
	port      int
	etcdURL   string
	etcd      *kubeProc
	apiserver *kubeProc
}

type kubeProc struct {
	cmd  *exec.Cmd
	done chan struct{}
	logf *os.File
}

// KubeAPIServerBinary and EtcdBinary are what `make kube-apiserver etcd`
// build; MESH_KUBE_APISERVER_BIN and MESH_ETCD_BIN override them.
func KubeAPIServerBinary() string { return binary("MESH_KUBE_APISERVER_BIN", "kube-apiserver") }

// EtcdBinary is etcd's binary (see KubeAPIServerBinary).
func EtcdBinary() string { return binary("MESH_ETCD_BIN", "etcd") }

func binary(env, name string) string {
	if p := os.Getenv(env); p != "" {
		return p
	}
	return filepath.Join(RepoRoot(), "bin", name)
}

// StartKube starts etcd and kube-apiserver and waits until the API server
// is ready. It is meant for TestMain: call Stop when the tests end. A
// missing binary is an error, never a skip.
func StartKube() (*Kube, error) {
	for _, b := range []string{EtcdBinary(), KubeAPIServerBinary()} {
		if _, err := os.Stat(b); err != nil {
			return nil, fmt.Errorf("%s missing (run `make kube-apiserver etcd`): %w", b, err)
		}
	}
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		var k *Kube
		if k, err = startKube(); err == nil || !errors.Is(err, errPortTaken) {
			return k, err
		}
	}
	return nil, err
}

func startKube() (k *Kube, err error) {
	dir, err := os.MkdirTemp("", "mesh-kube-")
	if err != nil {
		return nil, err
	}
	k = &Kube{dir: dir, port: FreePort("127.0.0.1"), AdminToken: "mesh-admin-" + strconv.FormatInt(time.Now().UnixNano(), 36)}
	defer func() {
		if err != nil {
			k.Stop()
		}
	}()
	if err := k.writeCredentials(); err != nil {
		return nil, fmt.Errorf("kube credentials: %w", err)
	}
	client, peer := FreePort("127.0.0.1"), FreePort("127.0.0.1")
	k.etcdURL = fmt.Sprintf("http://127.0.0.1:%d", client)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peer)
	k.etcd, err = k.start("etcd", EtcdBinary(),
		"--name", "meshtest", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", k.etcdURL, "--advertise-client-urls", k.etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "meshtest="+peerURL, "--unsafe-no-fsync", "--log-level", "warn")
	if err != nil {
		return nil, err
	}
	if err := k.wait(k.etcd, 60*time.Second, func() bool {
		resp, err := http.Get(k.etcdURL + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}); err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}
	k.URL = fmt.Sprintf("https://127.0.0.1:%d", k.port)
	if err := k.StartAPIServer(); err != nil {
		return nil, err
	}
	return k, nil
}

// writeCredentials makes the serving CA and certificate, the service
// account key pair and the static token file.
func (k *Kube) writeCredentials() error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "meshtest-kube-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost", "kubernetes.default.svc"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	sa, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	saPub, err := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	if err != nil {
		return err
	}
	k.CA = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	files := map[string][]byte{
		"ca.crt":      k.CA,
		"serving.crt": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		"serving.key": pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		"sa.key":      pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(sa)}),
		"sa.pub":      pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPub}),
		"tokens.csv":  []byte(k.AdminToken + ",mesh-admin,mesh-admin-uid,system:masters\n"),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(k.dir, name), data, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// StartAPIServer starts kube-apiserver (again, after StopAPIServer) on
// the same port and etcd, and waits until /readyz answers ok.
func (k *Kube) StartAPIServer() error {
	var err error
	k.apiserver, err = k.start("kube-apiserver", KubeAPIServerBinary(),
		"--etcd-servers", k.etcdURL,
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", strconv.Itoa(k.port),
		"--tls-cert-file", filepath.Join(k.dir, "serving.crt"), "--tls-private-key-file", filepath.Join(k.dir, "serving.key"),
		"--cert-dir", filepath.Join(k.dir, "certs"),
		"--token-auth-file", filepath.Join(k.dir, "tokens.csv"),
		"--authorization-mode", "RBAC",
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", filepath.Join(k.dir, "sa.pub"),
		"--service-account-signing-key-file", filepath.Join(k.dir, "sa.key"),
		"--service-cluster-ip-range", "10.96.0.0/16",
		// no controller manager: nothing reconciles the kubernetes
		// Service's endpoints, and a loopback address is refused anyway
		"--endpoint-reconciler-type", "none",
		"--enable-priority-and-fairness=false", "--profiling=false")
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(k.CA)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer hc.CloseIdleConnections()
	err = k.wait(k.apiserver, 90*time.Second, func() bool {
		req, _ := http.NewRequest(http.MethodGet, k.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+k.AdminToken)
		resp, err := hc.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	if err != nil {
		return fmt.Errorf("kube-apiserver: %w", err)
	}
	return nil
}

// StopAPIServer stops kube-apiserver (etcd keeps the data).
func (k *Kube) StopAPIServer() { k.apiserver.stop() }

// Kubeconfig writes a kubeconfig for token into dir and returns its path.
func (k *Kube) Kubeconfig(dir, token string) (string, error) {
	path := filepath.Join(dir, "kubeconfig")
	var b bytes.Buffer
	fmt.Fprintf(&b, `apiVersion: v1
kind: Config
clusters:
- name: meshtest
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: meshtest
  user:
    token: %s
contexts:
- name: meshtest
  context: {cluster: meshtest, user: meshtest}
current-context: meshtest
`, k.URL, filepath.Join(k.dir, "ca.crt"), token)
	return path, os.WriteFile(path, b.Bytes(), 0o600)
}

// Log returns the API server's log so far.
func (k *Kube) Log() string {
	b, _ := os.ReadFile(filepath.Join(k.dir, "kube-apiserver.log"))
	return string(b)
}

// Stop stops the API server, then etcd, and removes their files.
func (k *Kube) Stop() {
	k.apiserver.stop()
	k.etcd.stop()
	_ = os.RemoveAll(k.dir)
}

func (k *Kube) start(name, bin string, args ...string) (*kubeProc, error) {
	logf, err := os.OpenFile(filepath.Join(k.dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &kubeProc{cmd: cmd, done: make(chan struct{}), logf: logf}
	go func() { _ = cmd.Wait(); close(p.done) }()
	return p, nil
}

// wait polls ready until it holds, the process exits or timeout passes.
func (k *Kube) wait(p *kubeProc, timeout time.Duration, ready func() bool) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if ready() {
			return nil
		}
		select {
		case <-p.done:
			log, _ := os.ReadFile(p.logf.Name())
			if bytes.Contains(log, []byte("address already in use")) {
				return fmt.Errorf("%w: %s", errPortTaken, lastLine(string(log), "address already in use"))
			}
			return fmt.Errorf("exited before it was ready; log:\n%s", lastBytes(log, 4000))
		case <-time.After(100 * time.Millisecond):
		}
	}
	log, _ := os.ReadFile(p.logf.Name())
	return fmt.Errorf("not ready in %s; log:\n%s", timeout, lastBytes(log, 4000))
}

func lastBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// stop sends SIGTERM, then SIGKILL after 10s, and waits.
func (p *kubeProc) stop() {
	if p == nil {
		return
	}
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	}
	p.logf.Close()
}
