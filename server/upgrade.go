package server

import (
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	"github.com/lesismal/nbio"
	"github.com/lesismal/nbio/nbhttp"
	"github.com/lesismal/nbio/nbhttp/websocket"
	"tether/internal/proto"
)

// newUpgrader returns the WebSocket upgrader with the server's callbacks.
func (s *Server) newUpgrader() *websocket.Upgrader {
	u := websocket.NewUpgrader()
	u.KeepaliveTime = 0 // liveness is ours (heartbeats), not a timer per connection
	u.HandshakeTimeout = s.cfg.HandshakeTimeout
	u.MessageLengthLimit = s.cfg.MaxMessageSize + 1024
	u.CheckOrigin = func(*http.Request) bool { return true } // checked before Upgrade, with a JSON error
	u.OnMessage(s.onMessage)
	u.OnClose(s.onClose)
	u.SetPingHandler(func(ws *websocket.Conn, data string) {
		if c, ok := ws.Session().(*conn); ok {
			c.lastSeen.Store(s.clock.Load())
		}
		_ = ws.WriteMessage(websocket.PongMessage, []byte(data))
	})
	u.SetPongHandler(func(ws *websocket.Conn, _ string) {
		if c, ok := ws.Session().(*conn); ok {
			c.lastSeen.Store(s.clock.Load())
		}
	})
	return u
}

// upgrade handles GET /ws: admission, origin, auth, then the upgrade.
func (s *Server) upgrade(w http.ResponseWriter, r *http.Request) {
	if s.refusing.Load() {
		s.m.reject("draining")
		s.refuse(w, "draining", "the node is draining: reconnect to another node")
		return
	}
	if !s.checkOrigin(r) {
		s.m.reject("origin")
		httpError(w, http.StatusForbidden, "forbidden", "origin not allowed")
		return
	}
	var auth *claims
	if len(s.cfg.JWTSecret) > 0 {
		tok := tokenFromRequest(r)
		if tok == "" {
			s.m.reject("unauthorized")
			httpError(w, http.StatusUnauthorized, proto.CodeUnauthorized, "a token is required")
			return
		}
		a, err := parseToken(s.cfg.JWTSecret, tok, time.Now())
		if err != nil {
			s.m.reject("unauthorized")
			httpError(w, http.StatusUnauthorized, proto.CodeUnauthorized, err.Error())
			return
		}
		auth = a
	}
	if n := s.m.conns.Add(1); s.cfg.MaxConns > 0 && n > int64(s.cfg.MaxConns) {
		s.m.conns.Add(-1)
		s.m.reject("max_conns")
		s.refuse(w, "max_conns", "the node is at capacity")
		return
	}
	if !s.admit.take(time.Now()) {
		s.m.conns.Add(-1)
		s.m.reject("accept_rate")
		s.refuse(w, "accept_rate", "too many new connections: retry later")
		return
	}
	ws, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		s.m.conns.Add(-1)
		s.m.reject("bad_request")
		s.log.Debug("cannot upgrade", "remote", r.RemoteAddr, "err", err)
		return
	}
	nc, ok := underlying(ws)
	if !ok {
		s.m.conns.Add(-1)
		_ = ws.Close()
		return
	}
	id := s.nextID.Add(1)
	now := s.clock.Load()
	c := &conn{
		srv:       s,
		ws:        ws,
		nc:        nc,
		id:        id,
		auth:      auth,
		flush:     s.flushers[id%uint64(len(s.flushers))],
		heartbeat: s.heartbeats.shardFor(id),
		opened:    time.Now().UnixNano(),
	}
	if auth != nil {
		c.expiry = auth.expiry.UnixNano()
	}
	c.wheelEntry.Value = c
	c.lastSeen.Store(now)
	ws.SetSession(c)
	s.conns.add(c)
	s.m.accepted.Inc()
	s.heartbeats.add(c, now)
	connID := c.connID()
	c.reply(func(b []byte) []byte {
		return appendWelcome(b, s.cfg.NodeID, connID, s.cfg.PingInterval.Milliseconds())
	})
}

// underlying returns the engine connection under ws.
func underlying(ws *websocket.Conn) (*nbio.Conn, bool) {
	switch c := ws.Conn.(type) {
	case *nbio.Conn:
		return c, true
	case *nbhttp.Conn:
		nc, ok := c.Conn.(*nbio.Conn)
		return nc, ok
	}
	return nil, false
}

// refuse answers an upgrade with 503 and a jittered Retry-After, so that
// refused clients spread their retries.
func (s *Server) refuse(w http.ResponseWriter, reason, msg string) {
	retry := 1 + rand.Int64N(max(1, int64(s.cfg.ReconnectJitter/time.Second)))
	w.Header().Set("Retry-After", strconv.FormatInt(retry, 10))
	httpError(w, http.StatusServiceUnavailable, proto.CodeUnavailable, msg)
}
