package server

import (
	"strconv"
	"time"

	"tether/internal/proto"
)

// Token refresh in place (docs/protocol.md, "Token refresh").
//
// A connection's token expiry (conn.expiry) is timed by its heartbeat
// wheel entry, as pings are: no timer and no goroutine per connection. The
// moment refresh_due is sent is not stored either: refreshDueAt derives it
// from the connection's id and expiry, spread over the later half of
// Config.RefreshWindow before exp, so that connections whose tokens were
// issued in the same second are told over RefreshWindow/2, not together.
// The only state is conn.dueSent, one byte in what was padding.
//
// State transitions, all under the heartbeat shard's lock:
//
//	upgrade (initConn)  expiry = token's exp, dueSent = false
//	advance, now ≥ due  refresh_due queued, dueSent = true
//	refresh accepted    expiry = new exp, dueSent = false, entry rescheduled
//	advance, now ≥ exp  close 4001 (heartbeat.go), as without refresh

// refreshDueAt returns when a connection with id whose token expires at
// expiry (unix nanos) is sent refresh_due: expiry − window plus a jitter in
// [0, window/2] drawn from id and expiry, so the same connection gets the
// same moment for the same token and different connections spread evenly.
func refreshDueAt(id uint64, expiry, window int64) int64 {
	x := id ^ uint64(expiry)*0x9e3779b97f4a7c15 // splitmix64's finaliser
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return expiry - window + int64(x%uint64(window/2+1))
}

// refreshDueLocked returns when c is to be sent refresh_due, or 0 when it
// has no token, refresh_due is off or already sent for this expiry. The
// heartbeat shard's lock must be held.
func (h *heartbeats) refreshDueLocked(c *conn) int64 {
	if c.expiry == 0 || c.dueSent || h.window == 0 {
		return 0
	}
	return refreshDueAt(c.id, c.expiry, h.window)
}

// setExpiry gives c a new token expiry and reschedules its wheel entry; a
// connection already closing (a hard close pending) or gone is left alone.
func (h *heartbeats) setExpiry(c *conn, expiry int64) {
	sh := c.hbShard()
	sh.mu.Lock()
	c.expiry = expiry
	c.dueSent = false
	if c.phase != 0 {
		h.scheduleLocked(sh, c, h.srv.clock.Load())
	}
	sh.mu.Unlock()
}

// sendRefreshDue queues {"op":"refresh_due","exp":…} to c.
func (h *heartbeats) sendRefreshDue(c *conn) {
	sh := c.hbShard()
	sh.mu.Lock()
	exp := c.expiry
	sh.mu.Unlock()
	h.srv.m.refreshDue.Inc()
	c.reply(func(b []byte) []byte { return appendRefreshDue(b, exp/int64(time.Second)) })
}

// refresh handles {"op":"refresh","token":…}: on the connection's read
// path. An accepted token replaces the connection's claims and expiry, the
// subscriptions the new claims no longer allow are ended with unsubscribed
// frames (reason forbidden), and then refreshed is sent with the new exp. A
// refused token (bad, expired, another sub, or a server without tokens)
// is answered with an unauthorized error and changes nothing: the old
// expiry still holds.
func (s *Server) refresh(c *conn, f clientFrame) {
	if c.auth == nil {
		s.m.refreshFailed.Inc()
		c.replyError(f.ID, errf(proto.CodeBadRequest, "this server takes no tokens"))
		return
	}
	nc, err := parseToken(s.cfg.JWTSecret, f.Token, time.Now())
	if err != nil {
		s.m.refreshFailed.Inc()
		c.replyError(f.ID, errf(proto.CodeUnauthorized, "invalid or expired token"))
		return
	}
	if nc.sub != c.auth.sub {
		s.m.refreshFailed.Inc()
		c.replyError(f.ID, errf(proto.CodeUnauthorized, "the token is for another sub"))
		return
	}
	var forbidden []string
	c.mu.Lock()
	c.auth.channels, c.auth.publish = nc.channels, nc.publish
	for sub := c.subs; sub != nil; sub = sub.nextOfConn {
		if !c.mayRead(sub.ch.name) {
			forbidden = append(forbidden, sub.ch.name)
		}
	}
	c.mu.Unlock()
	exp := nc.expiry.UnixNano()
	s.heartbeats.setExpiry(c, exp)
	for _, name := range forbidden {
		s.forceUnsubscribe(c, name, proto.ReasonForbidden)
	}
	s.m.refreshOK.Inc()
	c.reply(func(b []byte) []byte { return appendRefreshed(b, exp/int64(time.Second), f.ID) })
}

func appendRefreshDue(dst []byte, exp int64) []byte {
	dst = append(dst, `{"op":"refresh_due","exp":`...)
	dst = strconv.AppendInt(dst, exp, 10)
	return append(dst, '}')
}

func appendRefreshed(dst []byte, exp int64, id []byte) []byte {
	dst = append(dst, `{"op":"refreshed","exp":`...)
	dst = strconv.AppendInt(dst, exp, 10)
	dst = appendID(dst, id)
	return append(dst, '}')
}
