package server

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"tether/bus"
	"tether/internal/proto"
)

// Presence (docs/protocol.md, "Presence"): every subscription to a channel
// matching Config.Presence or Config.JoinLeave is a member of the
// channel's presence, kept by the bus (batched per bus.PresenceWindow; in
// Redis across nodes). Joins and leaves of channels matching
// Config.JoinLeave are announced to their subscribers, unless the channel
// has more than Config.JoinLeaveMax members.

// Presence modes of a channel, fixed when the node creates its channel
// (channel.pres).
const (
	presenceOn  uint8 = 1 << iota // members are tracked
	joinLeaveOn                   // joins and leaves are announced
)

// presenceReadTimeout bounds one presence read (op or API).
const presenceReadTimeout = 5 * time.Second

// maxPresenceReads bounds the presence reads waiting for the bus at once;
// more are refused with unavailable.
const maxPresenceReads = 64

// presenceMode returns the presence mode of channel (0: none).
func (s *Server) presenceMode(channel string) uint8 {
	var m uint8
	if matchAny(s.cfg.JoinLeave, channel) {
		m = presenceOn | joinLeaveOn
	} else if matchAny(s.cfg.Presence, channel) {
		m = presenceOn
	}
	return m
}

// presenceMember returns c's presence member: its user, or on an open
// server its connection id (each connection is its own user).
func presenceMember(c *conn) bus.Member {
	id := c.connID()
	if c.auth == nil {
		return bus.Member{User: id, Conn: id}
	}
	return bus.Member{User: c.auth.sub, Conn: id}
}

// presenceChangeLocked records c joining or leaving ch's presence. ch.mu
// must be held, so that a connection's join and leave reach the bus in
// order; bus.PresenceUpdate never blocks.
func (s *Server) presenceChangeLocked(c *conn, ch *channel, leave bool) {
	s.bus.PresenceUpdate(bus.PresenceChange{
		Channel:  ch.name,
		Member:   presenceMember(c),
		Leave:    leave,
		Announce: ch.pres&joinLeaveOn != 0,
	})
	if leave {
		s.m.presenceEntries.Add(-1)
	} else {
		s.m.presenceEntries.Add(1)
	}
}

// onBusPresence is the bus's presence handler: it sends one node's batch
// of joins and leaves to the local subscribers of channel, or counts it as
// suppressed when the channel has more than JoinLeaveMax members.
func (s *Server) onBusPresence(channel string, clients int, events []bus.PresenceEvent) {
	if max := s.cfg.JoinLeaveMax; max > 0 && clients > max {
		s.m.joinLeaveSuppressed.Add(len(events))
		return
	}
	ch := s.index.lookup(channel)
	if ch == nil || len(events) == 0 {
		return
	}
	frames := make([][]byte, len(events))
	for i, e := range events {
		frames[i] = textFrame(func(b []byte) []byte { return appendJoinLeave(b, channel, e) })
	}
	ch.mu.Lock()
	if ch.dead || ch.pres&joinLeaveOn == 0 {
		ch.mu.Unlock()
		return
	}
	for _, sub := range ch.subs {
		for _, f := range frames {
			sub.c.send(f)
		}
	}
	ch.mu.Unlock()
	s.m.joinLeaveEmitted.Add(len(events))
}

func appendJoinLeave(dst []byte, channel string, e bus.PresenceEvent) []byte {
	op := proto.OpJoin
	if e.Leave {
		op = proto.OpLeave
	}
	dst = append(dst, `{"op":`...)
	dst = appendJSONString(dst, op)
	dst = append(dst, `,"channel":`...)
	dst = appendJSONString(dst, channel)
	dst = append(dst, `,"user":`...)
	dst = appendJSONString(dst, e.User)
	dst = append(dst, `,"conn":`...)
	dst = appendJSONString(dst, e.Conn)
	return append(dst, '}')
}

// appendPresence appends the body of a presence answer (without the
// closing brace): the op's and the API's share it.
func appendPresence(dst []byte, channel string, p bus.Presence) []byte {
	dst = append(dst, `"channel":`...)
	dst = appendJSONString(dst, channel)
	dst = append(dst, `,"clients":`...)
	dst = strconv.AppendInt(dst, int64(p.Clients), 10)
	dst = append(dst, `,"users":`...)
	dst = strconv.AppendInt(dst, int64(p.Users), 10)
	dst = append(dst, `,"members":[`...)
	for i, m := range p.Members {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"user":`...)
		dst = appendJSONString(dst, m.User)
		dst = append(dst, `,"conn":`...)
		dst = appendJSONString(dst, m.Conn)
		dst = append(dst, '}')
	}
	dst = append(dst, `],"truncated":`...)
	return strconv.AppendBool(dst, len(p.Members) < p.Clients)
}

// checkPresence returns the error for a presence request on channel, or
// nil: the channel must have presence.
func (s *Server) checkPresence(channel string) *protoError {
	if s.presenceMode(channel) == 0 {
		return errf(proto.CodeNotFound, "presence is not enabled for this channel")
	}
	return nil
}

// readPresence reads channel's presence, at most maxPresenceReads at once.
func (s *Server) readPresence(ctx context.Context, channel string) (bus.Presence, *protoError) {
	select {
	case s.presenceReads <- struct{}{}:
		defer func() { <-s.presenceReads }()
	default:
		return bus.Presence{}, errf(proto.CodeUnavailable, "too many presence reads at once, retry later")
	}
	ctx, cancel := context.WithTimeout(ctx, presenceReadTimeout)
	defer cancel()
	p, err := s.bus.Presence(ctx, channel, max(s.cfg.PresenceMaxMembers, 0))
	if err != nil {
		return p, errf(proto.CodeUnavailable, "cannot read presence now, retry later")
	}
	if len(p.Members) > s.cfg.PresenceMaxMembers {
		p.Members = p.Members[:max(s.cfg.PresenceMaxMembers, 0)]
	}
	return p, nil
}

// clientPresence handles a presence frame: it needs the right to subscribe
// to the channel. The read runs on its own goroutine.
func (s *Server) clientPresence(c *conn, f clientFrame) {
	if !c.mayRead(f.Channel) {
		c.replyError(f.ID, errf(proto.CodeForbidden, "not allowed to read this channel's presence"))
		return
	}
	if perr := s.checkPresence(f.Channel); perr != nil {
		c.replyError(f.ID, perr)
		return
	}
	s.goroutines.start("presence", func() {
		p, perr := s.readPresence(context.Background(), f.Channel)
		if perr != nil {
			c.replyError(f.ID, perr)
			return
		}
		c.send(textFrame(func(b []byte) []byte {
			b = append(b, `{"op":"presence",`...)
			b = appendPresence(b, f.Channel, p)
			b = appendID(b, f.ID)
			return append(b, '}')
		}))
	})
}

// apiPresence handles GET /api/presence?channel=….
func (s *Server) apiPresence(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		s.apiError(w, http.StatusMethodNotAllowed, "method_not_allowed", "use GET")
		return
	}
	if !s.apiAllowed(r) {
		s.apiError(w, http.StatusUnauthorized, proto.CodeUnauthorized, s.apiDeniedMessage())
		return
	}
	channel := r.URL.Query().Get("channel")
	perr := checkChannel(channel)
	if perr == nil {
		perr = s.checkPresence(channel)
	}
	var p bus.Presence
	if perr == nil {
		p, perr = s.readPresence(r.Context(), channel)
	}
	if perr != nil {
		status := http.StatusBadRequest
		switch perr.code {
		case proto.CodeNotFound:
			status = http.StatusNotFound
		case proto.CodeUnavailable:
			status = http.StatusServiceUnavailable
			w.Header().Set("Retry-After", "1")
		}
		s.apiError(w, status, perr.code, perr.msg)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	b := appendPresence([]byte{'{'}, channel, p)
	_, _ = w.Write(append(b, "}\n"...))
}
