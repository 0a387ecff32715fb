// Package meshctl is the operator's view of a running mesh: `mesh status`
// (services, and every connected proxy's sync state) and `mesh inspect`
// (what one proxy was sent; who calls a service and how well). It talks
// to mesh control's admin listener over HTTP (the JSON API of package
// meshapi, and /config_dump), so it needs no role: it runs from any
// machine that can reach the admin address.
package meshctl

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// DefaultAdmin is mesh control's default admin address.
const DefaultAdmin = "127.0.0.1:19000"

// ExitOutOfSync is the exit status of `mesh status` when a proxy is not
// in sync (or the control plane serves no model yet): 1 is kept for
// errors (the control plane cannot be reached) and 2 for bad usage.
const ExitOutOfSync = 3

// exitStatus makes main exit with a status and print nothing more.
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }
func (e exitStatus) ExitCode() int { return int(e) }

// client reads the admin API of one control plane.
type client struct {
	base string
	http *http.Client
}

func newClient(admin string) (*client, error) {
	if admin == "" {
		admin = DefaultAdmin
	}
	if !strings.Contains(admin, "://") {
		admin = "http://" + admin
	}
	u, err := url.Parse(admin)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("--control-plane-admin %q is not host:port or a URL", admin)
	}
	return &client{base: strings.TrimSuffix(u.String(), "/"), http: &http.Client{Timeout: 10 * time.Second}}, nil
}

// get decodes the JSON at path into v; a non-200 answer is an error
// carrying the body's "error" when it has one.
func (c *client) get(ctx context.Context, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("ask mesh control at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return fmt.Errorf("read %s%s: %w", c.base, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s%s: %s", c.base, path, e.Error)
		}
		return fmt.Errorf("%s%s: %s: %s", c.base, path, resp.Status, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("decode %s%s: %w", c.base, path, err)
	}
	return nil
}

// commonFlags adds --control-plane-admin and --output to cmd.
func commonFlags(cmd *cobra.Command) {
	cmd.Flags().String("control-plane-admin", DefaultAdmin, "mesh control's admin address (host:port or URL)")
	cmd.Flags().StringP("output", "o", "table", "output format: table or json")
}

func flags(cmd *cobra.Command) (*client, string, error) {
	admin, _ := cmd.Flags().GetString("control-plane-admin")
	out, _ := cmd.Flags().GetString("output")
	if out != "table" && out != "json" {
		return nil, "", fmt.Errorf("--output %q: write table or json", out)
	}
	c, err := newClient(admin)
	return c, out, err
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// short is a version cut for a table.
func short(v string) string {
	if len(v) > 12 {
		return v[:12]
	}
	if v == "" {
		return "-"
	}
	return v
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
