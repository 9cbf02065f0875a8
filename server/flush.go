package server

import (
	"errors"
	"sync"
	"sync/atomic"

	"github.com/lesismal/nbio"
)

// maxCoalesce bounds the bytes one flush copies into a single write.
const maxCoalesce = 256 << 10

// flusher writes queued frames to connections. A connection with frames
// queued sits in exactly one flusher's queue (conn.queued); whatever queues
// up meanwhile goes out in the same write, so under load deliveries per
// write grow instead of syscalls per message.
type flusher struct {
	srv *Server // immutable
	idx int     // immutable: position in Server.flushers

	mu      sync.Mutex // guards queue, replies and pings
	queue   []*conn
	replies []*conn // connections with a frame that answers the client
	pings   []*conn // connections the heartbeats want pinged

	// hasReplies is set while replies is not empty, so that a flusher deep
	// in a broadcast's batch can see it without taking mu.
	hasReplies atomic.Bool

	wake chan struct{} // capacity 1

	// owned by the flusher goroutine
	work      []*conn
	replyWork []*conn
	pingWork  []*conn
	buf       []byte
}

// replyEvery is how many connections of a batch a flusher writes before it
// looks for replies queued meanwhile: a pong or an ack waits for at most
// this many writes, not for a whole broadcast's batch.
const replyEvery = 16

func (f *flusher) push(c *conn) {
	f.mu.Lock()
	f.queue = append(f.queue, c)
	f.mu.Unlock()
	f.signal()
}

// signal wakes the flusher goroutine if it waits.
func (f *flusher) signal() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// pushReply queues c, which holds a frame that answers the client (a
// pong, an ack, an error): it is written before the rest of the batch the
// flusher is writing (replyEvery), so that a client's request is not
// answered after a broadcast to every other connection of the flusher.
func (f *flusher) pushReply(c *conn) {
	f.mu.Lock()
	f.replies = append(f.replies, c)
	f.hasReplies.Store(true)
	f.mu.Unlock()
	f.signal()
}

// pushAll queues a batch of connections with one lock round.
func (f *flusher) pushAll(cs []*conn) { f.pushBatch(&f.queue, cs) }

// pushPings queues a batch of connections to be pinged (heartbeat.go).
func (f *flusher) pushPings(cs []*conn) { f.pushBatch(&f.pings, cs) }

// pushBatch appends cs to *list, guarded by f.mu, and wakes the flusher.
func (f *flusher) pushBatch(list *[]*conn, cs []*conn) {
	if len(cs) == 0 {
		return
	}
	f.mu.Lock()
	*list = append(*list, cs...)
	f.mu.Unlock()
	f.signal()
}

func (f *flusher) run(done <-chan struct{}) {
	for {
		select {
		case <-done:
			return
		case <-f.wake:
		}
		for {
			f.mu.Lock()
			f.work, f.queue = f.queue, f.work[:0]
			f.pingWork, f.pings = f.pings, f.pingWork[:0]
			f.mu.Unlock()
			f.flushReplies()
			if len(f.work) == 0 && len(f.pingWork) == 0 {
				if f.hasReplies.Load() {
					continue
				}
				break
			}
			for i, c := range f.pingWork {
				f.ping(c)
				f.pingWork[i] = nil
			}
			for i, c := range f.work {
				if i%replyEvery == 0 && f.hasReplies.Load() {
					f.flushReplies()
				}
				f.flush(c)
				f.work[i] = nil
			}
		}
		if cap(f.buf) > 4*maxCoalesce {
			f.buf = nil
		}
	}
}

// flushReplies writes the connections queued by pushReply.
func (f *flusher) flushReplies() {
	if !f.hasReplies.Load() {
		return
	}
	f.mu.Lock()
	f.replyWork, f.replies = f.replies, f.replyWork[:0]
	f.hasReplies.Store(false)
	f.mu.Unlock()
	for i, c := range f.replyWork {
		f.flush(c)
		f.replyWork[i] = nil
	}
}

// flush writes everything queued for c. If more was queued during the
// write, c goes to the back of the queue (fairness between connections).
func (f *flusher) flush(c *conn) {
	bufs := c.takePending()
	var err error
	for i := 0; i < len(bufs) && err == nil; {
		f.srv.m.socketWrites.Inc()
		if i == len(bufs)-1 || len(bufs[i]) >= maxCoalesce {
			_, err = c.write(bufs[i])
			i++
			continue
		}
		b := f.buf[:0]
		for j := i; i < len(bufs) && (i == j || len(b)+len(bufs[i]) <= maxCoalesce); i++ {
			b = append(b, bufs[i]...)
		}
		f.buf = b
		_, err = c.write(b)
		f.srv.m.coalescedWrites.Inc()
	}
	clear(bufs)
	f.written(c, bufs, true, err)
}

// msClock returns the coarse clock ns in milliseconds, modulo 2^32: the
// difference of two such readings is right while they are less than 49
// days apart, and a connection is written to at least once per ping
// interval.
func msClock(ns int64) uint32 { return uint32(ns / 1e6) }

// takePending takes the frames queued for c, leaving it the spare half of
// its double buffer to queue into meanwhile.
func (c *conn) takePending() [][]byte {
	c.mu.Lock()
	bufs := c.pending
	c.pending = c.spare[:0]
	c.spare = nil
	c.pendingBytes = 0
	c.mu.Unlock()
	return bufs
}

// ping writes a ping to c, the heartbeats' request (heartbeat.go): at
// once if nothing is queued for c, else with the frames queued, in their
// write. The ping takes c's lock once (takePing) before the write and once
// after (written), as a flush does.
func (f *flusher) ping(c *conn) {
	if !c.takePing() {
		return
	}
	f.srv.m.socketWrites.Inc()
	_, err := c.write(pingFrame)
	f.written(c, nil, false, err)
}

// takePing reports whether the caller is to write a ping to c now: c is
// open and nothing is queued for it; c is then marked queued until the
// write is done. If frames are queued, the ping joins them; if c is
// closing, no ping is needed.
//
// Nor is one needed when frames went both ways within heartbeats.recent:
// two heartbeat ticks (the coarse clock's step is a tick: interval/64,
// 390 ms at the default 25 s), or half the PongTimeout if that is less.
// The client's watchdog and a load balancer's idle timer want a frame
// from the server at least once per interval (the watchdog allows the
// client's grace more), and one is being written now or was at most
// recent ago, the next ping coming one interval later; so the client's
// grace must be at least that (tether's clients: 5 s). The node's own
// watchdog wants a frame from the client within interval + PongTimeout of
// the last; the client sent one at most PongTimeout/2 ago, so the next
// ping's answer is in time. Such a ping is counted as skipped.
func (c *conn) takePing() bool {
	now := c.srv.clock.Load()
	recent := c.srv.heartbeats.recent
	c.mu.Lock()
	if c.closing || c.closed {
		c.mu.Unlock()
		return false
	}
	if now-c.lastSeen.Load() < recent && (c.queued || int64(msClock(now)-c.lastWrite)*1e6 < recent) {
		c.mu.Unlock()
		c.srv.m.pingsSkipped.Inc()
		return false
	}
	if c.queued {
		c.mu.Unlock()
		c.enqueue(pingFrame) // its flusher holds c: no push
		return false
	}
	c.queued = true
	c.mu.Unlock()
	return true
}

// written ends a write to c of the frames taken from its queue (bufs, when
// took) or of a ping: on error the queue is dropped; else c goes back to
// its flusher if more was queued meanwhile, and is closed if that was the
// last frame before closing.
func (f *flusher) written(c *conn, bufs [][]byte, took bool, err error) {
	if err != nil {
		if errors.Is(err, nbio.ErrOverflow) {
			c.srv.slowConsumer(c)
		}
		c.mu.Lock()
		c.pending = c.pending[:0]
		c.pendingBytes = 0
		c.queued = false
		c.mu.Unlock()
		return
	}
	c.mu.Lock()
	if !took || len(bufs) > 0 {
		c.lastWrite = msClock(f.srv.clock.Load())
	}
	if took {
		c.spare = bufs[:0]
	}
	if len(c.pending) > 0 {
		c.mu.Unlock()
		f.push(c)
		return
	}
	c.queued = false
	closeNow := c.closeAfterFlush
	c.mu.Unlock()
	if closeNow {
		c.closeGracefully()
	}
}
