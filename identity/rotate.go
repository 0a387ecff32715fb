package identity

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Issuer turns a CSR into a signed certificate chain (PEM, leaf first)
// and the current trust bundle (PEM). The agent's implementation asks mesh
// control, presenting its join token or its current certificate.
type Issuer interface {
	Issue(ctx context.Context, csrDER []byte) (chainPEM, bundlePEM []byte, err error)
}

// Rotator keeps Credentials current for one identity: it generates a new
// key on this machine for every certificate (the key never leaves it),
// asks the Issuer to sign, installs the result, and renews at half of the
// certificate's lifetime with jitter; a failed renewal is retried with
// backoff while the current certificate stays in use until it expires. The
// certificate, key (0600) and bundle are cached in Dir, so a restart while
// the control plane is down serves with them until they expire.
type Rotator struct {
	ID     ID
	Dir    string
	Issuer Issuer
	Creds  *Credentials
	Log    zerolog.Logger
	// Now may be nil for time.Now.
	Now func() time.Time
	// MinRetry and MaxRetry bound the backoff after a failed issue
	// (defaults 1s and 1m).
	MinRetry, MaxRetry time.Duration

	kickOnce sync.Once
	kick     chan struct{}
	// renewAt is when the certificate Rotate installed is due, from the
	// time it arrived (its NotBefore is backdated for clock skew, which
	// would put short lifetimes' half-life after their expiry).
	renewAt time.Time
}

func (r *Rotator) kicks() chan struct{} {
	r.kickOnce.Do(func() { r.kick = make(chan struct{}, 1) })
	return r.kick
}

// RenewNow asks Run to renew at once (a new trust bundle the current
// certificate no longer chains to).
func (r *Rotator) RenewNow() {
	select {
	case r.kicks() <- struct{}{}:
	default:
	}
}

// InstallBundle installs a trust bundle pushed by the control plane (SDS)
// beside the current certificate and caches it; when the certificate no
// longer chains to it, a renewal starts at once.
func (r *Rotator) InstallBundle(bundlePEM []byte) error {
	chains, err := r.Creds.SetBundle(bundlePEM, r.now())
	if err != nil {
		return err
	}
	if r.Dir != "" {
		if err := WriteFileAtomic(filepath.Join(r.Dir, cacheBundle), bundlePEM, 0o644); err != nil {
			return fmt.Errorf("identity cache: %w", err)
		}
	}
	if !chains {
		r.RenewNow()
	}
	return nil
}

// Cache file names in Dir.
const (
	cacheCert   = "cert.pem"
	cacheKey    = "key.pem"
	cacheBundle = "bundle.pem"
)

func (r *Rotator) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// LoadCache installs the cached certificate if one is there, still valid
// and for r.ID. It reports whether it did.
func (r *Rotator) LoadCache() (bool, error) {
	chain, err := os.ReadFile(filepath.Join(r.Dir, cacheCert))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("identity cache: %w", err)
	}
	key, err := os.ReadFile(filepath.Join(r.Dir, cacheKey))
	if err != nil {
		return false, fmt.Errorf("identity cache: %w", err)
	}
	bundle, err := os.ReadFile(filepath.Join(r.Dir, cacheBundle))
	if err != nil {
		return false, fmt.Errorf("identity cache: %w", err)
	}
	var c Credentials
	if err := c.Set(chain, key, bundle, r.now()); err != nil {
		return false, fmt.Errorf("identity cache: %w", err)
	}
	if c.ID() != r.ID {
		return false, fmt.Errorf("identity cache holds %s, want %s", c.ID(), r.ID)
	}
	r.Creds.cur.Store(c.cur.Load()) // checked once, installed as it is
	return true, nil
}

// Rotate gets a new certificate now and installs and caches it.
func (r *Rotator) Rotate(ctx context.Context) error {
	key, err := NewKey()
	if err != nil {
		return err
	}
	csr, err := NewCSR(key, r.ID)
	if err != nil {
		return err
	}
	chain, bundle, err := r.Issuer.Issue(ctx, csr)
	if err != nil {
		return fmt.Errorf("issue %s: %w", r.ID, err)
	}
	keyPEM, err := EncodeKey(key)
	if err != nil {
		return err
	}
	now := r.now()
	if err := r.Creds.Set(chain, keyPEM, bundle, now); err != nil {
		return fmt.Errorf("issued certificate for %s: %w", r.ID, err)
	}
	r.renewAt = renewFrom(now, r.Creds.Expiry())
	if r.Dir != "" {
		if err := os.MkdirAll(r.Dir, 0o700); err != nil {
			return fmt.Errorf("identity cache: %w", err)
		}
		// Key first: a crash between the writes leaves a key without its
		// certificate, which LoadCache refuses, never the reverse.
		for _, f := range []struct {
			name string
			data []byte
			mode os.FileMode
		}{{cacheKey, keyPEM, 0o600}, {cacheCert, chain, 0o644}, {cacheBundle, bundle, 0o644}} {
			if err := WriteFileAtomic(filepath.Join(r.Dir, f.name), f.data, f.mode); err != nil {
				return fmt.Errorf("identity cache: %w", err)
			}
		}
	}
	return nil
}

// RenewAt is when the current certificate should be renewed: half of its
// lifetime, plus or minus 10% of it at random.
func RenewAt(leaf *x509.Certificate) time.Time {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	jitter := time.Duration((rand.Float64()*0.2 - 0.1) * float64(life))
	return leaf.NotBefore.Add(life/2 + jitter)
}

// renewFrom is half of the remaining life from got to notAfter, plus or
// minus 10% of it at random.
func renewFrom(got, notAfter time.Time) time.Time {
	life := notAfter.Sub(got)
	jitter := time.Duration((rand.Float64()*0.2 - 0.1) * float64(life))
	return got.Add(life/2 + jitter)
}

// Run renews until ctx is done. It starts from the cache when it holds a
// valid certificate, else issues one at once.
func (r *Rotator) Run(ctx context.Context) error {
	log := r.Log.With().Str("component", "identity").Str("spiffe_id", r.ID.String()).Logger()
	if ok, err := r.LoadCache(); err != nil {
		log.Warn().Err(err).Msg("identity cache not used")
	} else if ok {
		log.Info().Time("expires", r.Creds.Expiry()).Msg("serving with the cached certificate")
	}
	minRetry, maxRetry := r.MinRetry, r.MaxRetry
	if minRetry <= 0 {
		minRetry = time.Second
	}
	if maxRetry <= 0 {
		maxRetry = time.Minute
	}
	retry := minRetry
	for {
		wait := time.Duration(0)
		if leaf := r.Creds.Leaf(); leaf != nil {
			at := r.renewAt
			if at.IsZero() || at.After(leaf.NotAfter) {
				at = RenewAt(leaf)
			}
			wait = at.Sub(r.now())
		}
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			case <-r.kicks():
				t.Stop()
			}
		}
		err := r.Rotate(ctx)
		if err == nil {
			retry = minRetry
			log.Info().Time("expires", r.Creds.Expiry()).Msg("certificate issued")
			continue
		}
		if ctx.Err() != nil {
			return nil
		}
		ev := log.Warn()
		if exp := r.Creds.Expiry(); !exp.IsZero() {
			ev = ev.Time("current_expires", exp)
		}
		ev.Err(err).Dur("retry_in", retry).Msg("certificate renewal failed; the current certificate stays in use")
		t := time.NewTimer(retry)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		retry = min(2*retry, maxRetry)
	}
}
