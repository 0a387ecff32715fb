package gateway

import (
	"errors"
	"io/fs"
	"path/filepath"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	// Types the control plane's gateway resources carry in Any fields,
	// linked so that the disk cache can encode them.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshvm/mesh/buildinfo"
	"github.com/meshvm/mesh/wire"
	"github.com/meshvm/mesh/xdsclient"
)

// nodeID names the gateway to the control plane: its service and node.
func (g *Gateway) nodeID() string { return g.cfg.Gateway.Name + "-" + g.node }

// xdsNode is the Node the gateway sends: role gateway (wire.NodeRole),
// user agent mesh-gateway.
func (g *Gateway) xdsNode() (*corev3.Node, error) {
	md, err := structpb.NewStruct(map[string]any{
		wire.NodeRole:             wire.RoleGateway,
		wire.NodeService:          g.cfg.Gateway.Name,
		wire.NodeGatewayHTTPSAddr: g.Addr("https"),
		wire.NodeGatewayHTTPAddr:  g.Addr("http"),
	})
	if err != nil {
		return nil, err
	}
	return &corev3.Node{
		Id:                   g.nodeID(),
		Cluster:              g.cfg.Gateway.Name,
		Metadata:             md,
		UserAgentName:        wire.GatewayUserAgent,
		UserAgentVersionType: &corev3.Node_UserAgentVersion{UserAgentVersion: buildinfo.Version},
	}, nil
}

func (g *Gateway) newXDSClient() (*xdsclient.Client, error) {
	node, err := g.xdsNode()
	if err != nil {
		return nil, err
	}
	m := g.obs.Metrics()
	servers := g.cfg.Gateway.ControlPlane
	opts := xdsclient.Options{
		Servers: servers, Node: node, Apply: g.applyXDS,
		Listeners: []string{wire.GatewayHTTPSListener, wire.GatewayHTTPListener},
		Initial:   g.cached, Log: g.base.With().Str("component", "xds").Logger(),
		OnConnection: func(server string, up bool) {
			if up {
				m.XDSConnected(server, servers...)
			} else {
				m.XDSDisconnected()
			}
		},
		OnResponse: m.XDSUpdate,
	}
	if g.ident != nil {
		g.ident.SecureXDS(&opts)
	}
	return xdsclient.New(opts)
}

func (g *Gateway) cachePath() string {
	return filepath.Join(g.cfg.Gateway.CacheDir, "xds-"+g.nodeID()+".json")
}

// initialServed is what the gateway starts with: the last good
// control-plane config from disk, else nothing routed.
func (g *Gateway) initialServed() (*served, xdsclient.Resources) {
	if len(g.cfg.Gateway.ControlPlane) > 0 {
		res, err := xdsclient.LoadCache(g.cachePath())
		switch {
		case err == nil:
			s, err := g.parseResources(res)
			if err == nil {
				err = g.compile(s)
			}
			if err == nil {
				g.log.Info().Str("cache", g.cachePath()).Str("version", s.version).Msg("starting from the cached control-plane config")
				return s, res
			}
			g.log.Warn().Err(err).Str("cache", g.cachePath()).Msg("ignoring unusable xds cache")
		case errors.Is(err, fs.ErrNotExist):
			g.log.Info().Msg("no cached control-plane config; nothing is routed until the control plane answers")
		default:
			g.log.Warn().Err(err).Str("cache", g.cachePath()).Msg("ignoring unreadable xds cache")
		}
	}
	return g.emptyServed(), xdsclient.Resources{}
}

// applyXDS is the xDS client's callback: parse, compile, swap. An error
// NACKs the update and the running config keeps serving.
func (g *Gateway) applyXDS(res xdsclient.Resources) error {
	s, err := g.parseResources(res)
	if err != nil {
		return err
	}
	g.swapMu.Lock()
	defer g.swapMu.Unlock()
	if err := g.compile(s); err != nil {
		return err
	}
	if c := cold(s, g.served.Load()); len(c) > 0 && g.served.Load().version != "none" {
		// Accepted (ACK), but held until the endpoints arrive: the next
		// response applies the whole set again; the timer applies this
		// one if none comes.
		if g.warming == nil {
			g.warmingSince = time.Now()
		}
		g.warming = &res
		if time.Since(g.warmingSince) < warmingTimeout {
			g.log.Debug().Strs("clusters", c).Str("version", s.version).Msg("config held: routed clusters without endpoints yet")
			if g.warmTimer == nil {
				g.warmTimer = time.AfterFunc(warmingTimeout, g.applyWarming)
			}
			return nil
		}
		g.log.Warn().Strs("clusters", c).Str("version", s.version).Msg("applying a config whose routed clusters got no endpoints in time")
	}
	g.warming = nil
	if g.warmTimer != nil {
		g.warmTimer.Stop()
		g.warmTimer = nil
	}
	g.install(s)
	routes := 0
	if s.routes != nil {
		for _, vh := range s.routes.VirtualHosts() {
			routes += len(vh.Routes)
		}
	}
	g.metrics.applied.Inc()
	g.log.Info().Str("version", s.version).Int("services", len(s.table.Services)).Int("routes", routes).Msg("applied control-plane config")
	g.saver.Offer(res)
	return nil
}

// applyWarming applies a held config once warmingTimeout passed without
// the endpoints it waited for.
func (g *Gateway) applyWarming() {
	g.swapMu.Lock()
	res := g.warming
	g.warmTimer = nil
	g.swapMu.Unlock()
	if res == nil {
		return
	}
	if err := g.applyXDS(*res); err != nil {
		g.log.Warn().Err(err).Msg("held config no longer applies")
	}
}
