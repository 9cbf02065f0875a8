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
// ones, expires tokens and enforces close deadlines, all from one goroutine.
// A connection costs no Go timer.
//
// Pings follow a fixed phase: a connection is put, when it opens, in one of
// the interval's tick-long phases at random (connections opened together
// ping apart) and stays there. Each tick scans two phases: the one whose
// connections are pinged now, and the one pinged PongTimeout ago, whose
// connections that sent nothing since their ping are suspects. A phase is a
// dense slice of connections, so a scan is a run of independent loads, not
// a chase through a linked list, and nothing is unlinked or relinked per
// ping. The ping itself is queued by the flusher that writes it
// (flusher.ping), which takes the connection's lock once for both, and
// skips it when frames went both ways within recent (conn.takePing).
//
// The deadlines that are not periodic live on a timing wheel, one entry per
// connection, scheduled only while one of them is pending: the close
// deadline of a closing connection, the token's expiry and refresh_due, and
// the silence deadline of a suspect (last frame + PingInterval +
// PongTimeout), which closes it with 4008 exactly when the old per-ping
// wheel did. At idle the wheel holds only the connections with a token.
type heartbeats struct {
	srv      *Server       // immutable
	tick     time.Duration // immutable
	interval int64         // immutable, nanoseconds
	timeout  int64         // immutable, nanoseconds
	window   int64         // immutable, nanoseconds: Config.RefreshWindow, 0 = no refresh_due
	phases   int64         // immutable: phases (ticks) per interval
	check    int64         // immutable: ticks from a phase's ping to its check, ⌈PongTimeout/tick⌉
	recent   int64         // immutable, nanoseconds: frames both ways within it make a ping needless (conn.takePing)
	shards   []heartbeatShard

	// owned by advance
	cur   int64     // next tick to scan; 0 before the first advance
	pings [][]*conn // connections to ping, by flusher index, handed to each flusher in one batch per shard
}

type heartbeatShard struct {
	mu     sync.Mutex
	phases [][]*conn          // by phase; a conn's place is conn.phase, conn.phasePos
	wheel  *ring.Wheel[*conn] // the deadlines that are not periodic
	fired  []heartbeatAction  // scratch, guarded by mu
}

type heartbeatAction struct {
	c    *conn
	kind int8
}

const (
	hbTimeout int8 = iota
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
		phases:   int64((interval + tick - 1) / tick),
		check:    int64((s.cfg.PongTimeout + tick - 1) / tick),
		recent:   int64(min(2*tick, s.cfg.PongTimeout/2)),
		shards:   make([]heartbeatShard, shards),
		pings:    make([][]*conn, len(s.flushers)),
	}
	for i := range h.shards {
		h.shards[i].wheel = ring.New[*conn](tick, slots)
		h.shards[i].phases = make([][]*conn, h.phases)
	}
	return h
}

func (h *heartbeats) shardFor(id uint64) *heartbeatShard {
	return &h.shards[id%uint64(len(h.shards))]
}

// add puts c in a phase drawn at random, so that connections opened
// together (a reconnect storm) ping apart: its first ping comes within one
// interval.
func (h *heartbeats) add(c *conn, now int64) {
	sh := c.hbShard()
	sh.mu.Lock()
	p := rand.Int64N(h.phases)
	c.phase = int32(p) + 1
	c.phasePos = int32(len(sh.phases[p]))
	sh.phases[p] = append(sh.phases[p], c)
	h.scheduleLocked(sh, c, now)
	sh.mu.Unlock()
}

// remove forgets c. It may be called more than once.
func (h *heartbeats) remove(c *conn) {
	sh := c.hbShard()
	sh.mu.Lock()
	if c.phase != 0 {
		p := &sh.phases[c.phase-1]
		last := len(*p) - 1
		moved := (*p)[last]
		(*p)[c.phasePos] = moved
		moved.phasePos = c.phasePos
		(*p)[last] = nil
		*p = (*p)[:last]
		c.phase = 0
	}
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

// lastPingLocked returns when c's phase was last scanned for a ping as of
// now (unix nanos): its ping, if it was sent one, went out then.
func (h *heartbeats) lastPingLocked(c *conn, now int64) int64 {
	t := now / int64(h.tick)
	t -= (t - int64(c.phase-1)) % h.phases
	return t * int64(h.tick)
}

// nextCheckLocked returns the earliest deadline of c that the wheel times
// as of now, or 0 if none is pending: token expiry, refresh_due, and the
// silence deadline if c has not answered its latest ping. The shard's lock
// must be held and c must not be closing.
func (h *heartbeats) nextCheckLocked(c *conn, now int64) int64 {
	next := int64(0)
	earlier := func(t int64) {
		if t != 0 && (next == 0 || t < next) {
			next = t
		}
	}
	earlier(c.expiry)
	earlier(h.refreshDueLocked(c))
	if seen := c.lastSeen.Load(); seen < h.lastPingLocked(c, now) {
		earlier(seen + h.interval + h.timeout)
	}
	return next
}

// scheduleLocked puts c's wheel entry at its next deadline, or takes it
// off the wheel if none is pending. The shard's lock must be held.
func (h *heartbeats) scheduleLocked(sh *heartbeatShard, c *conn, now int64) {
	if c.hardClose != 0 {
		return
	}
	if next := h.nextCheckLocked(c, now); next != 0 {
		sh.wheel.Reset(&c.wheelEntry, time.Unix(0, next))
	} else {
		sh.wheel.Remove(&c.wheelEntry)
	}
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

// advance scans the phases of the ticks elapsed since the previous call
// and fires the wheels' due entries. Decisions are taken under the shard
// lock; actions that take other locks or call into nbio run after it is
// released.
func (h *heartbeats) advance(now time.Time) {
	ns := now.UnixNano()
	h.srv.clock.Store(ns)
	tick := int64(h.tick)
	last := ns / tick
	first := max(h.cur, last-h.phases+1) // after a long pause, each phase once
	if h.cur == 0 {
		first = last
	}
	h.cur = last + 1
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.Lock()
		for t := first; t <= last; t++ {
			h.pingPhaseLocked(sh, sh.phases[t%h.phases], ns)
			h.checkPhaseLocked(sh, sh.phases[(t-h.check)%h.phases], (t-h.check)*tick, ns)
		}
		sh.wheel.Advance(now, func(e *ring.Entry[*conn]) { h.fireLocked(sh, e.Value, ns) })
		fired := sh.fired
		sh.fired = sh.fired[:0]
		sh.mu.Unlock()
		// fired is only appended to under sh.mu by the next advance, which
		// runs on this goroutine after this loop; reading it here is safe.
		for j, a := range fired {
			fired[j] = heartbeatAction{}
			switch a.kind {
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
		for i, pings := range h.pings {
			h.srv.flushers[i].pushPings(pings)
			clear(pings)
			h.pings[i] = pings[:0]
		}
	}
}

// pingPhaseLocked pings the connections of a phase whose tick has come,
// and closes those silent for PingInterval+PongTimeout (normally found
// earlier by their check).
func (h *heartbeats) pingPhaseLocked(sh *heartbeatShard, phase []*conn, now int64) {
	n := uint64(len(h.pings))
	for _, c := range phase {
		if c.hardClose != 0 {
			continue
		}
		if now-c.lastSeen.Load() >= h.interval+h.timeout {
			sh.fired = append(sh.fired, heartbeatAction{c, hbTimeout})
			continue
		}
		i := c.id % n // c.flusher()'s index
		h.pings[i] = append(h.pings[i], c)
	}
}

// checkPhaseLocked looks at the connections of the phase pinged at ping:
// one that sent nothing since is closed when it has been silent for
// PingInterval+PongTimeout, or else timed by the wheel until then.
func (h *heartbeats) checkPhaseLocked(sh *heartbeatShard, phase []*conn, ping, now int64) {
	for _, c := range phase {
		seen := c.lastSeen.Load()
		if seen >= ping || c.hardClose != 0 {
			continue
		}
		deadline := seen + h.interval + h.timeout
		if now >= deadline {
			sh.fired = append(sh.fired, heartbeatAction{c, hbTimeout})
			continue
		}
		if !c.wheelEntry.Scheduled() || deadline < c.wheelEntry.Deadline().UnixNano() {
			sh.wheel.Reset(&c.wheelEntry, time.Unix(0, deadline))
		}
	}
}

// fireLocked handles c's wheel entry coming due.
func (h *heartbeats) fireLocked(sh *heartbeatShard, c *conn, now int64) {
	if c.hardClose != 0 {
		if now >= c.hardClose {
			sh.fired = append(sh.fired, heartbeatAction{c, hbHardClose})
		} else {
			sh.wheel.Add(&c.wheelEntry, time.Unix(0, c.hardClose))
		}
		return
	}
	switch {
	case c.expiry != 0 && now >= c.expiry:
		sh.fired = append(sh.fired, heartbeatAction{c, hbExpired})
		return
	case now-c.lastSeen.Load() >= h.interval+h.timeout:
		sh.fired = append(sh.fired, heartbeatAction{c, hbTimeout})
		return
	}
	if due := h.refreshDueLocked(c); due != 0 && now >= due {
		sh.fired = append(sh.fired, heartbeatAction{c, hbRefreshDue})
		c.dueSent = true
	}
	h.scheduleLocked(sh, c, now)
}
