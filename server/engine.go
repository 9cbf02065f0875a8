package server

import (
	"net"
	"time"

	"github.com/lesismal/nbio"
)

// The engine is nbio's poller and nothing above it: nbio accepts sockets,
// waits on epoll and hands tether the bytes each socket delivers
// (onData); tether parses the HTTP request, performs the upgrade and reads
// WebSocket frames itself (httpconn.go, upgrade.go, wsread.go), on the
// one codec of internal/wsframe. docs/engine.md says why and what it
// measured.
//
// Every socket has a *conn as its nbio session from onOpen to onClose. A
// conn starts in its HTTP phase (conn.http holds the request reader) and,
// once upgraded, drops it and reads WebSocket frames. Callbacks of one
// socket run one at a time on its poller goroutine; an API handler runs on
// a goroutine of its own (httpconn.go says how the two meet).

// newEngine returns the nbio engine that serves ln.
func (s *Server) newEngine(ln net.Listener) *nbio.Engine {
	e := nbio.NewEngine(nbio.Config{
		Name:               "tether",
		Network:            "tcp",
		Addrs:              []string{ln.Addr().String()},
		Listen:             func(string, string) (net.Listener, error) { return ln, nil },
		NPoller:            s.cfg.Pollers,
		MaxWriteBufferSize: s.cfg.MaxConnBuffer,
	})
	e.OnOpen(s.onOpen)
	e.OnData(s.onData)
	e.OnClose(s.onEngineClose)
	addRaceEdges(e)
	return e
}

// onOpen runs on the listener goroutine for every accepted socket, before
// the socket is added to its poller, so the handshake deadline is armed
// before the first byte can arrive (nbio's HTTP layer armed it after, and
// a fast upgrade could clear it first: the late deadline then closed a
// healthy connection).
func (s *Server) onOpen(nc *nbio.Conn) {
	raceEdge()
	if !s.admitSocket() {
		s.m.httpReject(rejectOverload)
		_ = nc.Close()
		return
	}
	c := &conn{srv: s, nc: nc}
	c.http.Store(&httpConn{c: c})
	if s.tlsConfig != nil {
		c.tls = s.newTLSConn(c)
	}
	nc.SetSession(c)
	_ = nc.SetReadDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
}

// admitSocket bounds the sockets the node holds before their upgrade: at
// most MaxConns WebSocket connections and maxHandshakes sockets still in
// their HTTP phase. A socket over the bound is closed at once, before it
// costs a read buffer.
func (s *Server) admitSocket() bool {
	n := s.m.handshakes.Add(1)
	if n > int64(s.cfg.MaxHandshakes) {
		s.m.handshakes.Add(-1)
		return false
	}
	return true
}

// onData runs on the socket's poller goroutine with the bytes it read;
// data is the poller's buffer, valid only during the call.
func (s *Server) onData(nc *nbio.Conn, data []byte) {
	c, ok := nc.Session().(*conn)
	if !ok {
		return
	}
	if c.tls != nil {
		c.tls.onData(data)
		return
	}
	c.onPlain(data)
}

// onPlain handles bytes from the client (decrypted, with TLS): requests
// before the upgrade, frames after it.
func (c *conn) onPlain(data []byte) {
	if h := c.http.Load(); h != nil {
		h.onData(data)
		return
	}
	c.onWSData(data)
}

// write writes b to the socket, through TLS when the connection has it.
// It does not block: what the socket does not take at once waits in the
// engine's write buffer.
func (c *conn) write(b []byte) (int, error) {
	if c.tls != nil {
		return c.tls.write(b)
	}
	return c.nc.Write(b)
}

// closeGracefully closes the socket of a connection whose close
// handshake is done: with TLS on our own record layer a close_notify
// goes first (RFC 8446 §6.1), so the client can tell the end from a
// truncation.
func (c *conn) closeGracefully() {
	if c.tls != nil {
		c.tls.closeWithAlert(alertCloseNotify)
		return
	}
	_ = c.nc.Close()
}

// onEngineClose runs once for every socket nbio closes, for any reason.
func (s *Server) onEngineClose(nc *nbio.Conn, err error) {
	c, ok := nc.Session().(*conn)
	if !ok {
		return
	}
	if c.tls != nil {
		c.tls.onClose()
	}
	if h := c.http.Load(); h != nil && h.onClose() {
		return
	}
	s.onClose(c, err)
}
