package client

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// wsGUID is the key suffix of the opening handshake (RFC 6455, section 1.3).
const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// wsConn is one WebSocket connection to a tether node.
type wsConn struct {
	// Immutable after handshake.
	nc           net.Conn
	welcome      welcomeFrame
	writeTimeout time.Duration

	// Owned by the reader goroutine (or by handshake before it starts).
	fr frameReader

	// lastFrame is the time (UnixNano) the last frame of any kind arrived.
	lastFrame atomic.Int64
	// reconnectAt is when the server's reconnect frame allows reconnecting
	// (UnixNano), 0 if none arrived.
	reconnectAt atomic.Int64
	// err is why the reader goroutine ended; read after it exited.
	err error

	wmu    sync.Mutex // guards wbuf, closed and every write to nc
	wbuf   []byte
	closed bool // a close frame was sent; nothing may follow it
}

// handshake opens a connection to u: TCP (and TLS for wss), the upgrade
// request, and the server's welcome frame. ctx bounds all of it.
func handshake(ctx context.Context, u *url.URL, token string, o *Options) (*wsConn, error) {
	host := u.Host
	if u.Port() == "" {
		if u.Scheme == "wss" {
			host = net.JoinHostPort(u.Hostname(), "443")
		} else {
			host = net.JoinHostPort(u.Hostname(), "80")
		}
	}
	dial := o.Dialer
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	nc, err := dial(ctx, "tcp", host)
	if err != nil {
		return nil, fmt.Errorf("cannot dial %s: %w", host, err)
	}
	// Close's cancellation must interrupt a handshake blocked in a read;
	// a deadline on the TCP connection also interrupts TLS above it.
	raw := nc
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	if u.Scheme == "wss" {
		cfg := o.TLSConfig.Clone()
		if cfg == nil {
			cfg = &tls.Config{}
		}
		if cfg.ServerName == "" {
			cfg.ServerName = u.Hostname()
		}
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("cannot complete tls handshake with %s: %w", host, err)
		}
		nc = tc
	}
	c, err := upgrade(nc, u, token, o)
	if err != nil {
		nc.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	if !stop() {
		nc.Close()
		return nil, ctx.Err()
	}
	nc.SetDeadline(time.Time{})
	return c, nil
}

// upgrade sends the upgrade request over nc and reads the answer and the
// welcome frame.
func upgrade(nc net.Conn, u *url.URL, token string, o *Options) (*wsConn, error) {
	var nonce [16]byte
	rand.Read(nonce[:])
	key := base64.StdEncoding.EncodeToString(nonce[:])

	ru := *u
	ru.Scheme = "http"
	if u.Scheme == "wss" {
		ru.Scheme = "https"
	}
	req := &http.Request{
		Method:     http.MethodGet,
		URL:        &ru,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     make(http.Header, len(o.Header)+5),
		Host:       u.Host,
	}
	for k, v := range o.Header {
		req.Header[k] = v
	}
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Sec-WebSocket-Key", key)
	req.Header.Set("Sec-WebSocket-Version", "13")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	bw := bufio.NewWriterSize(nc, 1024)
	if err := req.Write(bw); err != nil {
		return nil, fmt.Errorf("cannot send upgrade request: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return nil, fmt.Errorf("cannot send upgrade request: %w", err)
	}

	br := bufio.NewReaderSize(nc, 16<<10)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return nil, fmt.Errorf("cannot read upgrade response: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return nil, refusal(resp)
	}
	if !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") ||
		!headerHasToken(resp.Header, "Connection", "upgrade") ||
		resp.Header.Get("Sec-WebSocket-Accept") != acceptKey(key) {
		return nil, fmt.Errorf("%w: bad upgrade response headers", ErrProtocol)
	}

	c := &wsConn{
		nc:           nc,
		writeTimeout: o.handshakeTimeout(),
		fr:           frameReader{r: br, maxSize: o.maxMessageSize()},
	}
	c.lastFrame.Store(time.Now().UnixNano())
	for {
		op, p, err := c.fr.next()
		if err != nil {
			return nil, fmt.Errorf("cannot read welcome frame: %w", err)
		}
		switch op {
		case opPing:
			c.writeFrame(opPong, p)
			continue
		case opPong:
			continue
		case opClose:
			code, reason := parseClose(p)
			return nil, &CloseError{Code: code, Reason: reason}
		case opText:
			if err := json.Unmarshal(p, &c.welcome); err != nil || c.welcome.Op != "welcome" {
				return nil, fmt.Errorf("%w: first frame is not a welcome: %.100q", ErrProtocol, p)
			}
			return c, nil
		default:
			return nil, fmt.Errorf("%w: binary frame", ErrProtocol)
		}
	}
}

// refusal turns a non-101 upgrade response into a *HandshakeError.
func refusal(resp *http.Response) error {
	e := &HandshakeError{StatusCode: resp.StatusCode}
	if s := resp.Header.Get("Retry-After"); s != "" {
		if secs, err := strconv.Atoi(strings.TrimSpace(s)); err == nil && secs >= 0 {
			e.RetryAfter = time.Duration(secs) * time.Second
		} else if t, err := http.ParseTime(s); err == nil {
			e.RetryAfter = max(0, time.Until(t))
		}
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	var eb struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &eb) == nil {
		e.Code, e.Message = eb.Error.Code, eb.Error.Message
	}
	return e
}

// headerHasToken reports whether the comma-separated header name contains
// token (case-insensitively).
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// acceptKey computes Sec-WebSocket-Accept for a Sec-WebSocket-Key.
func acceptKey(key string) string {
	h := sha1.Sum([]byte(key + wsGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}

// writeFrame writes one masked frame. Writes after a close frame fail.
func (c *wsConn) writeFrame(op byte, payload []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed {
		return net.ErrClosed
	}
	if op == opClose {
		c.closed = true
	}
	var key [4]byte
	binary.LittleEndian.PutUint32(key[:], randUint32())
	c.wbuf = appendFrame(c.wbuf[:0], op, payload, true, key)
	c.nc.SetWriteDeadline(time.Now().Add(c.writeTimeout))
	_, err := c.nc.Write(c.wbuf)
	if cap(c.wbuf) > 64<<10 {
		c.wbuf = nil // do not pin one large publish's buffer
	}
	return err
}

// writeJSON writes v as one text frame.
func (c *wsConn) writeJSON(v any) error {
	p, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("cannot encode frame: %w", err)
	}
	return c.writeFrame(opText, p)
}

// close sends a close frame with code and closes the socket. The close
// frame is best effort: it is skipped when another write holds the socket
// (a frozen peer must not delay the close) and bounded by a short deadline.
func (c *wsConn) close(code int, reason string) {
	if c.wmu.TryLock() {
		if !c.closed {
			c.closed = true
			var key [4]byte
			binary.LittleEndian.PutUint32(key[:], randUint32())
			c.wbuf = appendFrame(c.wbuf[:0], opClose, closePayload(code, reason), true, key)
			c.nc.SetWriteDeadline(time.Now().Add(min(c.writeTimeout, time.Second)))
			c.nc.Write(c.wbuf)
		}
		c.wmu.Unlock()
	}
	c.nc.Close()
}

// next returns the next text frame, decoded. It answers pings and close
// frames itself; on any failure it closes the connection and returns why.
func (c *wsConn) next() (*inFrame, error) {
	for {
		op, p, err := c.fr.next()
		if err != nil {
			return nil, c.readFailed(err)
		}
		c.lastFrame.Store(time.Now().UnixNano())
		switch op {
		case opPing:
			c.writeFrame(opPong, p)
		case opPong:
		case opClose:
			code, reason := parseClose(p)
			reply := code
			if code == closeNoStatus {
				reply = closeNormal
			}
			c.close(reply, "")
			return nil, &CloseError{Code: code, Reason: reason}
		case opBinary:
			c.close(closeProtocolError, "binary frame")
			return nil, fmt.Errorf("%w: binary frame", ErrProtocol)
		case opText:
			f := new(inFrame)
			if err := json.Unmarshal(p, f); err != nil || f.Op == "" {
				c.close(closeProtocolError, "bad json")
				return nil, fmt.Errorf("%w: cannot decode frame %.100q", ErrProtocol, p)
			}
			return f, nil
		}
	}
}

// readFailed closes the connection after a read error, telling the server
// why when the error was the server's fault, and returns the error to
// report.
func (c *wsConn) readFailed(err error) error {
	switch {
	case errors.Is(err, errTooBig):
		c.close(closeTooBig, "")
		return fmt.Errorf("%w: %w", ErrProtocol, err)
	case errors.Is(err, errInvalidUTF8):
		c.close(closeInvalidPayload, "")
		return fmt.Errorf("%w: %w", ErrProtocol, err)
	case errors.Is(err, errFrame):
		c.close(closeProtocolError, "")
		return fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	c.nc.Close()
	return &CloseError{Code: closeAbnormal, Reason: err.Error()}
}
