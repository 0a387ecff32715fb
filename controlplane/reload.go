package controlplane

import (
	"context"
	"fmt"
	"reflect"
	"strings"

	"github.com/rs/zerolog"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/source/cmdbsource"
	"github.com/meshvm/mesh/sdnotify"
)

// cmdbChanged reports whether the CMDB poller must be rebuilt for next:
// any CMDB setting but the draining statuses, which the merge applies.
// The token is compared too (config.Load reads token_file), so a reload
// picks up a rotated token.
func cmdbChanged(old, next config.CMDB) bool {
	old.DrainingStatuses, next.DrainingStatuses = nil, nil
	return !reflect.DeepEqual(old, next)
}

// Reload applies a new, validated config to the running control plane
// without dropping an xDS stream: policies (every node gets the new
// clusters, routes and listeners; versions are content hashes, so only
// changed resources are pushed), control.debounce, the CMDB's draining
// statuses, and the other CMDB settings, by restarting the CMDB poller
// (the last good CMDB view stays in force until the new poller delivers).
// It returns the changed settings that need a restart (config.RestartOnly;
// their running values are kept). On error nothing has changed. The log
// level is the caller's: see ReloadFrom.
func (c *Control) Reload(ctx context.Context, next config.Config) (needRestart []string, err error) {
	c.reloadMu.Lock()
	defer c.reloadMu.Unlock()
	old := c.config()
	needRestart = config.RestartOnly(config.RoleControl, old, next)
	next = config.KeepRestartOnly(config.RoleControl, old, next)

	// Build the new poller before anything changes: a CMDB config it
	// cannot use leaves everything as it was.
	swapCMDB := cmdbChanged(old.Control.CMDB, next.Control.CMDB)
	var poller *cmdbsource.Source
	if swapCMDB && next.Control.CMDB.URL != "" {
		if poller, err = c.newCMDB(next.Control.CMDB); err != nil {
			return nil, err
		}
	}
	s := settingsOf(next)
	if s.gateway, err = gatewaySettings(next.Control.Gateway); err != nil {
		return nil, err
	}
	if err := c.rec.reconfigure(ctx, s); err != nil {
		return nil, fmt.Errorf("apply the new config: %w", err)
	}
	if swapCMDB {
		c.cmdb.swap(poller)
		if poller == nil {
			c.log.Info().Msg("cmdb disabled by reload; its metadata is dropped")
		} else {
			c.log.Info().Str("format", next.Control.CMDB.Format).Dur("interval", next.Control.CMDB.Interval).
				Msg("cmdb poller restarted with the reloaded settings; the last cmdb view stays until it delivers")
		}
	}
	c.setConfig(next)
	return needRestart, nil
}

// ReloadFrom re-reads the config with load and applies it (Reload) and
// the log level, telling systemd (RELOADING=1, then READY=1, with a STATUS
// line) and the metrics (mesh_config_reloads_total{result}) how it went. A
// config that does not load or apply is reported and the running one
// stays. Before READY=1 was first sent it tells systemd only of a failure.
func (c *Control) ReloadFrom(ctx context.Context, load func() (*config.Config, error)) error {
	notify := c.notified.Load()
	if notify {
		_ = sdnotify.Reloading()
		defer func() { _ = sdnotify.Ready() }()
	}
	c.log.Info().Msg("reloading the config")
	err := func() error {
		next, err := load()
		if err != nil {
			return err
		}
		needRestart, err := c.Reload(ctx, *next)
		if err != nil {
			return err
		}
		if level, err := zerolog.ParseLevel(next.Log.Level); err == nil {
			zerolog.SetGlobalLevel(level)
		}
		if len(needRestart) > 0 {
			c.log.Warn().Strs("settings", needRestart).Msg("config reloaded, but these changed settings need a restart to take effect; their running values are kept")
			if notify {
				_ = sdnotify.Status("config reloaded; restart needed for " + strings.Join(needRestart, ", "))
			}
		} else {
			c.log.Info().Msg("config reloaded")
			if notify {
				_ = sdnotify.Status("ready (config reloaded)")
			}
		}
		return nil
	}()
	if err != nil {
		c.rec.metrics.reloads.WithLabelValues("error").Inc()
		c.log.Error().Err(err).Msg("config reload failed; the running config stays")
		_ = sdnotify.Status("config reload failed, running config kept: " + err.Error())
		return err
	}
	c.rec.metrics.reloads.WithLabelValues("ok").Inc()
	return nil
}
