package server

import (
	"encoding/base64"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	"tether/internal/proto"
	"tether/internal/wsframe"
)

// wsPath is where clients upgrade.
const wsPath = "/ws"

// upgrade answers a request for wsPath: 101 and the socket reads WebSocket
// frames from then on, or an HTTP error with a JSON body (docs/protocol.md,
// "Upgrade"). rest is what followed the request head in the same reads:
// the client's first frames, which are read right after the upgrade.
// h.mu is held.
//
// The checks, in order: the request is a valid WebSocket opening handshake
// (RFC 6455 section 4.2.1: GET, HTTP/1.1, Upgrade: websocket, Connection:
// upgrade, a Sec-WebSocket-Key of 16 bytes in base64, version 13, no body);
// the node is not refusing (draining); the Origin is allowed; the token is
// valid (when auth is on); the node is under MaxConns; the accept rate has
// a token.
func (h *httpConn) upgrade(head *requestHead, rest []byte) {
	s := h.c.srv
	if status, msg, hdr := checkHandshake(head); status != 0 {
		s.m.reject("bad_request")
		h.refuse(status, codeOfStatus(status), msg, hdr...)
		return
	}
	if s.refusing.Load() {
		s.m.reject("draining")
		h.refuseBusy("the node is draining: reconnect to another node")
		return
	}
	if !s.checkOrigin(head.get("Origin"), head.host) {
		s.m.reject("origin")
		h.refuse(http.StatusForbidden, proto.CodeForbidden, "origin not allowed")
		return
	}
	var auth *claims
	if len(s.cfg.JWTSecret) > 0 {
		tok := tokenFromHead(head)
		if tok == "" {
			s.m.reject("unauthorized")
			h.refuse(http.StatusUnauthorized, proto.CodeUnauthorized, "a token is required")
			return
		}
		a, err := parseToken(s.cfg.JWTSecret, tok, time.Now())
		if err != nil {
			s.m.reject("unauthorized")
			h.refuse(http.StatusUnauthorized, proto.CodeUnauthorized, err.Error())
			return
		}
		auth = a
	}
	if n := s.m.conns.Add(1); s.cfg.MaxConns > 0 && n > int64(s.cfg.MaxConns) {
		s.m.conns.Add(-1)
		s.m.reject("max_conns")
		h.refuseBusy("the node is at capacity")
		return
	}
	if !s.admit.take(time.Now()) {
		s.m.conns.Add(-1)
		s.m.reject("accept_rate")
		h.refuseBusy("too many new connections: retry later")
		return
	}
	if auth != nil && s.cfg.MaxConnsPerUser > 0 && !s.userConns.acquire(auth.sub, s.cfg.MaxConnsPerUser) {
		s.m.conns.Add(-1)
		s.m.reject("max_conns_per_user")
		h.refuse(http.StatusTooManyRequests, proto.CodeLimit,
			"this user has "+strconv.Itoa(s.cfg.MaxConnsPerUser)+" connections open on this node already (--max-conns-per-user)")
		return
	}
	key, _ := head.only("Sec-WebSocket-Key")
	h.accept(key, auth, rest)
}

// accept completes the upgrade: the 101 answer and the welcome frame in
// one write, before the connection is registered anywhere, so nothing
// can be sent ahead of them; then the connection joins the server and
// reads rest, the frames that came with the request. h.mu is held.
func (h *httpConn) accept(key string, auth *claims, rest []byte) {
	s, c := h.c.srv, h.c
	s.initConn(c, auth)

	const head = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "
	var welcome [256]byte
	payload := appendWelcome(welcome[:0], s.cfg.NodeID, c.connID(), s.cfg.PingInterval.Milliseconds())
	b := make([]byte, 0, len(head)+wsframe.AcceptKeyLen+4+maxServerHeader+len(payload))
	b = append(b, head...)
	b = wsframe.AppendAcceptKey(b, key)
	b = append(b, "\r\n\r\n"...)
	b = wsframe.AppendFrame(b, wsframe.OpText, true, payload)
	if _, err := c.write(b); err != nil {
		s.m.conns.Add(-1)
		if s.countsUser(c) {
			s.userConns.release(auth.sub)
		}
		h.state = httpDone
		return // the socket is closing: onClose ends the HTTP phase
	}
	_ = c.nc.SetReadDeadline(time.Time{})
	h.state = httpUpgraded
	h.buf = nil
	s.m.handshakes.Add(-1)
	s.addConn(c)
	if len(rest) > 0 {
		c.onWSData(rest)
	}
	c.http.Store(nil)
}

// checkHandshake checks head against RFC 6455's opening handshake. It
// returns 0 for a valid one, else the status to refuse it with, the message
// and extra header fields.
func checkHandshake(head *requestHead) (int, string, []string) {
	switch {
	case head.method != http.MethodGet:
		return http.StatusMethodNotAllowed, "the WebSocket endpoint takes GET upgrade requests", []string{"Allow", "GET"}
	case head.minor != 1:
		return http.StatusBadRequest, "a WebSocket upgrade needs HTTP/1.1", nil
	case !head.lists("Upgrade", "websocket"):
		return http.StatusUpgradeRequired, "this endpoint speaks WebSocket only: send Upgrade: websocket", []string{"Upgrade", "websocket"}
	case !head.upgrade:
		return http.StatusBadRequest, "Connection must list upgrade", nil
	case head.contentLength > 0:
		return http.StatusBadRequest, "an upgrade request has no body", nil
	}
	if v, one := head.only("Sec-WebSocket-Version"); !one || v != "13" {
		return http.StatusUpgradeRequired, "Sec-WebSocket-Version must be 13", []string{"Sec-WebSocket-Version", "13"}
	}
	key, one := head.only("Sec-WebSocket-Key")
	if !one {
		return http.StatusBadRequest, "exactly one Sec-WebSocket-Key is required", nil
	}
	var k [18]byte // 24 base64 characters decode to at most 18 bytes
	if len(key) != 24 {
		return http.StatusBadRequest, "Sec-WebSocket-Key must be 16 bytes in base64", nil
	}
	if n, err := base64.StdEncoding.Decode(k[:], []byte(key)); err != nil || n != 16 {
		return http.StatusBadRequest, "Sec-WebSocket-Key must be 16 bytes in base64", nil
	}
	return 0, "", nil
}

// refuseBusy refuses an upgrade with 503 and a jittered Retry-After, so
// that refused clients spread their retries. h.mu is held.
func (h *httpConn) refuseBusy(msg string) {
	s := h.c.srv
	retry := 1 + rand.Int64N(max(1, int64(s.cfg.ReconnectJitter/time.Second)))
	h.refuse(http.StatusServiceUnavailable, proto.CodeUnavailable, msg, "Retry-After", strconv.FormatInt(retry, 10))
}
