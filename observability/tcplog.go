package observability

import (
	"time"
)

// TCPConn is one relayed TCP connection, as the access log records it.
type TCPConn struct {
	// Direction is Inbound or Outbound; LocalService the agent's service.
	Direction, LocalService string
	// UpstreamService is the service called (outbound) or the local one
	// (inbound); Endpoint the address the connection went to, if any.
	UpstreamService, Endpoint string
	// Caller is the client's address.
	Caller string
	Start  time.Time
	End    time.Time
	// BytesIn came from the client; BytesOut went to it.
	BytesIn, BytesOut int64
	// Reason is why the mesh ended or refused the connection
	// ("upstream-connect-failure", "no-healthy-endpoint", "idle-timeout"),
	// empty when either side closed it.
	Reason string
	// PeerIdentity is the caller's verified SPIFFE ID ("" if none) and
	// AuthzRule the authorization rule that decided ("" if none ran).
	PeerIdentity, AuthzRule string
}

// LogTCP writes the access log line of one relayed TCP connection
// (protocol "tcp", no HTTP fields), subject to the same sampling and field
// selection as requests.
func (o *Observer) LogTCP(c TCPConn) {
	a := o.access
	if a == nil || !a.sampled() {
		return
	}
	f := fieldSet(a.fields.Load())
	e := a.log.Log()
	var tb [40]byte
	e.RawJSON("time", appendQuotedTime(tb[:0], c.Start))
	if f&fDirection != 0 {
		e.Str("direction", c.Direction)
	}
	if f&fLocalService != 0 {
		e.Str("local_service", c.LocalService)
	}
	if f&fProtocol != 0 {
		e.Str("protocol", "tcp")
	}
	if f&fReason != 0 && c.Reason != "" {
		e.Str("reason", c.Reason)
	}
	if f&fBytesIn != 0 {
		e.Int64("bytes_in", c.BytesIn)
	}
	if f&fBytesOut != 0 {
		e.Int64("bytes_out", c.BytesOut)
	}
	if f&fDuration != 0 {
		e.Float64("duration_ms", float64(c.End.Sub(c.Start).Microseconds())/1000)
	}
	if f&fUpstream != 0 && c.UpstreamService != "" {
		e.Str("upstream_service", c.UpstreamService)
	}
	if f&fEndpoint != 0 && c.Endpoint != "" {
		e.Str("endpoint", c.Endpoint)
	}
	if f&fCaller != 0 {
		e.Str("caller", c.Caller)
	}
	if f&fPeerIdentity != 0 && c.PeerIdentity != "" {
		e.Str("peer_identity", c.PeerIdentity)
	}
	if f&fAuthzRule != 0 && c.AuthzRule != "" {
		e.Str("authz_rule", c.AuthzRule)
	}
	e.Send()
}
