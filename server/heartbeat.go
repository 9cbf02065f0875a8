package server

import (
	"math/rand/v2"
	"sync"
	"time"

	"tether/internal/proto"
	"tether/ring"
)

// closeGrace is how long a connection that was sent a close frame may take
// to close before the socket is closed under it.
const closeGrace = 2 * time.Second

// heartbeats pings every connection once per PingInterval, closes silent
// ones, expires tokens and enforces close deadlines, all from one goroutine
// that advances sharded timing wheels. A connection costs no Go timer.
type heartbeats struct {
	srv      *Server       // immutable
	tick     time.Duration // immutable
	interval int64         // immutable, nanoseconds
	timeout  int64         // immutable, nanoseconds
	window   int64         // immutable, nanoseconds: Config.RefreshWindow, 0 = no refresh_due
	shards   []heartbeatShard

	// owned by advance: connections pinged, by flusher index, handed to
	// each flusher in one batch per shard (as a fan-out does)
	ready [][]*conn
}

type heartbeatShard struct {
	mu    sync.Mutex
	wheel *ring.Wheel[*conn]
	fired []heartbeatAction // scratch, guarded by mu
}

type heartbeatAction struct {
	c    *conn
	kind int8
}

const (
	hbPing int8 = iota
	hbTimeout
	hbExpired
	hbHardClose
	hbRefreshDue
)

func newHeartbeats(s *Server, shards int) *heartbeats {
	interval := s.cfg.PingInterval
	tick := interval / 64
	tick = min(max(tick, 5*time.Millisecond), time.Second)
	horizon := interval + s.cfg.PongTimeout + closeGrace
	slots := int(horizon/tick) + 1
	h := &heartbeats{
		srv:      s,
		tick:     tick,
		interval: int64(interval),
		timeout:  int64(s.cfg.PongTimeout),
		window:   int64(max(s.cfg.RefreshWindow, 0)),
		shards:   make([]heartbeatShard, shards),
		ready:    make([][]*conn, len(s.flushers)),
	}
	for i := range h.shards {
		h.shards[i].wheel = ring.New[*conn](tick, slots)
	}
	return h
}

func (h *heartbeats) shardFor(id uint64) *heartbeatShard {
	return &h.shards[id%uint64(len(h.shards))]
}

// add schedules c's first ping at a random phase within the interval, so
// that connections opened together (a reconnect storm) ping apart.
func (h *heartbeats) add(c *conn, now int64) {
	sh := c.hbShard()
	sh.mu.Lock()
	c.nextPing = now + rand.Int64N(h.interval) + 1
	sh.wheel.Add(&c.wheelEntry, time.Unix(0, h.nextCheckLocked(c)))
	sh.mu.Unlock()
}

// nextCheckLocked returns when c needs attention next. The shard's lock
// must be held.
func (h *heartbeats) nextCheckLocked(c *conn) int64 {
	next := min(c.nextPing, c.lastSeen.Load()+h.interval+h.timeout)
	if c.expiry != 0 {
		next = min(next, c.expiry)
	}
	if due := h.refreshDueLocked(c); due != 0 {
		next = min(next, due)
	}
	return next
}

func (h *heartbeats) remove(c *conn) {
	sh := c.hbShard()
	sh.mu.Lock()
	sh.wheel.Remove(&c.wheelEntry)
	sh.mu.Unlock()
}

// scheduleHardClose makes sure c's socket is closed within closeGrace.
func (h *heartbeats) scheduleHardClose(c *conn) {
	sh := c.hbShard()
	sh.mu.Lock()
	if c.hardClose == 0 {
		c.hardClose = h.srv.clock.Load() + int64(closeGrace)
		sh.wheel.Reset(&c.wheelEntry, time.Unix(0, c.hardClose))
	}
	sh.mu.Unlock()
}

func (h *heartbeats) run(done <-chan struct{}) {
	t := time.NewTicker(h.tick)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case now := <-t.C:
			h.advance(now)
		}
	}
}

// advance fires every due entry. Decisions are taken under the shard lock;
// actions that take other locks or call into nbio run after it is released.
func (h *heartbeats) advance(now time.Time) {
	ns := now.UnixNano()
	h.srv.clock.Store(ns)
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.Lock()
		sh.wheel.Advance(now, func(e *ring.Entry[*conn]) {
			c := e.Value
			if c.hardClose != 0 {
				if ns >= c.hardClose {
					sh.fired = append(sh.fired, heartbeatAction{c, hbHardClose})
				} else {
					sh.wheel.Add(e, time.Unix(0, c.hardClose))
				}
				return
			}
			switch {
			case c.expiry != 0 && ns >= c.expiry:
				sh.fired = append(sh.fired, heartbeatAction{c, hbExpired})
				return
			case ns-c.lastSeen.Load() >= h.interval+h.timeout:
				sh.fired = append(sh.fired, heartbeatAction{c, hbTimeout})
				return
			case ns >= c.nextPing:
				sh.fired = append(sh.fired, heartbeatAction{c, hbPing})
				c.nextPing = ns + h.interval
			}
			if due := h.refreshDueLocked(c); due != 0 && ns >= due {
				sh.fired = append(sh.fired, heartbeatAction{c, hbRefreshDue})
				c.dueSent = true
			}
			sh.wheel.Add(e, time.Unix(0, h.nextCheckLocked(c)))
		})
		fired := sh.fired
		sh.fired = sh.fired[:0]
		sh.mu.Unlock()
		// fired is only appended to under sh.mu by the next advance, which
		// runs on this goroutine after this loop; reading it here is safe.
		for j, a := range fired {
			fired[j] = heartbeatAction{}
			switch a.kind {
			case hbPing:
				if a.c.enqueue(pingFrame) {
					i := a.c.id % uint64(len(h.ready)) // a.c.flusher()'s index
					h.ready[i] = append(h.ready[i], a.c)
				}
			case hbTimeout:
				h.srv.m.heartbeatTimeouts.Inc()
				h.srv.closeConn(a.c, proto.CloseHeartbeatTimeout, "heartbeat timeout", "heartbeat_timeout")
			case hbExpired:
				h.srv.closeConn(a.c, proto.CloseUnauthorized, "token expired", "token_expired")
			case hbRefreshDue:
				h.sendRefreshDue(a.c)
			case hbHardClose:
				_ = a.c.nc.Close()
			}
		}
		for i, ready := range h.ready {
			h.srv.flushers[i].pushAll(ready)
			clear(ready)
			h.ready[i] = ready[:0]
		}
	}
}
