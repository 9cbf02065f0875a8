package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"

	"tether/internal/proto"
)

// wsConn is one WebSocket connection to a tether node. Framing, masking,
// control frames and the close handshake are github.com/coder/websocket's;
// wsConn adds what tether's client needs on top: the time of the last
// frame for the watchdog, a read buffer reused between messages, and the
// mapping of failures to the client's errors.
type wsConn struct {
	// Immutable after handshake.
	ws           *websocket.Conn
	nc           net.Conn // the TCP connection under ws (and under TLS)
	welcome      welcomeFrame
	writeTimeout time.Duration

	// Owned by the reader goroutine (or by handshake before it starts).
	rbuf []byte // the last message read; reused between messages

	// lastFrame is the time (UnixNano) the last frame of any kind arrived.
	lastFrame atomic.Int64
	// reconnectAt is when the server's reconnect frame allows reconnecting
	// (UnixNano), 0 if none arrived.
	reconnectAt atomic.Int64
	// err is why the reader goroutine ended; read after it exited.
	err error
}

// touch records that a frame arrived.
func (c *wsConn) touch() { c.lastFrame.Store(time.Now().UnixNano()) }

// read returns the next data message, read into the connection's reused
// buffer: the payload is valid until the next call. Pings and pongs are
// answered and recorded by the library's callbacks. ctx should be
// context.Background() outside the handshake: a cancellable context costs
// the library several allocations per message, and a connection is ended
// by closing it anyway.
func (c *wsConn) read(ctx context.Context) (websocket.MessageType, []byte, error) {
	typ, r, err := c.ws.Reader(ctx)
	if err != nil {
		return 0, nil, err
	}
	b := c.rbuf[:0]
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)] // grow; the read limit bounds it
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			c.rbuf = b[:0]
			return 0, nil, err
		}
	}
	c.rbuf = b
	c.touch()
	return typ, b, nil
}

// writeText writes p as one text message; writes after a close fail.
func (c *wsConn) writeText(p []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), c.writeTimeout)
	defer cancel()
	return c.ws.Write(ctx, websocket.MessageText, p)
}

// writeJSON writes v as one text message.
func (c *wsConn) writeJSON(v any) error {
	p, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("cannot encode frame: %w", err)
	}
	return c.writeText(p)
}

// close sends a close frame with code, waits up to wait for the server's
// answering close frame (RFC 6455, section 7.1.1) and closes the socket.
// A frozen peer delays it by wait at most.
func (c *wsConn) close(code int, reason string, wait time.Duration) {
	c.nc.SetDeadline(time.Now().Add(wait))
	c.ws.Close(websocket.StatusCode(code), reason)
	c.nc.Close()
}

// watchdogCloseWait bounds the close handshake after the watchdog gave up:
// the path looks dead, an answer is not expected.
const watchdogCloseWait = 100 * time.Millisecond

// closeWait bounds the close handshake of a connection the client ends.
func (c *wsConn) closeWait() time.Duration { return min(c.writeTimeout, time.Second) }

// next returns the next text message, decoded. On any failure it closes
// the connection and returns why.
func (c *wsConn) next() (*inFrame, error) {
	typ, p, err := c.read(context.Background())
	if err != nil {
		return nil, c.readFailed(err)
	}
	if typ != websocket.MessageText {
		c.close(proto.CloseProtocolError, "binary frame", c.closeWait())
		return nil, fmt.Errorf("%w: binary frame", ErrProtocol)
	}
	if !utf8.Valid(p) {
		c.close(proto.CloseInvalidPayload, "", c.closeWait())
		return nil, fmt.Errorf("%w: text message is not valid utf-8", ErrProtocol)
	}
	f := new(inFrame)
	if err := json.Unmarshal(p, f); err != nil || f.Op == "" {
		c.close(proto.CloseProtocolError, "bad json", c.closeWait())
		return nil, fmt.Errorf("%w: cannot decode frame %.100q", ErrProtocol, p)
	}
	return f, nil
}

// readFailed closes the connection after a read error and returns the
// error to report: a *CloseError for a close frame from the server or a
// lost connection (1006), ErrProtocol for a frame the library refused (it
// has already told the server, with 1002 or 1009).
func (c *wsConn) readFailed(err error) error {
	c.ws.CloseNow()
	c.nc.Close()
	var ce websocket.CloseError
	var ne net.Error
	switch {
	case errors.As(err, &ce):
		return &CloseError{Code: int(ce.Code), Reason: ce.Reason}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, net.ErrClosed), errors.As(err, &ne):
		return &CloseError{Code: proto.CloseAbnormal, Reason: err.Error()}
	}
	return fmt.Errorf("%w: %w", ErrProtocol, err)
}
