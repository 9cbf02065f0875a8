package bus

import (
	"maps"
	"slices"
	"time"
)

// windowIdle is how long a channel's window is kept after the last History
// that needed it; a reconnect storm is over well within it.
const windowIdle = time.Minute

// window is the node's copy of a channel's recent history, so that a
// reconnect storm onto one channel costs Redis one read per node instead of
// one per subscriber (docs/cluster.md, "Reconnect storms").
//
// A window starts recording when a History needs messages the node does not
// hold: from then on every message the node delivers is appended, and one
// full history read (LRANGE of the whole list, in the repair loop) supplies
// what came before. It is dropped once no History used it for windowIdle.
//
// Invariant (redisChannel.mu held): q holds consecutive offsets in
// redisChannel.epoch and, when not empty, the last one is redisChannel.last.
// Whatever moves last or epoch without delivering a message calls reset.
// It keeps the messages younger than Config.HistoryWindow (by the time the
// node received each one), not HistorySize more: a storm recovers from the
// last moments, and a since older than the window is answered from Redis,
// which keeps both. So a node's windows hold about (message rate ×
// HistoryWindow) per recovering channel, not HistorySize: at 1,000 quiet
// channels that is a few messages each, not 100. With the history by count
// only (HistoryWindow < 0) a window is trimmed by count like it.
type window struct {
	recording bool      // delivered messages are appended to q
	q         msgQueue  // see the invariant
	floor     uint64    // when > 0: a full read found no message below this offset in epoch
	want      bool      // a waiting History needs a full read
	filling   bool      // a full read is in flight
	used      time.Time // when a History last needed the window
}

// reset forgets the messages held, because the channel's position moved
// without a delivery (new epoch, unrecoverable gap, baseline read).
func (w *window) reset() {
	w.q, w.floor = msgQueue{}, 0
}

// drop stops recording and frees the messages.
func (w *window) drop() {
	*w = window{}
}

// record appends the message the channel just delivered.
func (w *window) record(m Message, r retention) {
	if w.recording {
		w.q.push(m, time.Now().UnixNano(), r.recent())
	}
}

// recent is the retention of a window: the time part of r when r has one.
func (r retention) recent() retention {
	if r.window > 0 {
		r.size = 0
	}
	return r
}

// fill joins what a full read found (full: every message Redis held, ending
// at full.Top) to the messages recorded since the read was issued, for a
// channel whose last delivered position is last.
func (w *window) fill(full History, last Position, r retention) {
	if full.Top.Epoch != last.Epoch {
		return
	}
	w.floor = full.Top.Offset - uint64(len(full.Messages)) + 1
	start := last.Offset + 1 - uint64(len(w.q.msgs)) // first recorded offset
	if start > full.Top.Offset+1 {
		return // not contiguous: keep what was recorded
	}
	// The read's messages before the recorded ones, up to last.
	keep := full.Messages
	if n := uint64(len(keep)); n > 0 && keep[n-1].Offset >= start {
		cut := keep[n-1].Offset - start + 1
		keep = keep[:n-min(n, cut)]
	}
	msgs := make([]Message, 0, len(keep)+len(w.q.msgs))
	msgs = append(append(msgs, keep...), w.q.msgs...)
	w.q.replace(msgs, time.Now().UnixNano(), r.recent())
}

// serveLocked answers History for since from the node's own state, and
// reports false when it cannot: the window does not reach back to since and
// no full read showed that Redis held nothing older either. c must be live
// (active, known, not repairing), and since not ahead of c.last.
// c.mu must be held.
func (c *redisChannel) serveLocked(since *Position) (History, bool) {
	top := Position{Offset: c.last, Epoch: c.epoch}
	if since == nil || since.Epoch != c.epoch {
		// Another epoch cannot be recovered: Redis holds c.epoch, or a newer
		// one this node will learn of as a gap and report with OnGap.
		return History{Top: top}, true
	}
	if since.Offset == c.last {
		return History{Top: top, Recovered: true}, true
	}
	c.win.used = time.Now()
	if h := historyAfter(c.win.q.msgs, top, since); h.Recovered {
		return h, true
	}
	if c.win.floor > 0 && since.Offset+1 < c.win.floor {
		return History{Top: top}, true
	}
	return History{}, false
}

// dropIdleWindows frees the windows no History needed for windowIdle.
func (b *redisBus) dropIdleWindows(now time.Time) {
	b.mu.Lock()
	chans := slices.Collect(maps.Values(b.chans))
	b.mu.Unlock()
	for _, c := range chans {
		c.mu.Lock()
		if c.win.recording && !c.win.filling && now.Sub(c.win.used) > windowIdle {
			c.win.drop()
		}
		c.mu.Unlock()
	}
}
