package server

import (
	"encoding/json"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/lesismal/nbio"
	"tether/ring"
)

// conn is one WebSocket connection.
type conn struct {
	// immutable after the upgrade (srv and nc: after onOpen)
	srv       *Server
	nc        *nbio.Conn
	id        uint64
	auth      *claims // nil on an open server
	flush     *flusher
	heartbeat *heartbeatShard
	expiry    int64    // token expiry, unix nanos; 0 = none
	opened    int64    // when the upgrade completed, unix nanos
	tls       *tlsConn // nil without TLS; set in onOpen

	// http reads the socket's requests until the upgrade, then is nil
	// (engine.go).
	http atomic.Pointer[httpConn]

	// lastSeen is the coarse clock (unix nanos) of the last inbound frame.
	lastSeen atomic.Int64

	// guarded by mu
	mu              sync.Mutex
	pending         [][]byte // frames waiting for the flusher (shared, read-only)
	spare           [][]byte // the other half of the double buffer
	pendingBytes    int
	queued          bool   // in a flusher queue or being flushed
	closing         bool   // a close frame is queued: nothing else is accepted
	closeAfterFlush bool   // close the socket once the close frame is written
	closed          bool   // onClose ran
	disconnect      string // why the connection ended (a metrics label)
	subs            []*subscription

	// owned by the read path (the socket's poller goroutine; wsconn.go)
	rd        wsReader
	readDone  bool // the reader failed or the client closed: input is ignored
	dropMsg   bool // a frame of the message being read was over the rate
	dropCtrl  bool // the control frame being read was over the rate
	tokens    float64
	lastTaken int64
	strikes   int

	// guarded by heartbeat.mu
	wheelEntry ring.Entry[*conn]
	nextPing   int64
	hardClose  int64 // when closing: deadline for the socket close
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
	if c.pendingBytes+len(frame) > c.srv.cfg.MaxConnBuffer {
		c.mu.Unlock()
		c.srv.slowConsumer(c)
		return false
	}
	c.pending = append(c.pending, frame)
	c.pendingBytes += len(frame)
	if c.queued {
		c.mu.Unlock()
		return false
	}
	c.queued = true
	c.mu.Unlock()
	return true
}

// send queues a frame and schedules the flush.
func (c *conn) send(frame []byte) {
	if c.enqueue(frame) {
		c.flush.push(c)
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

// connSet holds every open connection, for drain and shutdown.
type connSet struct {
	shards [64]struct {
		mu sync.Mutex
		m  map[uint64]*conn
	}
}

func (cs *connSet) init() {
	for i := range cs.shards {
		cs.shards[i].m = make(map[uint64]*conn)
	}
}

func (cs *connSet) add(c *conn) {
	sh := &cs.shards[c.id%64]
	sh.mu.Lock()
	sh.m[c.id] = c
	sh.mu.Unlock()
}

func (cs *connSet) remove(c *conn) {
	sh := &cs.shards[c.id%64]
	sh.mu.Lock()
	delete(sh.m, c.id)
	sh.mu.Unlock()
}

// snapshot returns every open connection.
func (cs *connSet) snapshot() []*conn {
	var all []*conn
	for i := range cs.shards {
		sh := &cs.shards[i]
		sh.mu.Lock()
		for _, c := range sh.m {
			all = append(all, c)
		}
		sh.mu.Unlock()
	}
	return all
}

func (cs *connSet) each(fn func(*conn)) {
	for _, c := range cs.snapshot() {
		fn(c)
	}
}
