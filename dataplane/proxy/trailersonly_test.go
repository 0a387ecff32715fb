package proxy_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/protobuf/proto"
)

// TestGRPCTrailersOnlyStaysTrailersOnly sends a gRPC call that the real
// interop server fails with InvalidArgument through two agent hops (h2c),
// and reads the frames the client gets. The server answers with a
// trailers-only response (one HEADERS frame with END_STREAM carrying
// grpc-status), and, when the call's request stream is still open, a
// RST_STREAM(NO_ERROR) after it. Each hop must relay that as a
// trailers-only response: HEADERS with END_STREAM and grpc-status in it.
// Headers flushed before the handler returns (HEADERS without END_STREAM,
// then an empty DATA with END_STREAM) would carry grpc-status in the
// headers, where gRPC clients do not read it: they fail the call with
// "server closed the stream without sending trailers". The frames are
// checked on every call, so a flush that happened only sometimes would
// still fail here, not only when a gRPC client noticed it.
func TestGRPCTrailersOnlyStaysTrailersOnly(t *testing.T) {
	ln, err := net.Listen("tcp", net.JoinHostPort(hostUpstream, "0"))
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(gs, interop.NewTestServer())
	go func() { _ = gs.Serve(ln) }()
	defer gs.Stop()

	fwd := newForwarder()
	defer fwd.CloseIdleConnections()
	hopB, _ := proxyTo(t, fwd, ln.Addr().String())
	hopA, _ := proxyTo(t, fwd, hopB)

	bad := &testgrpc.EchoStatus{Code: 3, Message: "bad"}
	unary, err := proto.Marshal(&testgrpc.SimpleRequest{ResponseStatus: bad})
	if err != nil {
		t.Fatal(err)
	}
	duplex, err := proto.Marshal(&testgrpc.StreamingOutputCallRequest{ResponseStatus: bad})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path string
		msg        []byte
		// halfClose ends the request stream with the message; otherwise
		// it stays open while the server answers (and resets it).
		halfClose bool
		// contentLength declares the request body's length, which makes
		// the agent's HTTP/2 server drain what the handler leaves unread.
		contentLength bool
	}{
		{name: "unary", path: "/grpc.testing.TestService/UnaryCall", msg: unary, halfClose: true},
		{name: "unary with content-length", path: "/grpc.testing.TestService/UnaryCall", msg: unary, halfClose: true, contentLength: true},
		{name: "request still open", path: "/grpc.testing.TestService/FullDuplexCall", msg: duplex},
		{name: "request still open with content-length", path: "/grpc.testing.TestService/FullDuplexCall", msg: duplex, contentLength: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialH2C(t, hopA)
			defer c.close()
			for i := range 25 {
				stream := uint32(2*i + 1)
				frames := c.call(t, stream, tc.path, tc.msg, tc.halfClose, tc.contentLength)
				if len(frames) == 0 {
					t.Fatalf("call %d: no response frames", i)
				}
				first, ok := frames[0].(headersFrame)
				if !ok || !first.endStream {
					t.Fatalf("call %d: frames %v, want one HEADERS with END_STREAM (trailers-only)", i, frames)
				}
				if first.fields[":status"] != "200" || first.fields["grpc-status"] != "3" || first.fields["grpc-message"] != "bad" {
					t.Fatalf("call %d: trailers-only fields %v, want :status 200, grpc-status 3, grpc-message bad", i, first.fields)
				}
				for _, f := range frames[1:] {
					if rst, ok := f.(rstFrame); !ok || rst.code != http2.ErrCodeNo {
						t.Fatalf("call %d: frames %v: after the trailers-only response only RST_STREAM(NO_ERROR) may follow", i, frames)
					}
				}
			}
		})
	}
}

type headersFrame struct {
	endStream bool
	fields    map[string]string
}

func (h headersFrame) String() string {
	return fmt.Sprintf("HEADERS(end_stream=%v %v)", h.endStream, h.fields)
}

type dataFrame struct {
	endStream bool
	n         int
}

func (d dataFrame) String() string {
	return fmt.Sprintf("DATA(end_stream=%v len=%d)", d.endStream, d.n)
}

type rstFrame struct{ code http2.ErrCode }

func (r rstFrame) String() string { return fmt.Sprintf("RST_STREAM(%v)", r.code) }

// h2cConn is an HTTP/2 client connection at the frame level.
type h2cConn struct {
	nc  net.Conn
	fr  *http2.Framer
	enc *hpack.Encoder
	buf bytes.Buffer
}

func dialH2C(t *testing.T, addr string) *h2cConn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := &h2cConn{nc: nc, fr: http2.NewFramer(nc, nc)}
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.enc = hpack.NewEncoder(&c.buf)
	_ = nc.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := nc.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	if err := c.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *h2cConn) close() { _ = c.nc.Close() }

// call sends one gRPC call of one message on stream and returns the frames of that
// stream until it is closed on the server's side (END_STREAM or
// RST_STREAM), and a RST_STREAM that directly follows an END_STREAM.
func (c *h2cConn) call(t *testing.T, stream uint32, path string, msg []byte, halfClose, contentLength bool) []any {
	t.Helper()
	body := make([]byte, 5+len(msg))
	binary.BigEndian.PutUint32(body[1:5], uint32(len(msg)))
	copy(body[5:], msg)
	c.buf.Reset()
	for _, f := range [][2]string{
		{":method", "POST"}, {":scheme", "http"}, {":path", path}, {":authority", "orders"},
		{"content-type", "application/grpc"}, {"te", "trailers"},
	} {
		_ = c.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if contentLength {
		_ = c.enc.WriteField(hpack.HeaderField{Name: "content-length", Value: strconv.Itoa(len(body))})
	}
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, BlockFragment: c.buf.Bytes(), EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	if err := c.fr.WriteData(stream, halfClose, body); err != nil {
		t.Fatal(err)
	}
	var frames []any
	ended, pinged := false, false
	for {
		if ended && !pinged {
			// A RST_STREAM(NO_ERROR) may follow the end of the response;
			// the ack of a PING sent now marks where the stream's frames
			// stop.
			if err := c.fr.WritePing(false, [8]byte{byte(stream)}); err != nil {
				t.Fatal(err)
			}
			pinged = true
		}
		f, err := c.fr.ReadFrame()
		if err != nil {
			t.Fatalf("stream %d: read frame after %v: %v", stream, frames, err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = c.fr.WriteSettingsAck()
			}
		case *http2.WindowUpdateFrame, *http2.GoAwayFrame:
		case *http2.PingFrame:
			if !f.IsAck() {
				_ = c.fr.WritePing(true, f.Data)
			} else if ended && f.Data[0] == byte(stream) {
				return frames
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID != stream {
				continue
			}
			fields := map[string]string{}
			for _, hf := range f.Fields {
				fields[hf.Name] = hf.Value
			}
			frames = append(frames, headersFrame{endStream: f.StreamEnded(), fields: fields})
			ended = ended || f.StreamEnded()
		case *http2.DataFrame:
			if f.StreamID != stream {
				continue
			}
			frames = append(frames, dataFrame{endStream: f.StreamEnded(), n: len(f.Data())})
			ended = ended || f.StreamEnded()
		case *http2.RSTStreamFrame:
			if f.StreamID != stream {
				continue
			}
			frames = append(frames, rstFrame{code: f.ErrCode})
			if !ended {
				return frames
			}
		}
	}
}
