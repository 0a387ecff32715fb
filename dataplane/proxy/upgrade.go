package proxy

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// switchProtocols completes an HTTP/1.1 upgrade (WebSocket and others) the
// upstream accepted: it answers the client with the upstream's 101, then
// relays bytes both ways until either side closes.
func (f *Forwarder) switchProtocols(w http.ResponseWriter, r *http.Request, resp *http.Response, reqUpgrade string) error {
	respUpgrade := upgradeType(resp.Header)
	if reqUpgrade == "" || !strings.EqualFold(reqUpgrade, respUpgrade) {
		return &Error{Status: http.StatusBadGateway, Reason: ReasonUpgradeFailure,
			Err: fmt.Errorf("upstream switched to %q, client asked for %q", respUpgrade, reqUpgrade)}
	}
	up, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		return &Error{Status: http.StatusBadGateway, Reason: ReasonUpgradeFailure,
			Err: errors.New("upstream connection is not writable after 101")}
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return &Error{Status: http.StatusBadGateway, Reason: ReasonUpgradeFailure,
			Err: fmt.Errorf("take over client connection: %w", err)}
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Time{}) // the server's header timeouts no longer apply

	h := make(http.Header, len(resp.Header)+2)
	copyResponseHeader(h, resp.Header)
	h["Connection"] = valUpgrade
	h["Upgrade"] = []string{respUpgrade}
	if _, err := fmt.Fprintf(brw, "HTTP/1.1 101 %s\r\n", http.StatusText(http.StatusSwitchingProtocols)); err != nil {
		return nil
	}
	if err := h.Write(brw); err != nil {
		return nil
	}
	if _, err := brw.WriteString("\r\n"); err != nil {
		return nil
	}
	if err := brw.Flush(); err != nil {
		return nil
	}

	// Relay until one side ends, then close both so the other copy ends.
	done := make(chan struct{}, 2)
	go func() {
		_, _ = io.Copy(up, brw.Reader) // includes bytes the server had buffered
		done <- struct{}{}
	}()
	go func() {
		_, _ = io.Copy(conn, up)
		done <- struct{}{}
	}()
	<-done
	_ = conn.Close()
	_ = up.Close()
	<-done
	f.log.Debug().Str("upgrade", respUpgrade).Msg("upgraded connection closed")
	return nil
}
