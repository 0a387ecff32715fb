package certstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"golang.org/x/crypto/ocsp"
)

// OCSP stapling for the certificates from files: crypto/tls sends a
// certificate's OCSPStaple but fetches none, and autocert staples nothing,
// so the store fetches them itself. A certificate naming an OCSP responder
// and carrying its issuer in the chain gets the responder's answer, checked
// (signed for this certificate by its issuer, status good, not past its
// next update), stapled to new handshakes and refreshed halfway to its next
// update. A responder that fails or answers badly leaves the certificate
// served as before (with the last good staple while it is still valid,
// else none) and is retried after a minute. ACME certificates are not
// stapled.

const (
	ocspRetry    = time.Minute
	ocspMaxBytes = 1 << 20
)

// staple is one certificate's last good OCSP response.
type staple struct {
	der       []byte
	next      time.Time // the response's NextUpdate (zero: none given)
	refreshAt time.Time
}

// stapleKey names a certificate by its leaf's DER.
func stapleKey(c *tls.Certificate) [32]byte { return sha256.Sum256(c.Certificate[0]) }

// refreshStaples fetches the responses that are due and, when any
// changed, swaps in an index whose certificates carry them. Only Run
// calls it.
func (s *Store) refreshStaples(ctx context.Context, now time.Time) {
	idx := s.cur.Load()
	if idx == nil {
		return
	}
	if s.staples == nil {
		s.staples = map[[32]byte]*staple{}
	}
	seen := map[[32]byte]bool{}
	for _, c := range idx.all() {
		if len(c.Leaf.OCSPServer) == 0 || len(c.Certificate) < 2 {
			continue
		}
		k := stapleKey(c)
		seen[k] = true
		st := s.staples[k]
		if st != nil && now.Before(st.refreshAt) {
			continue
		}
		der, resp, err := s.fetchOCSP(ctx, c)
		if err != nil {
			s.log.Warn().Err(err).Str("certificate", c.Leaf.Subject.CommonName).Msg("ocsp staple not refreshed; retrying in a minute")
			if st == nil {
				st = &staple{}
				s.staples[k] = st
			}
			st.refreshAt = now.Add(ocspRetry)
			continue
		}
		st = &staple{der: der, next: resp.NextUpdate, refreshAt: now.Add(ocspRetry)}
		if !resp.NextUpdate.IsZero() {
			if half := resp.ThisUpdate.Add(resp.NextUpdate.Sub(resp.ThisUpdate) / 2); half.After(st.refreshAt) {
				st.refreshAt = half
			}
		}
		s.staples[k] = st
	}
	for k := range s.staples {
		if !seen[k] {
			delete(s.staples, k)
		}
	}
	s.applyStaples(idx, now)
}

// applyStaples swaps in a copy of idx whose certificates carry their
// valid staples, unless a reload replaced idx meanwhile (the next round
// staples that one) or nothing would change.
func (s *Store) applyStaples(idx *index, now time.Time) {
	repl := map[*tls.Certificate]*tls.Certificate{}
	for _, c := range idx.all() {
		var want []byte
		if st := s.staples[stapleKey(c)]; st != nil && st.der != nil && (st.next.IsZero() || now.Before(st.next)) {
			want = st.der
		}
		if !bytes.Equal(c.OCSPStaple, want) {
			cp := *c
			cp.OCSPStaple = want
			repl[c] = &cp
		}
	}
	if len(repl) == 0 {
		return
	}
	sw := func(c *tls.Certificate) *tls.Certificate {
		if r := repl[c]; r != nil {
			return r
		}
		return c
	}
	next := &index{exact: map[string]*tls.Certificate{}, wildcard: map[string]*tls.Certificate{}, stamps: idx.stamps}
	for n, c := range idx.exact {
		next.exact[n] = sw(c)
	}
	for n, c := range idx.wildcard {
		next.wildcard[n] = sw(c)
	}
	if idx.def != nil {
		next.def = sw(idx.def)
	}
	s.cur.CompareAndSwap(idx, next)
}

// fetchOCSP asks c's responder about c and checks the answer.
func (s *Store) fetchOCSP(ctx context.Context, c *tls.Certificate) ([]byte, *ocsp.Response, error) {
	issuer, err := x509.ParseCertificate(c.Certificate[1])
	if err != nil {
		return nil, nil, fmt.Errorf("ocsp: parse the issuer in the chain: %w", err)
	}
	body, err := ocsp.CreateRequest(c.Leaf, issuer, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("ocsp: request: %w", err)
	}
	url := c.Leaf.OCSPServer[0]
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, nil, fmt.Errorf("ocsp: %s: %w", url, err)
	}
	req.Header.Set("Content-Type", "application/ocsp-request")
	req.Header.Set("Accept", "application/ocsp-response")
	resp, err := s.ocspClient.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("ocsp: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("ocsp: POST %s: %s", url, resp.Status)
	}
	der, err := io.ReadAll(io.LimitReader(resp.Body, ocspMaxBytes))
	if err != nil {
		return nil, nil, fmt.Errorf("ocsp: POST %s: %w", url, err)
	}
	r, err := ocsp.ParseResponseForCert(der, c.Leaf, issuer)
	if err != nil {
		return nil, nil, fmt.Errorf("ocsp: %s answered: %w", url, err)
	}
	switch {
	case r.Status == ocsp.Revoked:
		return nil, nil, fmt.Errorf("ocsp: %s says the certificate was revoked at %s", url, r.RevokedAt.UTC().Format(time.RFC3339))
	case r.Status != ocsp.Good:
		return nil, nil, errors.New("ocsp: " + url + " does not know the certificate")
	case !r.NextUpdate.IsZero() && !time.Now().Before(r.NextUpdate):
		return nil, nil, fmt.Errorf("ocsp: %s answered with a response past its next update", url)
	}
	return der, r, nil
}

// all lists idx's distinct certificates.
func (idx *index) all() []*tls.Certificate {
	seen := map[*tls.Certificate]bool{}
	var out []*tls.Certificate
	add := func(c *tls.Certificate) {
		if c != nil && !seen[c] {
			seen[c] = true
			out = append(out, c)
		}
	}
	for _, c := range idx.exact {
		add(c)
	}
	for _, c := range idx.wildcard {
		add(c)
	}
	add(idx.def)
	return out
}
