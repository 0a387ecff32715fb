package agent_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/meshtest"
)

// identityDump is the identity part of an agent's /config_dump.
type identityDump struct {
	Identity struct {
		SPIFFEID    string `json:"spiffe_id"`
		Serial      string
		NotAfter    time.Time `json:"not_after"`
		BundleRoots []struct {
			Fingerprint string
		} `json:"bundle_roots"`
	}
	XDS struct{ Connected bool }
}

func identityOf(t *testing.T, ra *runningAgent) identityDump {
	t.Helper()
	var d identityDump
	if err := json.Unmarshal([]byte(fetch(t, "http://"+ra.Addr("admin")+"/config_dump")), &d); err != nil {
		t.Fatal(err)
	}
	return d
}

func fetch(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// mintToken runs `mesh control token create` against the CA directory
// and returns the token file (0600) it wrote.
func mintToken(t *testing.T, bin, caDir, service, ttl string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), service+".token")
	out, err := exec.Command(bin, "control", "token", "create", "--service", service, "--ttl", ttl, "--ca-dir", caDir, "--output", file).CombinedOutput()
	if err != nil {
		t.Fatalf("token create: %v\n%s", err, out)
	}
	return file
}

func withIdentity(cp *control, tokenFile, cacheDir string) func(*config.Config) {
	return func(c *config.Config) {
		c.Agent.ControlPlane = []string{cp.xdsAddr}
		c.Agent.JoinTokenFile = tokenFile
		if cacheDir != "" {
			c.Agent.CacheDir = cacheDir
		}
	}
}

// TestIdentityRotatesOnOneStream: an agent with a join token gets its
// certificate from `mesh control` (xDS auth required, so its config too
// depends on it), renews it at half-life (cert_ttl 3s: at least three
// rotations, each a new serial) on the same ADS stream, receives the trust
// bundle and its chain as SDS secrets, and a root rotation reaches it
// live. Its key file is 0600 and the key appears in no output.
func TestIdentityRotatesOnOneStream(t *testing.T) {
	caDir := filepath.Join(t.TempDir(), "ca")
	cp := newControl(t, controlOptions{caDir: caDir, certTTL: "3s", auth: "required"})
	tok := mintToken(t, cp.bin, caDir, "idweb", "1h")
	app := startApp(t, "127.0.0.81", "idweb", nil)
	logs := &meshtest.SyncBuffer{}
	cache := t.TempDir()
	ra := launchAgent(t, "127.0.0.81", "idweb", app.port, withIdentity(cp, tok, cache),
		zerolog.New(io.MultiWriter(zerolog.NewTestWriter(t), logs)).Level(zerolog.InfoLevel))
	meshtest.Eventually(t, 15*time.Second, func() error {
		if !ra.Ready() {
			return fmt.Errorf("agent not ready")
		}
		return nil
	})

	serials := map[string]bool{}
	meshtest.Eventually(t, 30*time.Second, func() error {
		d := identityOf(t, ra)
		if d.Identity.Serial != "" {
			serials[d.Identity.Serial] = true
		}
		if len(serials) < 4 || !d.XDS.Connected {
			return fmt.Errorf("%d certificates seen, xds connected %v", len(serials), d.XDS.Connected)
		}
		return nil
	})
	d := identityOf(t, ra)
	if d.Identity.SPIFFEID != "spiffe://mesh.local/ns/default/svc/idweb" {
		t.Errorf("spiffe id %q", d.Identity.SPIFFEID)
	}
	if n := strings.Count(logs.String(), "xds stream ended"); n != 0 {
		t.Errorf("the ADS stream ended %d times during rotations", n)
	}
	keyFile := filepath.Join(cache, "identity", "idweb", "key.pem")
	fi, err := os.Stat(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}

	// SDS: the control plane serves the node both secrets.
	nodeID := "idweb-vm-127-0-0-81-" + fmt.Sprint(app.port)
	meshtest.Eventually(t, 10*time.Second, func() error {
		body := fetch(t, "http://"+cp.adminAddr+"/config_dump?node="+nodeID)
		if !strings.Contains(body, `"ROOTCA"`) || !strings.Contains(body, `"default"`) {
			return fmt.Errorf("node secrets: %.300s", body)
		}
		return nil
	})

	if n := strings.Count(logs.String(), "certificate renewal failed"); n != 0 {
		t.Errorf("%d renewals failed", n)
	}

	// A root rotation reaches the running agent as a two-root bundle.
	if out, err := exec.Command(cp.bin, "control", "ca", "rotate", "--ca-dir", caDir).CombinedOutput(); err != nil {
		t.Fatalf("ca rotate: %v\n%s", err, out)
	}
	meshtest.Eventually(t, 20*time.Second, func() error {
		if n := len(identityOf(t, ra).Identity.BundleRoots); n != 2 {
			return fmt.Errorf("agent bundle holds %d roots, want 2", n)
		}
		return nil
	})
	// And the agent keeps renewing, now from the new root.
	before := identityOf(t, ra).Identity.Serial
	meshtest.Eventually(t, 20*time.Second, func() error {
		if identityOf(t, ra).Identity.Serial == before {
			return fmt.Errorf("no renewal after the root rotation")
		}
		return nil
	})

	metrics := fetch(t, "http://"+ra.Addr("admin")+"/metrics")
	if !strings.Contains(metrics, `mesh_cert_expiry_seconds{cert="workload"}`) {
		t.Error("no mesh_cert_expiry_seconds{cert=\"workload\"} on the agent")
	}
	ready := fetch(t, "http://"+ra.Addr("admin")+"/ready?format=json")
	if !strings.Contains(ready, `"identity"`) {
		t.Errorf("/ready does not report the identity: %s", ready)
	}
	key, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	keyBody := strings.Split(strings.TrimSpace(string(key)), "\n")[1] // a line of the key's base64
	token, _ := os.ReadFile(tok)
	for name, out := range map[string]string{"agent log": logs.String(), "control plane output": cp.proc.Output(),
		"agent /config_dump": fetch(t, "http://"+ra.Addr("admin")+"/config_dump"), "agent /metrics": metrics,
		"control /config_dump": fetch(t, "http://"+cp.adminAddr+"/config_dump?node="+nodeID)} {
		if strings.Contains(out, keyBody) || strings.Contains(out, "PRIVATE KEY") {
			t.Errorf("%s shows the private key", name)
		}
		if strings.Contains(out, strings.TrimSpace(string(token))) {
			t.Errorf("%s shows the join token", name)
		}
	}
}

// TestIdentityFromDiskWhileControlIsDown: an agent restarted while mesh
// control is down, its token file gone, starts with the certificate it
// cached and serves with it.
func TestIdentityFromDiskWhileControlIsDown(t *testing.T) {
	caDir := filepath.Join(t.TempDir(), "ca")
	cp := newControl(t, controlOptions{caDir: caDir, certTTL: "1h"})
	tok := mintToken(t, cp.bin, caDir, "idcache", "1h")
	app := startApp(t, "127.0.0.82", "idcache", nil)
	cache := t.TempDir()
	ra := startAgent(t, "127.0.0.82", "idcache", app, withIdentity(cp, tok, cache))
	var serial string
	meshtest.Eventually(t, 20*time.Second, func() error {
		if serial = identityOf(t, ra).Identity.Serial; serial == "" {
			return fmt.Errorf("no certificate yet")
		}
		return nil
	})
	ra.stop(t)
	cp.stop()
	if err := os.Remove(tok); err != nil {
		t.Fatal(err)
	}
	ra = startAgent(t, "127.0.0.82", "idcache", app, withIdentity(cp, tok, cache))
	d := identityOf(t, ra)
	if d.Identity.Serial != serial || d.Identity.SPIFFEID != "spiffe://mesh.local/ns/default/svc/idcache" {
		t.Fatalf("restarted agent holds %q (%s), want the cached %q", d.Identity.Serial, d.Identity.SPIFFEID, serial)
	}
	if time.Until(d.Identity.NotAfter) < 30*time.Minute {
		t.Errorf("cached certificate expires %v", d.Identity.NotAfter)
	}
}

// TestIdentityTokenForAnotherService: an agent fronting idorders with a
// token for idweb gets neither a certificate nor config (xDS auth
// required); both refusals name the mismatch.
func TestIdentityTokenForAnotherService(t *testing.T) {
	caDir := filepath.Join(t.TempDir(), "ca")
	cp := newControl(t, controlOptions{caDir: caDir, auth: "required"})
	tok := mintToken(t, cp.bin, caDir, "idweb", "1h")
	app := startApp(t, "127.0.0.83", "idorders", nil)
	logs := &meshtest.SyncBuffer{}
	ra := launchAgent(t, "127.0.0.83", "idorders", app.port, withIdentity(cp, tok, ""),
		zerolog.New(io.MultiWriter(zerolog.NewTestWriter(t), logs)).Level(zerolog.InfoLevel))
	meshtest.Eventually(t, 20*time.Second, func() error {
		out := logs.String()
		for _, want := range []string{"does not allow service idorders (it allows idweb)",
			`may not get config as node \"idorders-vm-127-0-0-83-`} {
			if !strings.Contains(out, want) {
				return fmt.Errorf("agent log lacks %s", want)
			}
		}
		return nil
	})
	if d := identityOf(t, ra); d.Identity.Serial != "" || d.XDS.Connected {
		t.Errorf("agent holds certificate %q, xds connected %v", d.Identity.Serial, d.XDS.Connected)
	}
}

// TestIdentityRotationUnderLoad: web calls orders through both agents,
// each with its own identity (xDS auth required, cert_ttl 3s), while
// both rotate at least three times: no request fails. (The hop between
// the agents is not mTLS yet; this holds the rotations to costing the
// data path nothing: no stream restart, no config churn.)
func TestIdentityRotationUnderLoad(t *testing.T) {
	caDir := filepath.Join(t.TempDir(), "ca")
	cp := newControl(t, controlOptions{caDir: caDir, certTTL: "3s", auth: "required"})
	orders := startApp(t, "127.0.0.85", "idlorders-1", nil)
	oa := startAgent(t, "127.0.0.85", "idlorders", orders, withIdentity(cp, mintToken(t, cp.bin, caDir, "idlorders", "1h"), ""))
	web := startApp(t, "127.0.0.84", "idlweb", nil)
	wa := startAgent(t, "127.0.0.84", "idlweb", web, withIdentity(cp, mintToken(t, cp.bin, caDir, "idlweb", "1h"), ""))
	waitEndpoints(t, wa, "idlorders", 1)

	l := startLoad("http://"+wa.Addr("outbound")+"/", "idlorders")
	seen := map[*runningAgent]map[string]bool{oa: {}, wa: {}}
	meshtest.Eventually(t, 40*time.Second, func() error {
		for ra, s := range seen {
			if serial := identityOf(t, ra).Identity.Serial; serial != "" {
				s[serial] = true
			}
			if len(s) < 4 {
				return fmt.Errorf("%d certificates seen", len(s))
			}
		}
		return nil
	})
	l.stop()
	l.check(t, "three rotations on both agents")
	if l.ok.Load() < 100 {
		t.Errorf("only %d requests served", l.ok.Load())
	}
}
