package xds

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"sync"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/rs/zerolog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshvm/mesh/controlplane/model"
	"github.com/meshvm/mesh/controlplane/translate"
)

// secrets serves SDS over the ADS stream from a snapshot cache of its
// own, holding only Secrets: the trust bundle for every connected node,
// and a node's own certificate chain once it was issued one
// (translate.Secrets). Keeping them apart from the four routing types
// leaves their versions, pushes and order untouched.
type secrets struct {
	log    zerolog.Logger
	cache  cache.SnapshotCache
	hasher *Hasher

	mu        sync.Mutex
	bundle    []byte
	chains    map[string][]byte // by node id
	connected map[string]bool
}

func newSecrets(log zerolog.Logger) *secrets {
	return &secrets{
		log:       log,
		cache:     cache.NewSnapshotCache(false, cache.IDHash{}, cacheLogger{log}),
		hasher:    NewHasher(),
		chains:    map[string][]byte{},
		connected: map[string]bool{},
	}
}

// setBundle installs a new trust bundle and pushes it to every connected
// node.
func (s *secrets) setBundle(pem []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bundle = pem
	for id := range s.connected {
		s.push(id)
	}
}

// setChain records the chain issued to node id and pushes it when the
// node is connected; chains that expired are forgotten.
func (s *secrets) setChain(id string, chain []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	for n, c := range s.chains {
		if expired(c, now) {
			delete(s.chains, n)
		}
	}
	s.chains[id] = chain
	if s.connected[id] {
		s.push(id)
	}
}

func expired(chain []byte, now time.Time) bool {
	notAfter, ok := leafExpiry(chain)
	return !ok || now.After(notAfter)
}

// leafExpiry is the NotAfter of a PEM chain's first certificate.
func leafExpiry(chain []byte) (time.Time, bool) {
	b, _ := pem.Decode(chain)
	if b == nil {
		return time.Time{}, false
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return time.Time{}, false
	}
	return c.NotAfter, true
}

// expiry is when the certificate this control plane issued node id
// expires, when it issued one that is still held.
func (s *secrets) expiry(id string) (time.Time, bool) {
	s.mu.Lock()
	chain := s.chains[id]
	s.mu.Unlock()
	if chain == nil {
		return time.Time{}, false
	}
	return leafExpiry(chain)
}

func (s *secrets) connect(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.connected[id] = true
	s.push(id)
}

func (s *secrets) disconnect(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.connected, id)
	s.cache.ClearSnapshot(id)
}

// push sets node id's secrets snapshot; s.mu is held.
func (s *secrets) push(id string) {
	if len(s.bundle) == 0 {
		return // no CA: no SDS
	}
	set, err := translate.Secrets(s.bundle, s.chains[id])
	if err != nil {
		s.log.Error().Err(err).Str("node", id).Msg("secrets refused, node keeps its previous ones")
		return
	}
	s.hasher.Rotate()
	hashed, err := s.hasher.NewSet(set)
	if err != nil {
		s.log.Error().Err(err).Str("node", id).Msg("secrets refused, node keeps its previous ones")
		return
	}
	res := make([]types.Resource, 0, len(set))
	for _, m := range set {
		res = append(res, m)
	}
	snap, err := cache.NewSnapshot(hashed.Version, map[resourcev3.Type][]types.Resource{resourcev3.SecretType: res})
	if err == nil {
		err = s.cache.SetSnapshot(context.Background(), id, snap)
	}
	if err != nil {
		s.log.Error().Err(fmt.Errorf("set secrets of node %s: %w", id, err)).Msg("secrets refused")
	}
}

// NodeSecrets returns the names of the secrets node id is served.
func (s *Server) NodeSecrets(id string) []string {
	snap, err := s.secrets.cache.GetSnapshot(id)
	if err != nil {
		return nil
	}
	var out []string
	for name := range snap.GetResources(resourcev3.SecretType) {
		out = append(out, name)
	}
	return out
}

// SetTrustBundle sets the trust bundle (PEM) every node gets as the
// wire.SecretTrustBundle secret, and pushes it.
func (s *Server) SetTrustBundle(pem []byte) { s.secrets.setBundle(pem) }

// SetNodeCertificate records the chain (PEM) issued to node id, which it
// then gets as the wire.SecretWorkloadCert secret (chain only).
func (s *Server) SetNodeCertificate(id string, chainPEM []byte) {
	if id == "" {
		return
	}
	s.secrets.setChain(id, chainPEM)
}

// Admission decides whether a stream (its context carries who
// authenticated) may get config as a node, and returns the owner the
// node id is then bound to ("" for anonymous).
type Admission func(ctx context.Context, n model.Node) (owner string, err error)

// SetAdmission installs the admission check; nil (the default) admits
// every stream. Call it before Register.
func (s *Server) SetAdmission(a Admission) { s.admit = a }

// errNodeTaken refuses a node id connected under another owner.
func errNodeTaken(id, owner, want string) error {
	who := func(o string) string {
		if o == "" {
			return "an anonymous client"
		}
		return "an identity for " + o
	}
	return status.Errorf(codes.PermissionDenied, "node id %q is connected by %s; %s may not pose as it", id, who(owner), who(want))
}
