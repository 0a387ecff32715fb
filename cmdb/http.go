package cmdb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/meshvm/mesh/buildinfo"
)

// getter performs the bounded, authenticated GETs both formats need. It
// keeps the token out of every error it returns.
type getter struct {
	client   *http.Client
	header   string // auth header name; "" sends no token
	value    string // auth header value (secret)
	token    string // for redaction
	timeout  time.Duration
	maxBytes int64
}

func newGetter(client *http.Client, header, scheme, token string, timeout time.Duration, maxBytes int64) *getter {
	if client == nil {
		client = &http.Client{}
	}
	g := &getter{client: client, token: token, timeout: timeout, maxBytes: maxBytes}
	if token != "" {
		g.header = header
		g.value = token
		if scheme != "" && !strings.EqualFold(scheme, "none") {
			g.value = scheme + " " + token
		}
	}
	return g
}

// get fetches u and returns its body, failing on a non-2xx status, a body
// larger than maxBytes (never truncated) or the per-request timeout.
func (g *getter) get(ctx context.Context, u *url.URL) (body []byte, contentType string, err error) {
	where := "GET " + u.Redacted()
	if g.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, g.timeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", where, err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "mesh/"+buildinfo.Version)
	if g.header != "" {
		req.Header.Set(g.header, g.value)
	}
	resp, err := g.client.Do(req)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %s", where, g.describe(ctx, err))
	}
	defer resp.Body.Close()
	contentType = resp.Header.Get("Content-Type")
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		msg := fmt.Sprintf("%s: status %s", where, resp.Status)
		if s := g.clean(snippet); s != "" {
			msg += ": " + s
		}
		return nil, contentType, errors.New(msg)
	}
	if g.maxBytes > 0 && resp.ContentLength > g.maxBytes {
		return nil, contentType, fmt.Errorf("%s: response of %d bytes is larger than max_bytes (%d)", where, resp.ContentLength, g.maxBytes)
	}
	r := io.Reader(resp.Body)
	if g.maxBytes > 0 {
		r = io.LimitReader(resp.Body, g.maxBytes+1)
	}
	body, err = io.ReadAll(r)
	if err != nil {
		return nil, contentType, fmt.Errorf("%s: read body: %s", where, g.describe(ctx, err))
	}
	if g.maxBytes > 0 && int64(len(body)) > g.maxBytes {
		return nil, contentType, fmt.Errorf("%s: response is larger than max_bytes (%d)", where, g.maxBytes)
	}
	return body, contentType, nil
}

// describe renders a transport error, naming a timeout as such, without
// the token (which is never in a URL or transport error, but make sure).
func (g *getter) describe(ctx context.Context, err error) string {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Sprintf("timed out after %s", g.timeout)
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		return "canceled"
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return g.redact(err.Error())
}

// clean makes a short, printable, token-free excerpt of an error body.
func (g *getter) clean(b []byte) string {
	s := strings.ToValidUTF8(string(b), "")
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == utf8.RuneError {
			return ' '
		}
		return r
	}, s)
	s = g.redact(strings.Join(strings.Fields(s), " "))
	if len(s) > 200 {
		s = strings.ToValidUTF8(s[:200], "") + "..."
	}
	return s
}

func (g *getter) redact(s string) string {
	if g.token == "" {
		return s
	}
	return strings.ReplaceAll(s, g.token, "<redacted>")
}

// jsonError explains a body that is not JSON, naming a non-JSON content
// type (an HTML login page or proxy error) when there is one.
func jsonError(contentType string, err error) error {
	if contentType != "" {
		if mt, _, perr := mime.ParseMediaType(contentType); perr == nil && mt != "application/json" && !strings.HasSuffix(mt, "+json") {
			return fmt.Errorf("%w (content-type %s)", err, mt)
		}
	}
	return err
}
