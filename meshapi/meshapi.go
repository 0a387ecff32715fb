// Package meshapi is the JSON API of `mesh control`'s admin listener that
// `mesh status`, `mesh inspect` and the /ui dashboard read: the types of
// /api/v1/status (services and connected proxies with their sync state)
// and /api/v1/traffic (calls between services, from load reports). Both
// the control plane (which writes them) and the CLI (which reads them over
// HTTP) import it; it imports nothing of mesh.
package meshapi

import (
	"encoding/json"
	"time"
)

// Paths on the admin listener.
const (
	StatusPath  = "/api/v1/status"
	TrafficPath = "/api/v1/traffic"
	// ConfigDumpPath?node=ID is one node's resources as protobuf JSON
	// by type (cluster, endpoint, listener, route): what mesh inspect reads.
	ConfigDumpPath = "/config_dump"
	// EventsPath streams Overview as server-sent events ("overview"),
	// for the dashboard.
	EventsPath = "/api/v1/events"
)

// Sync states of a proxy and of each resource type it receives.
const (
	// InSync: the proxy ACKed the version it was last sent, and that is
	// the version it should have.
	InSync = "in sync"
	// Stale: a newer version was sent or is due and not ACKed yet (for
	// longer than a push takes, or the proxy is waiting for its first).
	Stale = "stale"
	// NACKed: the proxy rejected the last version it was sent.
	NACKed = "nacked"
)

// Proxy kinds.
const (
	KindAgent     = "agent"
	KindGateway   = "gateway"
	KindEnvoy     = "envoy"
	KindProxyless = "proxyless"
)

// Status is /api/v1/status.
type Status struct {
	GeneratedAt time.Time `json:"generated_at"`
	// Ready is whether the control plane serves a model.
	Ready    bool      `json:"ready"`
	Services []Service `json:"services"`
	Proxies  []Proxy   `json:"proxies"`
	// InSync is true when every proxy is in sync.
	InSync bool `json:"in_sync"`
}

// Service is one service of the model.
type Service struct {
	Name      string `json:"name"`
	Instances int    `json:"instances"`
	Healthy   int    `json:"healthy"`
	Draining  int    `json:"draining"`
	// Localities are "region/zone" of its instances, sorted.
	Localities []string `json:"localities"`
	// Protocol is what its instances registered (http1, http2, grpc, tcp,
	// auto).
	Protocol string `json:"protocol,omitempty"`
	// Policy is the policy in force, in the config's language (the
	// service page; with ?service=NAME).
	Policy json.RawMessage `json:"policy,omitempty"`
	// Endpoints are its instances (the service page).
	Endpoints []Endpoint `json:"endpoints,omitempty"`
}

// Endpoint is one instance of a service.
type Endpoint struct {
	ID       string `json:"id"`
	Node     string `json:"node"`
	Address  string `json:"address"`
	Health   string `json:"health"`
	Locality string `json:"locality"`
}

// Proxy is one connected xDS client.
type Proxy struct {
	Node     string `json:"node"`
	Service  string `json:"service,omitempty"`
	Kind     string `json:"kind"`
	Locality string `json:"locality,omitempty"`
	Streams  int    `json:"streams"`
	// State is InSync, Stale or NACKed (the worst of its types).
	State string `json:"state"`
	// Reason says why it is not in sync (the NACK's detail).
	Reason string      `json:"reason,omitempty"`
	Types  []TypeState `json:"types"`
	// CertExpiry is when its workload certificate expires, when known.
	CertExpiry *time.Time `json:"cert_expiry,omitempty"`
	Connected  time.Time  `json:"connected"`
}

// TypeState is what one proxy holds of one resource type.
type TypeState struct {
	Type string `json:"type"` // cluster, endpoint, listener, route
	// Want is the version it should have; Sent the last sent; Acked the
	// last it accepted.
	Want  string `json:"want,omitempty"`
	Sent  string `json:"sent,omitempty"`
	Acked string `json:"acked,omitempty"`
	State string `json:"state"`
	// NACK is the detail of its last rejection, while it stands.
	NACK string `json:"nack,omitempty"`
}

// Traffic is /api/v1/traffic: what callers sent to callees over the
// recent window, from load reports.
type Traffic struct {
	GeneratedAt time.Time `json:"generated_at"`
	// WindowSeconds is the span rates are measured over.
	WindowSeconds float64 `json:"window_seconds"`
	// IntervalSeconds is the load reporting interval asked of proxies.
	IntervalSeconds float64 `json:"interval_seconds"`
	Edges           []Edge  `json:"edges"`
}

// Edge is the calls of one caller service to one callee service.
type Edge struct {
	Caller string `json:"caller"`
	Callee string `json:"callee"`
	// RPS is requests issued per second over the window; ErrorRatio is
	// errors / finished requests over the window (0..1).
	RPS        float64 `json:"rps"`
	ErrorRatio float64 `json:"error_ratio"`
	// MeanMs, P50Ms and P99Ms are latencies over the window (P50 and P99
	// estimated from the reported histogram; 0 with no request).
	MeanMs float64 `json:"mean_ms"`
	P50Ms  float64 `json:"p50_ms"`
	P99Ms  float64 `json:"p99_ms"`
	// InProgress is requests in flight at the last reports.
	InProgress uint64 `json:"in_progress"`
	// Total counts every report since the control plane started.
	Total Totals `json:"total"`
	// Localities are the totals per callee locality.
	Localities []LocalityLoad `json:"localities,omitempty"`
	// Reporters are the caller proxies (node ids) reporting this edge.
	Reporters []string `json:"reporters,omitempty"`
}

// Totals are request counts.
type Totals struct {
	Issued    uint64 `json:"issued"`
	Succeeded uint64 `json:"succeeded"`
	Errored   uint64 `json:"errored"`
}

// LocalityLoad is an edge's totals to one callee locality.
type LocalityLoad struct {
	Locality string `json:"locality"`
	Totals
}

// Overview is what the dashboard receives on each update.
type Overview struct {
	Status  Status  `json:"status"`
	Traffic Traffic `json:"traffic"`
}

// LocalityString is "region/zone", "region", or "" as written in the API.
func LocalityString(region, zone string) string {
	switch {
	case zone != "":
		return region + "/" + zone
	default:
		return region
	}
}
