package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshvm/mesh/buildinfo"
	"github.com/meshvm/mesh/dataplane/chain"
	"github.com/meshvm/mesh/dataplane/table"
	"github.com/meshvm/mesh/dataplane/xdsconf"
	"github.com/meshvm/mesh/wire"
	"github.com/meshvm/mesh/xdsclient"
)

// nodeID is how the agent names itself to the control plane: the same
// string as its Consul service ID, unique per node and app port.
func (a *Agent) nodeID() string {
	return fmt.Sprintf("%s-%s-%d", a.config().Agent.Service, a.nodeName, a.config().Agent.AppPort)
}

// xdsNode is the Node the agent sends: its id, locality, and the metadata
// `mesh control` reads (package wire).
func (a *Agent) xdsNode() (*corev3.Node, error) {
	c := a.config().Agent
	md, err := structpb.NewStruct(map[string]any{
		wire.NodeService:      c.Service,
		wire.NodeAppPort:      strconv.Itoa(c.AppPort),
		wire.NodeAppAddress:   c.AppAddress,
		wire.NodeInboundAddr:  a.Addr("inbound"),
		wire.NodeOutboundAddr: a.Addr("outbound"),
	})
	if err != nil {
		return nil, err
	}
	return &corev3.Node{
		Id:            a.nodeID(),
		Cluster:       c.Service,
		Metadata:      md,
		Locality:      &corev3.Locality{Region: c.Locality.Region, Zone: c.Locality.Zone},
		UserAgentName: wire.AgentUserAgent,
		UserAgentVersionType: &corev3.Node_UserAgentVersion{
			UserAgentVersion: buildinfo.Version,
		},
	}, nil
}

func (a *Agent) cachePath() string {
	return filepath.Join(a.config().Agent.CacheDir, "xds-"+a.nodeID()+".json")
}

// initialTable is the table the agent starts with: with a control plane,
// the last good config from disk if there is one; otherwise (or without
// a cache) Consul-direct discovery with the policies of the local config.
func (a *Agent) initialTable() (*table.Table, xdsclient.Resources) {
	if len(a.config().Agent.ControlPlane) > 0 {
		res, err := xdsclient.LoadCache(a.cachePath())
		switch {
		case err == nil:
			if t, err := xdsconf.Translate(res); err == nil {
				a.log.Info().Str("cache", a.cachePath()).Str("version", t.Version).Msg("starting from the cached control-plane config")
				return t, res
			} else {
				a.log.Warn().Err(err).Str("cache", a.cachePath()).Msg("ignoring unusable xds cache")
			}
		case errors.Is(err, fs.ErrNotExist):
			a.log.Info().Msg("no cached control-plane config; using Consul-direct discovery until the control plane answers")
		default:
			a.log.Warn().Err(err).Str("cache", a.cachePath()).Msg("ignoring unreadable xds cache")
		}
	}
	return table.FromConfig(a.config()), xdsclient.Resources{}
}

// applyXDS is the xDS client's callback: translate, compile, swap. An
// error NACKs the update and leaves the running handlers alone.
func (a *Agent) applyXDS(res xdsclient.Resources) error {
	t, err := xdsconf.Translate(res)
	if err != nil {
		return err
	}
	a.swapMu.Lock()
	defer a.swapMu.Unlock()
	h, err := chain.Compile(t, nil, a.local, a.forwarder, a.state, a.base)
	if err != nil {
		return fmt.Errorf("compile table %s: %w", t.Version, err)
	}
	a.handlers.Swap(h)
	if a.scope != nil {
		a.scope.applied(res)
	}
	a.log.Info().Str("version", t.Version).Int("services", len(t.Services)).Msg("applied control-plane config")
	a.saver.Offer(res)
	return nil
}
