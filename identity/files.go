package identity

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"time"

	"github.com/rs/zerolog"
)

// Files is an identity written to disk by the operator's PKI or SPIRE
// (spiffe-helper) rather than issued by mesh control: a certificate chain
// (PEM, leaf first), its private key and the trust bundle. Watch reloads
// them when they change, as Istio reloads file-mounted certificates: new
// handshakes use the new files, connections already up finish with theirs.
type Files struct {
	CertFile, KeyFile, BundleFile string
	// Creds receive the identity.
	Creds *Credentials
	Log   zerolog.Logger
	// Interval between checks of the files (default 1s).
	Interval time.Duration

	last [3][]byte
}

// Load reads the three files and installs them if they differ from what
// is installed. A bad set (unreadable, mismatched key, not chaining to the
// bundle, expired) is an error and the installed identity stays. It
// reports whether it installed a new one.
func (f *Files) Load(now time.Time) (bool, error) {
	var got [3][]byte
	for i, p := range []string{f.CertFile, f.KeyFile, f.BundleFile} {
		b, err := os.ReadFile(p)
		if err != nil {
			return false, fmt.Errorf("read identity file: %w", err)
		}
		got[i] = b
	}
	if bytes.Equal(got[0], f.last[0]) && bytes.Equal(got[1], f.last[1]) && bytes.Equal(got[2], f.last[2]) {
		return false, nil
	}
	if err := f.Creds.Set(got[0], got[1], got[2], now); err != nil {
		return false, fmt.Errorf("identity files %s, %s, %s: %w", f.CertFile, f.KeyFile, f.BundleFile, err)
	}
	if leaf := f.Creds.Leaf(); leaf != nil && now.After(leaf.NotAfter) {
		return true, fmt.Errorf("identity file %s: the certificate expired at %s", f.CertFile, leaf.NotAfter.Format(time.RFC3339))
	}
	f.last = got
	return true, nil
}

// Watch checks the files every Interval until ctx ends and installs a set
// that changed. Files written one after the other may be seen half
// updated (a new certificate with the old key): that set is refused and
// the next check, once all are written, installs it; a problem that
// persists is logged once until it changes.
func (f *Files) Watch(ctx context.Context) error {
	iv := f.Interval
	if iv <= 0 {
		iv = time.Second
	}
	t := time.NewTicker(iv)
	defer t.Stop()
	lastErr, repeats := "", 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		changed, err := f.Load(time.Now())
		switch {
		case err != nil:
			if err.Error() != lastErr {
				lastErr, repeats = err.Error(), 0
			}
			repeats++
			// A pair being written is normal for one check: say it at
			// debug first, warn once if it is still wrong next time.
			switch repeats {
			case 1:
				f.Log.Debug().Err(err).Msg("identity files not loaded; the current certificate stays")
			case 2:
				f.Log.Warn().Err(err).Msg("identity files not loaded; the current certificate stays")
			}
		case changed:
			lastErr, repeats = "", 0
			leaf := f.Creds.Leaf()
			f.Log.Info().Str("identity", f.Creds.ID().String()).Str("serial", leaf.SerialNumber.String()).
				Time("expiry", leaf.NotAfter).Msg("identity files reloaded")
		}
	}
}
