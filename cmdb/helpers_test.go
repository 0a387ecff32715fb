package cmdb_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshvm/mesh/cmdb"
	"github.com/meshvm/mesh/config"
)

// testToken is what the fake CMDBs accept; no error may contain it.
const testToken = "s3cr3t-0123456789abcdef"

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fakeCMDB is a real HTTP server serving canned JSON by path and offset
// query, checking the token the way NetBox does (403 with a detail).
type fakeCMDB struct {
	t          *testing.T
	authHeader string // e.g. "Authorization"
	authValue  string // e.g. "Token s3cr3t..."
	srv        *httptest.Server

	mu       sync.Mutex
	pages    map[string][]byte // key: path, or path + "@" + offset
	override http.HandlerFunc  // when set, answers everything
	requests []*http.Request
}

func newFakeCMDB(t *testing.T, authHeader, authValue string) *fakeCMDB {
	f := &fakeCMDB{t: t, authHeader: authHeader, authValue: authValue, pages: map[string][]byte{}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeCMDB) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.requests = append(f.requests, r.Clone(context.Background()))
	override := f.override
	key := r.URL.Path
	if off := r.URL.Query().Get("offset"); off != "" {
		key += "@" + off
	}
	body, ok := f.pages[key]
	f.mu.Unlock()
	if override != nil {
		override(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if r.Header.Get(f.authHeader) != f.authValue {
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`{"detail": "Invalid token"}`))
		return
	}
	if !ok {
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"detail": "Not found."}`))
		return
	}
	_, _ = w.Write(body)
}

func (f *fakeCMDB) set(key string, body []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pages[key] = body
}

func (f *fakeCMDB) setOverride(h http.HandlerFunc) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.override = h
}

func (f *fakeCMDB) requestLog() []*http.Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*http.Request(nil), f.requests...)
}

func (f *fakeCMDB) url() string { return f.srv.URL }

// genericConfig is the default config pointing at url.
func genericConfig(url string) config.CMDB {
	c := config.Default().Control.CMDB
	c.URL = url
	c.Token = testToken
	c.Timeout = 2 * time.Second
	return c
}

// noToken fails if err mentions the token.
func noToken(t *testing.T, err error) {
	t.Helper()
	if err != nil && strings.Contains(err.Error(), testToken) {
		t.Fatalf("error leaks the token: %v", err)
	}
}

func skippedOf(t *testing.T, err error) *cmdb.SkippedError {
	t.Helper()
	var se *cmdb.SkippedError
	if !errors.As(err, &se) {
		t.Fatalf("want *cmdb.SkippedError, got %v", err)
	}
	return se
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

// jsonEdit decodes a testdata page, lets edit change it and re-encodes it.
func jsonEdit(t *testing.T, data []byte, edit func(page map[string]any)) []byte {
	t.Helper()
	var page map[string]any
	if err := json.Unmarshal(data, &page); err != nil {
		t.Fatal(err)
	}
	edit(page)
	out, err := json.Marshal(page)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// hostByName indexes hosts for assertions.
func hostByName(hosts []cmdb.Host) map[string]cmdb.Host {
	m := map[string]cmdb.Host{}
	for _, h := range hosts {
		m[h.Hostname] = h
	}
	return m
}
