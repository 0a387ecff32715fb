package translate_test

import (
	"bytes"
	"os"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/meshvm/mesh/controlplane/translate"
	"github.com/meshvm/mesh/wire/wiretest"
)

// Fixed PEM stand-ins: a Secret carries the bytes as they are.
const (
	goldenBundle = "-----BEGIN CERTIFICATE-----\nUk9PVC1PTEQ=\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nUk9PVC1ORVc=\n-----END CERTIFICATE-----\n"
	goldenChain  = "-----BEGIN CERTIFICATE-----\nTEVBRg==\n-----END CERTIFICATE-----\n"
)

// TestGoldenSecrets: the SDS secrets of a node holding a certificate,
// during a root rotation (two roots), as wire/testdata/secrets.golden.json,
// which the wire contract tests read.
func TestGoldenSecrets(t *testing.T) {
	set, err := translate.Secrets([]byte(goldenBundle), []byte(goldenChain))
	if err != nil {
		t.Fatal(err)
	}
	got, err := wiretest.EncodeSecrets(map[string]proto.Message(set))
	if err != nil {
		t.Fatal(err)
	}
	path := wiretest.Path(wiretest.Secrets)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the translation; diff it with go test -update and git diff", path)
	}
	bundleOnly, err := translate.Secrets([]byte(goldenBundle), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(bundleOnly) != 1 {
		t.Errorf("a node without a certificate got %d secrets, want the trust bundle only", len(bundleOnly))
	}
	if _, err := translate.Secrets(nil, nil); err == nil {
		t.Error("an empty trust bundle was accepted")
	}
}
