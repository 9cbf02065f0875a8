package server

import (
	"encoding/json"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lesismal/nbio"
	"tether/ring"
)

// conn is one WebSocket connection.
//
// Memory: a node keeps one conn per connection for as long as it is open,
// so its size is the node's density (docs/BENCHMARKS.md, "Memory per
// connection"): what can be derived from id (the flusher, the heartbeat
// shard) is not stored, small fields are grouped so that no padding is
// wasted, and the subscriptions are an intrusive list, not a slice.
type conn struct {
	// immutable after the upgrade (srv and nc: after onOpen)
	srv    *Server
	nc     *nbio.Conn
	id     uint64
	auth   *claims  // nil on an open server; refresh replaces auth.channels and auth.publish (refresh.go)
	expiry int64    // token expiry, unix nanos; 0 = none; after the upgrade guarded by the heartbeat shard's mu (refresh.go)
	opened int64    // when the upgrade completed, unix nanos
	tls    *tlsConn // nil without TLS; set in onOpen

	// http reads the socket's requests until the upgrade, then is nil
	// (engine.go).
	http atomic.Pointer[httpConn]

	// lastSeen is the coarse clock (unix nanos) of the last inbound frame.
	lastSeen atomic.Int64

	// guarded by mu
	mu              sync.Mutex
	pending         [][]byte      // frames waiting for the flusher (shared, read-only)
	spare           [][]byte      // the other half of the double buffer
	pendingBytes    int32         // at most Config.MaxConnBuffer, which is at most 1 GiB
	lastWrite       uint32        // coarse clock in ms (mod 2^32) of the latest write to the socket (takePing)
	disconnect      string        // why the connection ended (a metrics label)
	subs            *subscription // first of the list linked by subscription.nextOfConn
	queued          bool          // in a flusher queue or being flushed
	closing         bool          // a close frame is queued: nothing else is accepted
	closeAfterFlush bool          // close the socket once the close frame is written
	closed          bool          // onClose ran

	// guarded by the connSet shard's lock
	setIdx int32 // position in the shard's slice while c is in the set

	// owned by the read path (the socket's poller goroutine; wsconn.go)
	readDone  bool // the reader failed or the client closed: input is ignored
	dropMsg   bool // a frame of the message being read was over the rate
	dropCtrl  bool // the control frame being read was over the rate
	dueSent   bool // guarded by the heartbeat shard's mu: refresh_due sent for expiry (here, in padding, so a conn stays 352 bytes)
	strikes   int32
	rd        wsReader
	tokens    float64
	lastTaken int64

	// guarded by the heartbeat shard's mu (hbShard)
	wheelEntry ring.Entry[*conn] // scheduled only while a deadline other than the ping is pending
	phase      int32             // 1 + index of the ping phase holding c; 0 when in none
	phasePos   int32             // position in that phase
	hardClose  int64             // when closing: deadline for the socket close
}

// flusher returns the flusher that writes c's frames: chosen by id, so
// that a conn need not store it.
func (c *conn) flusher() *flusher {
	return c.srv.flushers[c.id%uint64(len(c.srv.flushers))]
}

// hbShard returns the heartbeat shard that times c, chosen by id.
func (c *conn) hbShard() *heartbeatShard {
	return c.srv.heartbeats.shardFor(c.id)
}

// initConn gives c, whose upgrade is being answered, its id and the state
// an upgraded connection starts with. The upgrade (upgrade.go) and the 1M
// simulation (million_test.go) build a connection through it and addConn.
func (s *Server) initConn(c *conn, auth *claims) {
	c.id = s.nextID.Add(1)
	c.auth = auth
	c.opened = time.Now().UnixNano()
	if auth != nil {
		c.expiry = auth.expiry.UnixNano()
	}
	c.rd.maxMessage = wsMaxMessage(s.cfg.MaxMessageSize + 1024)
	c.wheelEntry.Value = c
	c.lastSeen.Store(s.clock.Load())
	c.lastWrite = msClock(s.clock.Load()) - 1<<31 // long ago: no write yet
}

// addConn makes c, upgraded, known to the server: in the connection set
// and timed by the heartbeats from now on.
func (s *Server) addConn(c *conn) {
	s.conns.add(c)
	s.m.accepted.Inc()
	s.heartbeats.add(c, s.clock.Load())
}

// enqueue queues a frame for c. It reports whether c must be handed to its
// flusher (it was idle). It never blocks and allocates nothing once the
// queue has grown to its working size.
func (c *conn) enqueue(frame []byte) (schedule bool) {
	c.mu.Lock()
	if c.closing || c.closed {
		c.mu.Unlock()
		return false
	}
	if int(c.pendingBytes)+len(frame) > c.srv.cfg.MaxConnBuffer {
		c.mu.Unlock()
		c.srv.slowConsumer(c)
		return false
	}
	c.pending = append(c.pending, frame)
	c.pendingBytes += int32(len(frame))
	if c.queued {
		c.mu.Unlock()
		return false
	}
	c.queued = true
	c.mu.Unlock()
	return true
}

// send queues a frame that answers the client (a reply, a pong, an
// error, a close) and schedules the flush ahead of broadcasts
// (flusher.pushReply).
func (c *conn) send(frame []byte) {
	if c.enqueue(frame) {
		c.flusher().pushReply(c)
	}
}

func (c *conn) connID() string {
	return c.srv.cfg.NodeID + "-" + strconv.FormatUint(c.id, 10)
}

// reply sends a small frame built by build.
func (c *conn) reply(build func([]byte) []byte) {
	c.send(textFrame(build))
}

func (c *conn) replyError(id json.RawMessage, e *protoError) {
	c.srv.m.protocolErrors(e.code).Inc()
	c.reply(func(b []byte) []byte { return appendError(b, id, e.code, e.msg) })
}

// connSet holds every open connection, for drain and shutdown: 64 shards
// of a slice, each conn knowing its position (conn.setIdx), so that adding
// and removing are O(1) and a connection costs the set one pointer, not a
// map entry.
type connSet struct {
	shards [connSetShards]struct {
		mu    sync.Mutex
		conns []*conn
	}
}

const connSetShards = 64

func (cs *connSet) add(c *conn) {
	sh := &cs.shards[c.id%connSetShards]
	sh.mu.Lock()
	c.setIdx = int32(len(sh.conns))
	sh.conns = append(sh.conns, c)
	sh.mu.Unlock()
}

// remove removes c; it does nothing if c is not in the set.
func (cs *connSet) remove(c *conn) {
	sh := &cs.shards[c.id%connSetShards]
	sh.mu.Lock()
	if i := c.setIdx; i >= 0 && int(i) < len(sh.conns) && sh.conns[i] == c {
		last := len(sh.conns) - 1
		moved := sh.conns[last]
		sh.conns[i] = moved
		moved.setIdx = i
		sh.conns[last] = nil
		sh.conns = sh.conns[:last]
		c.setIdx = -1
		if cap(sh.conns) > 64 && len(sh.conns) < cap(sh.conns)/4 {
			sh.conns = append([]*conn(nil), sh.conns...) // give back what a storm grew
		}
	}
	sh.mu.Unlock()
}

// snapshot returns every open connection.
func (cs *connSet) snapshot() []*conn {
	var all []*conn
	for i := range cs.shards {
		sh := &cs.shards[i]
		sh.mu.Lock()
		all = append(all, sh.conns...)
		sh.mu.Unlock()
	}
	return all
}

// filter returns the open connections match selects, without copying the
// set: match runs with a shard's lock held, so it must not block.
func (cs *connSet) filter(match func(*conn) bool) []*conn {
	var out []*conn
	for i := range cs.shards {
		sh := &cs.shards[i]
		sh.mu.Lock()
		for _, c := range sh.conns {
			if match(c) {
				out = append(out, c)
			}
		}
		sh.mu.Unlock()
	}
	return out
}

func (cs *connSet) each(fn func(*conn)) {
	for _, c := range cs.snapshot() {
		fn(c)
	}
}
