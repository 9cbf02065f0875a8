package bus

import (
	"context"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// deactivate records that c's subscription is gone: History waits again,
// and a channel with a known position repairs its gap once resubscribed.
func (c *redisChannel) deactivate() {
	c.mu.Lock()
	c.active = false
	if c.known {
		c.repairing = true
	}
	c.mu.Unlock()
}

// activate marks c's subscription active and schedules the read that sets
// its baseline position or repairs its gap.
func (c *redisChannel) activate(b *redisBus) {
	c.mu.Lock()
	c.active = true
	c.notifyLocked()
	dead := c.dead
	c.mu.Unlock()
	if !dead {
		b.queueRepair(c)
	}
}

// receive handles one pub/sub message.
func (b *redisBus) receive(name, payload string) {
	chName, ok := channelOf(b.cfg.KeyPrefix, name)
	if !ok {
		return
	}
	b.mu.Lock()
	c := b.chans[chName]
	b.mu.Unlock()
	if c == nil {
		return
	}
	if strings.HasPrefix(payload, presencePayloadPrefix) {
		b.pres.receive(c.name, payload)
		return
	}
	epoch, off, data, ok := decodePayload(payload)
	if !ok {
		b.m.errDecode.Inc()
		return
	}
	m := Message{Channel: c.name, Offset: off, Epoch: epoch, Data: stringBytes(data)}
	c.mu.Lock()
	if c.dead {
		c.mu.Unlock()
		return
	}
	if c.repairing {
		c.bufferLocked(m)
		c.mu.Unlock()
		return
	}
	if b.offerLocked(c, m) {
		c.repairing = true
		c.bufferLocked(m)
		c.mu.Unlock()
		b.queueRepair(c)
		return
	}
	c.mu.Unlock()
}

// offerLocked delivers m unless it is a duplicate, and reports whether m
// shows a gap before it (then m is not delivered). c.mu must be held.
func (b *redisBus) offerLocked(c *redisChannel, m Message) (gap bool) {
	switch {
	case !c.known:
		c.known = true
		c.epoch = strings.Clone(m.Epoch)
	case m.Epoch != c.epoch:
		return true
	case m.Offset <= c.last:
		return false
	case m.Offset != c.last+1:
		return true
	}
	c.last = m.Offset
	m.Epoch = c.epoch
	if h := b.handlers().OnMessage; h != nil {
		h(m)
	}
	c.win.record(m, b.cfg.retention())
	return false
}

// notifyLocked wakes the History calls waiting for c's state to change.
// c.mu must be held.
func (c *redisChannel) notifyLocked() {
	if c.changed != nil {
		close(c.changed)
		c.changed = nil
	}
}

// bufferLocked keeps m for after the repair. c.mu must be held.
func (c *redisChannel) bufferLocked(m Message) {
	if len(c.held) >= maxRepairBuffer {
		c.heldOverflow = true
		return
	}
	c.held = append(c.held, m)
}

// queueRepair schedules a history read for c.
func (b *redisBus) queueRepair(c *redisChannel) {
	c.mu.Lock()
	if c.repairQueued || c.dead {
		c.mu.Unlock()
		return
	}
	c.repairQueued = true
	c.mu.Unlock()
	b.repairMu.Lock()
	b.repairQueue = append(b.repairQueue, c)
	b.repairMu.Unlock()
	wake(b.repairWake)
}

// repairLoop reads history for the channels in repairQueue, many per pipeline:
// a channel whose position is unknown learns it, a channel with a gap gets
// the missed messages (or OnGap when history no longer covers them).
func (b *redisBus) repairLoop() {
	backoff := time.Duration(0)
	for {
		select {
		case <-b.done:
			return
		case <-b.repairWake:
		}
		if !b.sleep(backoff) {
			return
		}
		b.repairMu.Lock()
		q := b.repairQueue
		b.repairQueue = nil
		b.repairMu.Unlock()
		failed := false
		for len(q) > 0 {
			n := min(len(q), maxRepairBatch)
			if err := b.repair(q[:n]); err != nil {
				b.m.errRepair.Inc()
				b.log.Debug("redis bus repair failed", "err", err)
				// Try again later, with everything not yet done.
				for _, c := range q {
					c.mu.Lock()
					c.repairQueued = false
					c.reading, c.win.filling = false, false
					c.mu.Unlock()
					b.queueRepair(c)
				}
				failed = true
				break
			}
			q = q[n:]
		}
		if failed {
			backoff = nextBackoff(backoff)
		} else {
			backoff = 0
		}
	}
}

// repair reads the history of chans in one pipeline and applies it.
func (b *redisBus) repair(chans []*redisChannel) error {
	ctx, cancel := context.WithTimeout(b.ctx, b.cfg.CommandTimeout)
	defer cancel()
	type read struct {
		c     *redisChannel
		since *Position
		full  bool // the whole history, for c's window
		cmd   *redis.Cmd
	}
	reads := make([]read, 0, len(chans))
	epoch := newEpochCandidate()
	pipe := b.client.Pipeline()
	for _, c := range chans {
		c.mu.Lock()
		c.repairQueued = false
		var since *Position
		if c.known {
			since = &Position{Offset: c.last, Epoch: c.epoch}
		}
		full := c.win.want
		if full {
			// Record from now on what the read may miss.
			c.win.want, c.win.filling, c.win.recording = false, true, true
		}
		dead := c.dead
		c.reading = !dead
		c.mu.Unlock()
		if dead {
			continue
		}
		reads = append(reads, read{c: c, since: since, full: full, cmd: b.historyCmd(ctx, pipe, c.pubsubChannel, since, full, epoch)})
	}
	if len(reads) == 0 {
		return nil
	}
	b.m.batchRepair.Update(float64(len(reads)))
	if _, err := pipe.Exec(ctx); err != nil {
		if isNoScript(err) {
			b.loadHistoryScript(ctx)
		}
		return err
	}
	for _, r := range reads {
		h, err := parseHistory(r.c.name, r.cmd)
		if err != nil {
			return err
		}
		if r.full {
			b.applyRepair(r.c, r.since, historyAfter(h.Messages, h.Top, r.since), &h)
		} else {
			b.applyRepair(r.c, r.since, h, nil)
		}
	}
	return nil
}

// applyRepair delivers what a history read found, then the live messages
// buffered meanwhile, and wakes the History calls waiting for c. full, when
// not nil, is the whole history the read found, for c's window.
func (b *redisBus) applyRepair(c *redisChannel, since *Position, h History, full *History) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reading = false
	defer c.notifyLocked()
	if c.dead {
		return
	}
	if full != nil {
		c.win.filling = false
		// After the repair below, so that the messages it delivers are
		// recorded first.
		defer func() { c.win.fill(*full, Position{Offset: c.last, Epoch: c.epoch}, b.cfg.retention()) }()
	}
	switch {
	case !c.known:
		c.known = true
		c.last = h.Top.Offset
		c.epoch = h.Top.Epoch
		c.win.reset()
	case since == nil || since.Offset != c.last || since.Epoch != c.epoch:
		// A baseline read overtaken by live messages, or a stale read.
	case h.Recovered:
		for _, m := range h.Messages {
			b.offerLocked(c, m)
		}
		if len(h.Messages) > 0 {
			b.m.gapRepaired.Inc()
		}
	default:
		b.m.gapLost.Inc()
		c.last = h.Top.Offset
		c.epoch = h.Top.Epoch
		c.win.reset()
		if f := b.handlers().OnGap; f != nil {
			f(c.name, h.Top)
		}
	}
	if !c.repairing {
		return
	}
	c.repairing = false
	buf, overflow := c.held, c.heldOverflow
	c.held, c.heldOverflow = nil, false
	for i, m := range buf {
		if b.offerLocked(c, m) {
			c.repairing = true
			c.held = append(c.held, buf[i:]...)
			break
		}
	}
	if overflow {
		c.repairing = true
	}
	if c.repairing {
		// Another round; queueRepair takes c.mu, so hand it to the loop.
		c.repairQueued = true
		b.repairMu.Lock()
		b.repairQueue = append(b.repairQueue, c)
		b.repairMu.Unlock()
		wake(b.repairWake)
	}
}
