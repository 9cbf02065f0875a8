package server

import (
	"testing"
	"time"

	"github.com/lesismal/nbio"

	"tether/bus"
)

// TestHeartbeatSilenceDeadline drives the heartbeats in simulated time,
// without sockets (as the 1M simulation does), and checks when each kind
// of connection is closed with 4008: a silent one, and one that answers
// pings until it stops, both at their last frame + PingInterval +
// PongTimeout (within one tick after it, as a deadline on the wheel is
// rounded up to a tick); one that always answers, and one whose client
// sends frames but ignores pings, never. Every open one is pinged once per
// interval, but for one that was sent and sent a frame within every tick:
// its pings are skipped, and it is not closed either.
func TestHeartbeatSilenceDeadline(t *testing.T) {
	const interval, timeout = 10 * time.Second, 4 * time.Second
	s, err := New(Config{Listen: "127.0.0.1:0", PingInterval: interval, PongTimeout: timeout}, bus.NewLocal(bus.Config{}), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.bus.Close() })
	h := s.heartbeats
	// Start on a tick boundary, so that the times below are the wheel's.
	start := time.Unix(0, s.clock.Load()/int64(h.tick)*int64(h.tick))
	h.advance(start)

	type sim struct {
		name      string
		answers   func(at time.Duration) bool // answers a ping written at this time
		talksAt   time.Duration               // sends a frame every talksAt (0: never on its own)
		busy      bool                        // is sent a frame every tick
		c         *conn
		pings     int
		closedAt  time.Duration
		lastFrame time.Duration
	}
	stopsAt := 23 * time.Second
	sims := []*sim{
		{name: "silent", answers: func(time.Duration) bool { return false }},
		{name: "answers then stops", answers: func(at time.Duration) bool { return at < stopsAt }},
		{name: "answers", answers: func(time.Duration) bool { return true }},
		{name: "talks, ignores pings", answers: func(time.Duration) bool { return false }, talksAt: 3 * time.Second},
		{name: "busy both ways", answers: func(time.Duration) bool { return true }, talksAt: h.tick / 2, busy: true},
	}
	byConn := map[*conn]*sim{}
	for _, x := range sims {
		x.c = &conn{srv: s, nc: new(nbio.Conn)}
		s.initConn(x.c, nil)
		s.addConn(x.c)
		byConn[x.c] = x
	}
	const span = 60 * time.Second
	for at := h.tick; at <= span; at += h.tick {
		now := start.Add(at)
		for _, x := range sims {
			if x.talksAt > 0 && at/x.talksAt != (at-h.tick)/x.talksAt && x.closedAt == 0 {
				x.c.lastSeen.Store(now.UnixNano())
				x.lastFrame = at
			}
		}
		for _, x := range sims {
			if x.busy && x.closedAt == 0 {
				x.c.send(pingFrame) // any frame: the server writes to it every tick
			}
		}
		h.advance(now)
		for _, f := range s.flushers {
			f.mu.Lock()
			pings, queue := f.pings, f.queue
			f.pings, f.queue = nil, nil
			f.mu.Unlock()
			for _, c := range pings {
				if !c.takePing() {
					continue
				}
				f.written(c, nil, false, nil)
				x := byConn[c]
				x.pings++
				if x.answers(at) {
					c.lastSeen.Store(now.UnixNano())
					x.lastFrame = at
				}
			}
			for _, c := range queue { // close frames
				f.written(c, c.takePending(), true, nil)
			}
		}
		for _, x := range sims {
			x.c.mu.Lock()
			closing := x.c.closing
			x.c.mu.Unlock()
			if closing && x.closedAt == 0 {
				x.closedAt = at
				h.remove(x.c) // the socket closes: onClose
			}
		}
	}
	for _, x := range sims {
		switch x.name {
		case "silent", "answers then stops":
			deadline := x.lastFrame + interval + timeout
			if x.closedAt < deadline || x.closedAt > deadline+h.tick {
				t.Errorf("%s: last frame at %v, closed at %v, want within a tick (%v) after %v", x.name, x.lastFrame, x.closedAt, h.tick, deadline)
			}
		case "busy both ways":
			// Frames went both ways within every tick: no ping is needed.
			if x.closedAt != 0 || x.pings != 0 {
				t.Errorf("%s: closed at %v, %d pings, want neither", x.name, x.closedAt, x.pings)
			}
		default:
			if x.closedAt != 0 {
				t.Errorf("%s: closed at %v", x.name, x.closedAt)
			}
			if want := int(span / interval); x.pings < want-1 || x.pings > want {
				t.Errorf("%s: %d pings in %v, want %d", x.name, x.pings, span, want)
			}
		}
	}
	if n := s.m.heartbeatTimeouts.Get(); n != 2 {
		t.Errorf("%d heartbeat timeouts counted, want 2", n)
	}
	if n, want := s.m.pingsSkipped.Get(), uint64(span/interval); n < want-1 || n > want {
		t.Errorf("%d pings skipped, want %d (the busy connection's)", n, want)
	}
}
