package server

import (
	"errors"
	"io"
	"syscall"
	"time"

	"github.com/lesismal/nbio"
	"tether/internal/proto"
)

// sendClose queues a close frame as the last frame of c. The peer answers
// with its own close frame, on which the engine closes the socket; a peer
// that does not is cut off after closeGrace. Closing at once instead would
// reset the connection if the peer's frames were still arriving, and the
// peer could lose the close frame that says why. It reports whether this
// call started the close.
func (c *conn) sendClose(code int, reason string, preface []byte) bool {
	return c.queueClose(closeFrame(code, reason), preface, "", false)
}

// queueClose queues preface (if any) and the close frame as the last frames
// of c, records disconnect as the reason unless one is set, and makes sure
// the socket is closed: once the frame is written when thenClose is set,
// within closeGrace in any case. It reports false, and does nothing, when c
// is already closing.
func (c *conn) queueClose(frame, preface []byte, disconnect string, thenClose bool) bool {
	c.mu.Lock()
	if c.closing || c.closed {
		c.mu.Unlock()
		return false
	}
	c.closing = true
	c.closeAfterFlush = thenClose
	if c.disconnect == "" {
		c.disconnect = disconnect
	}
	if preface != nil {
		c.pending = append(c.pending, preface)
	}
	c.pending = append(c.pending, frame)
	schedule := !c.queued
	c.queued = true
	c.mu.Unlock()
	if schedule {
		c.flusher().push(c)
	}
	c.srv.heartbeats.scheduleHardClose(c)
	return true
}

// onClose runs once per upgraded connection when its socket is closed,
// on whichever goroutine closed it (nbio calls it from Close).
//
// Why it ended is the reason set when the server closed it or the client
// sent a close frame ("client"); otherwise the socket's error tells: "eof"
// for a FIN without a close frame, "reset" for a reset, "slow_consumer"
// for a write buffer over its bound. "eof" and "reset" are what a load
// balancer's idle timeout looks like from here.
func (s *Server) onClose(c *conn, err error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	subs := c.subs
	c.subs = nil
	c.pending, c.spare = nil, nil
	reason := c.disconnect
	c.mu.Unlock()
	if reason == "" {
		switch {
		case errors.Is(err, nbio.ErrOverflow):
			reason = "slow_consumer"
			s.m.slowConsumers.Inc()
		case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ETIMEDOUT):
			reason = "reset"
		case err == nil, errors.Is(err, io.EOF):
			reason = "eof"
		default:
			reason = "error"
		}
	}
	s.log.Debug("connection closed", "conn", c.id, "reason", reason, "err", err)
	s.heartbeats.remove(c)
	for sub := subs; sub != nil; {
		next := sub.nextOfConn // c is closed: nothing links or unlinks now
		s.removeSub(sub)
		sub = next
	}
	s.conns.remove(c)
	s.m.conns.Add(-1)
	if s.countsUser(c) {
		s.userConns.release(c.auth.sub)
	}
	s.m.disconnect(reason)
	end := time.Now().UnixNano()
	s.lifetimes.observe(end, time.Duration(end-c.opened), time.Duration(s.clock.Load()-c.lastSeen.Load()), reason)
}

// setDisconnect records why c is being closed, unless a reason is set.
func (c *conn) setDisconnect(reason string) {
	c.mu.Lock()
	if c.disconnect == "" {
		c.disconnect = reason
	}
	c.mu.Unlock()
}

// closeConn sends c a close frame with code and closes it. It reports
// false when c was closing already.
func (s *Server) closeConn(c *conn, code int, text, reason string) bool {
	c.setDisconnect(reason)
	return c.sendClose(code, text, nil)
}

// slowConsumer closes c for falling behind by more than MaxConnBuffer.
func (s *Server) slowConsumer(c *conn) {
	c.mu.Lock()
	first := c.disconnect == "" && !c.closed
	if first {
		c.disconnect = "slow_consumer"
	}
	c.mu.Unlock()
	if !first {
		return
	}
	s.m.slowConsumers.Inc()
	// The queue is full: drop it so the close frame goes out next.
	c.mu.Lock()
	clear(c.pending)
	c.pending = c.pending[:0]
	c.pendingBytes = 0
	c.mu.Unlock()
	c.sendClose(proto.CloseSlowConsumer, "slow consumer", nil)
}
