package bench

import (
	"errors"
	"io"
	"strconv"
	"syscall"
	"time"

	"tether/internal/wsframe"

	"github.com/lesismal/nbio"
)

// This file is the receiving half of a pool, run on nbio's poller
// goroutines: the upgrade response, WebSocket frames, tether's frames
// (welcome, subscribed, ping, message …) and the exact accounting of each
// delivery, which allocates nothing.

// onClose handles a connection closed by the peer, the network or us.
func (p *pool) onClose(c *nbio.Conn, err error) {
	cs, _ := c.Session().(*connState)
	if cs == nil {
		return
	}
	cs.mu.Lock()
	if cs.c != c {
		cs.mu.Unlock()
		return
	}
	switch cs.state {
	case stUp:
		cs.c = nil
		cs.state = stDone
		reason := closeReason(cs.closeCode, err)
		if p.cfg.Soak {
			cs.state = stIdle
		}
		cs.mu.Unlock()
		p.upNow.Add(-1)
		p.dropped.Add(1)
		p.mu.Lock()
		p.drops[reason]++
		p.mu.Unlock()
		if p.cfg.Soak {
			p.requeue(cs, retryDelay(-1, 0))
		}
		return
	case stHandshake, stOpen, stSubscribing:
		gen := cs.gen
		cs.mu.Unlock()
		p.fail(cs, gen, "closed_early", -1, nil)
		return
	}
	cs.mu.Unlock()
}

// closeReason names why a connection that was up went away.
func closeReason(code uint16, err error) string {
	switch {
	case code != 0:
		return "dropped_close_" + strconv.Itoa(int(code))
	case err == nil || errors.Is(err, io.EOF):
		return "dropped_eof"
	case errors.Is(err, syscall.ECONNRESET):
		return "dropped_reset"
	case errors.Is(err, syscall.ETIMEDOUT):
		return "dropped_timeout"
	}
	return "dropped_error"
}

// onData handles bytes from a connection. It runs on a poller goroutine.
func (p *pool) onData(c *nbio.Conn, data []byte) {
	cs, _ := c.Session().(*connState)
	if cs == nil {
		return
	}
	sh := &p.shards[c.Hash()%len(p.shards)]
	now := time.Now().UnixNano()
	cs.mu.Lock()
	if cs.c != c {
		cs.mu.Unlock()
		return
	}
	later := deferred{retryAfter: -1}
	n := p.processLocked(cs, sh, data, now, &later)
	gen := cs.gen
	cs.mu.Unlock()
	if n > 0 {
		sh.delivered.Add(uint64(n))
		if b := (now - p.t0.Load()) / int64(timelineInterval); b >= 0 {
			sh.timeline[min(b, timelineCap-1)].Add(uint64(n))
		}
		for {
			l := sh.last.Load()
			if now <= l || sh.last.CompareAndSwap(l, now) {
				break
			}
		}
	}
	if len(later.out) > 0 {
		_, _ = c.Write(later.out)
	}
	if later.closeConn {
		_ = c.Close()
	}
	if later.reason != "" {
		p.fail(cs, gen, later.reason, later.retryAfter, nil)
	}
}

// deferred is what processLocked found that must wait until cs.mu is
// released: an attempt failure, frames to write, a close.
type deferred struct {
	reason     string
	retryAfter int
	// out holds frames to write once cs.mu is released: a failed nbio
	// write calls onClose synchronously, which takes cs.mu.
	out []byte
	// closeConn asks to close a connection that was up (protocol error).
	closeConn bool
}

// processLocked parses data for cs and returns the number of new unique
// deliveries. cs.mu held on entry.
func (p *pool) processLocked(cs *connState, sh *shard, data []byte, now int64, later *deferred) int {
	buf := data
	inCopy := len(cs.in) > 0
	if inCopy {
		cs.in = append(cs.in, data...)
		buf = cs.in
	}
	off := 0
	if cs.state == stHandshake {
		res, n, err := parseHandshake(buf, p.accept)
		if err != nil {
			later.reason = "bad_handshake"
			return 0
		}
		if n == 0 {
			p.keepLocked(cs, buf, 0, inCopy)
			return 0
		}
		switch {
		case res.status == 101 && res.acceptOK:
			p.handshakeDoneLocked(cs, now)
		case res.status == 101:
			later.reason = "bad_accept"
			return 0
		case res.status == 503:
			later.reason, later.retryAfter = "http_503", max(res.retryAfter, 0)
			return 0
		default:
			later.reason = "http_" + strconv.Itoa(res.status)
			return 0
		}
		off = n
	}
	delivered := 0
	for off < len(buf) {
		h, n, err := parseFrameHeader(buf[off:])
		if err != nil {
			p.malformedFrames.Add(1)
			if cs.state != stUp {
				later.reason = "bad_frame"
			} else {
				later.closeConn = true // onClose counts the drop
			}
			return delivered
		}
		if n == 0 {
			break
		}
		payload := buf[off+n : off+n+int(h.Length)]
		off += n + int(h.Length)
		switch h.Opcode {
		case wsframe.OpText, wsframe.OpBinary:
			if h.Fin {
				delivered += p.messageLocked(cs, sh, payload, now, later)
			} else {
				cs.msg = append(cs.msg[:0], payload...)
				cs.inMsg = true
			}
		case wsframe.OpContinuation:
			if cs.inMsg {
				cs.msg = append(cs.msg, payload...)
				if len(cs.msg) > maxFrame {
					later.reason = "bad_frame"
					return delivered
				}
				if h.Fin {
					delivered += p.messageLocked(cs, sh, cs.msg, now, later)
					cs.msg, cs.inMsg = nil, false
				}
			}
		case wsframe.OpPing:
			later.out = wsframe.AppendMaskedFrame(later.out, wsframe.OpPong, true, payload, cs.maskKey())
		case wsframe.OpClose:
			code, _, _ := wsframe.DecodeClose(payload)
			later.out = wsframe.AppendMaskedFrame(later.out, wsframe.OpClose, true, payload[:min(len(payload), 2)], cs.maskKey())
			if cs.state != stUp {
				later.reason = "close_" + strconv.Itoa(code)
			} else {
				cs.closeCode = uint16(code)
			}
			// When up, onClose counts the drop after the server closes.
		}
		if later.reason != "" {
			return delivered
		}
	}
	p.keepLocked(cs, buf, off, inCopy)
	return delivered
}

// keepLocked keeps buf[off:] for the next read. buf aliases cs.in when
// inCopy is set, otherwise the engine's buffer, which must not be kept.
func (p *pool) keepLocked(cs *connState, buf []byte, off int, inCopy bool) {
	rest := buf[off:]
	switch {
	case len(rest) == 0:
		if cap(cs.in) > 4096 {
			cs.in = nil
		} else {
			cs.in = cs.in[:0]
		}
	case inCopy:
		cs.in = cs.in[:copy(cs.in, rest)]
	default:
		cs.in = append(cs.in[:0], rest...)
	}
}

// maskKey returns a masking key for a client frame. Any key is valid; it
// varies per connection so frames are not trivially predictable.
func (cs *connState) maskKey() [4]byte {
	v := uint32(cs.idx)*2654435761 + cs.gen
	return [4]byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)}
}

// handshakeDoneLocked records a completed upgrade. cs.mu held on entry.
func (p *pool) handshakeDoneLocked(cs *connState, now int64) {
	p.mu.Lock()
	p.phase.stats.Handshake.Record(now - cs.tDial)
	p.mu.Unlock()
	cs.state = stOpen
	if !p.cfg.Subscribe {
		p.upLocked(cs, now)
	}
}

// messageLocked handles one tether frame and returns 1 for a new unique
// delivery. cs.mu held on entry.
func (p *pool) messageLocked(cs *connState, sh *shard, msg []byte, now int64, later *deferred) int {
	fi, ok := parseFrame(msg)
	if !ok {
		p.malformedFrames.Add(1)
		return 0
	}
	switch fi.op {
	case opMessage:
		if fi.hasOffset {
			cs.pos.offset = fi.offset
		}
		n := p.deliverLocked(cs, sh, fi, now)
		if n > 0 && p.cfg.Soak {
			cs.pos.delivered(fi.s)
		}
		return n
	case opPing:
		p.pingsAnswered.Add(1)
		later.out = wsframe.AppendMaskedFrame(later.out, wsframe.OpText, true, []byte(`{"op":"pong"}`), cs.maskKey())
	case opWelcome:
		if cs.state == stOpen && p.cfg.Subscribe {
			ch := p.cfg.ChanPrefix + strconv.Itoa((p.cfg.First+int(cs.idx))%p.cfg.Channels)
			sub := `{"op":"subscribe","channel":"` + ch + `"}`
			if p.cfg.Soak {
				sub = cs.pos.subscribe(ch)
			}
			cs.state = stSubscribing
			cs.tSub = now
			later.out = wsframe.AppendMaskedFrame(later.out, wsframe.OpText, true, []byte(sub), cs.maskKey())
		}
	case opSubscribed:
		if cs.state == stSubscribing {
			p.mu.Lock()
			p.phase.stats.Subscribe.Record(now - cs.tSub)
			p.mu.Unlock()
			if p.cfg.Soak {
				p.subscribedLocked(cs, fi, now)
			}
			p.upLocked(cs, now)
		}
	case opResync:
		if p.cfg.Soak {
			p.resyncLocked(cs, fi, now)
		}
	case opError:
		p.errorFrames.Add(1)
		if cs.state == stSubscribing {
			later.reason = "subscribe_error"
		}
	case opReconnect:
		p.reconnectFrames.Add(1)
	}
	return 0
}

// deliverLocked accounts one delivery. cs.mu held on entry. It allocates
// nothing.
func (p *pool) deliverLocked(cs *connState, sh *shard, fi frameInfo, now int64) int {
	if !fi.hasT || !fi.hasS || fi.s < 0 || fi.s >= int64(p.cfg.Messages) {
		cs.unexpected++
		sh.unexpected.Add(1)
		return 0
	}
	w := &cs.seen[fi.s>>6]
	bit := uint64(1) << (fi.s & 63)
	if *w&bit != 0 {
		cs.dups++
		sh.dups.Add(1)
		return 0
	}
	*w |= bit
	sh.lat.Record(now - fi.t)
	return 1
}
