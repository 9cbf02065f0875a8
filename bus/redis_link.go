package bus

import (
	"context"
	"errors"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// link is one pub/sub connection: a writer goroutine sends batched
// (un)subscribe commands and reconnects, a reader goroutine receives.
type link struct {
	b       *redisBus
	id      string        // immutable: shard number or node address
	node    *redis.Client // immutable: the server it connects to
	sharded bool          // immutable: SSUBSCRIBE (cluster) or SUBSCRIBE
	wake    chan struct{} // wakes the writer
	down    atomic.Bool   // the connection is broken and not yet back
	alive   atomic.Bool   // the current connection received something

	// Guarded by redisBus.mu.
	chans     map[*redisChannel]struct{} // every channel routed here
	dirty     map[*redisChannel]struct{} // channels whose SUBSCRIBE is not yet sent
	lingering map[*redisChannel]struct{} // channels with refs 0
	unsubs    map[string]int             // UNSUBSCRIBEs sent and not yet confirmed

	mu       sync.Mutex // guards ps, psBroken, psReady, closed
	ps       *redis.PubSub
	psBroken bool          // the reader or writer saw ps fail
	closed   bool          // the bus is closing: make no new connection
	psReady  chan struct{} // closed when ps is replaced; the reader waits on it

	backoff time.Duration // owned by the writer: delay before the next reconnect
}

func (b *redisBus) newLink(id string, node *redis.Client, sharded bool) *link {
	return &link{
		b: b, id: id, node: node, sharded: sharded,
		wake:      make(chan struct{}, 1),
		chans:     make(map[*redisChannel]struct{}),
		dirty:     make(map[*redisChannel]struct{}),
		lingering: make(map[*redisChannel]struct{}),
		unsubs:    make(map[string]int),
		psReady:   make(chan struct{}),
		psBroken:  true, // the writer makes the first connection
	}
}

func (l *link) start() {
	l.b.start(l.writeLoop)
	l.b.start(l.readLoop)
	wake(l.wake)
}

// addLocked routes c to l. redisBus.mu must be held.
func (l *link) addLocked(c *redisChannel) {
	c.link = l
	l.chans[c] = struct{}{}
	l.dirty[c] = struct{}{}
	if c.refs == 0 {
		l.lingering[c] = struct{}{}
	}
	wake(l.wake)
}

// removeLocked unroutes c from l. redisBus.mu must be held.
func (l *link) removeLocked(c *redisChannel) {
	delete(l.chans, c)
	delete(l.dirty, c)
	delete(l.lingering, c)
	c.link, c.sent = nil, false
}

// broken records that ps failed, once per connection.
func (l *link) broken(ps *redis.PubSub) {
	l.mu.Lock()
	if l.ps == ps && !l.psBroken {
		l.psBroken = true
		l.down.Store(true)
		wake(l.wake)
	}
	l.mu.Unlock()
}

// current returns the link's pub/sub connection and a channel closed when
// it is replaced.
func (l *link) current() (*redis.PubSub, bool, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ps, l.psBroken, l.psReady
}

func (l *link) closePubSub() {
	l.mu.Lock()
	if l.ps != nil {
		_ = l.ps.Close()
	}
	l.psBroken = true
	l.closed = true
	l.mu.Unlock()
}

// writeLoop owns the link's connection: it reconnects it, and sends the
// pending subscribe and unsubscribe changes in batches.
func (l *link) writeLoop() {
	b := l.b
	tick := min(max(b.cfg.Linger/4, 10*time.Millisecond), time.Second)
	t := time.NewTicker(tick)
	defer t.Stop()
	backoff := time.Duration(0)
	for {
		select {
		case <-b.done:
			return
		case <-l.wake:
		case <-t.C:
		}
		if !b.sleep(backoff) {
			return
		}
		if err := l.sync(); err != nil {
			if !b.isClosed() {
				b.m.errSubscribe.Inc()
				b.log.Debug("redis bus pub/sub link failed", "link", l.id, "err", err)
			}
			backoff = nextBackoff(backoff)
			wake(l.wake)
			continue
		}
		backoff = 0
	}
}

// sync reconnects the link when its connection broke, then sends pending
// changes.
func (l *link) sync() error {
	b := l.b
	ps, isBroken, _ := l.current()
	if isBroken {
		if ps != nil {
			l.afterLoss(ps)
			l.mu.Lock()
			l.ps = nil
			l.mu.Unlock()
			// Reconnect at once after a connection that worked, with a
			// growing delay after one that never did.
			if l.alive.Swap(false) {
				l.backoff = 0
			} else {
				l.backoff = nextBackoff(l.backoff)
			}
			if !b.sleep(l.backoff) {
				return nil
			}
		}
		b.mu.Lock()
		idle := l.sharded && len(l.chans) == 0
		b.mu.Unlock()
		if idle {
			// A cluster node's link connects only while it serves channels.
			l.down.Store(false)
			return nil
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return nil
		}
		if l.ps != nil {
			_ = l.ps.Close()
		}
		if l.sharded {
			l.ps = l.node.SSubscribe(b.ctx)
		} else {
			l.ps = l.node.Subscribe(b.ctx)
		}
		ps = l.ps
		l.psBroken = false
		close(l.psReady)
		l.psReady = make(chan struct{})
		l.mu.Unlock()
	}
	// Collect the changes.
	now := time.Now()
	var subs, unsubs []string
	var gone []*redisChannel
	b.mu.Lock()
	for c := range l.lingering {
		if c.refs > 0 {
			delete(l.lingering, c)
			continue
		}
		if !now.Before(c.lingerAt) {
			if c.sent {
				unsubs = append(unsubs, c.pubsubChannel)
				l.unsubs[c.pubsubChannel]++
			}
			l.removeLocked(c)
			delete(b.chans, c.name)
			gone = append(gone, c)
		}
	}
	for c := range l.dirty {
		subs = append(subs, c.pubsubChannel)
		c.sent = true
		delete(l.dirty, c)
	}
	b.mu.Unlock()
	for _, c := range gone {
		c.mu.Lock()
		c.dead = true
		c.held = nil
		c.win.drop()
		c.notifyLocked()
		c.mu.Unlock()
	}
	ctx, cancel := context.WithTimeout(b.ctx, b.cfg.CommandTimeout)
	defer cancel()
	if err := l.send(ctx, ps, true, unsubs); err != nil {
		l.broken(ps)
		return err
	}
	if err := l.send(ctx, ps, false, subs); err != nil {
		l.broken(ps)
		return err
	}
	return nil
}

// send writes (un)subscribe commands for names in batches: many channels
// per command, and in cluster mode one command per slot, since a sharded
// subscribe may not cross slots.
func (l *link) send(ctx context.Context, ps *redis.PubSub, unsub bool, names []string) error {
	if len(names) == 0 {
		return nil
	}
	do := func(batch []string) error {
		l.b.m.batchSubscribe.Update(float64(len(batch)))
		switch {
		case l.sharded && unsub:
			return ps.SUnsubscribe(ctx, batch...)
		case l.sharded:
			return ps.SSubscribe(ctx, batch...)
		case unsub:
			return ps.Unsubscribe(ctx, batch...)
		default:
			return ps.Subscribe(ctx, batch...)
		}
	}
	if l.sharded {
		slices.SortFunc(names, func(a, b string) int { return hashSlot(a) - hashSlot(b) })
		for len(names) > 0 {
			s, n := hashSlot(names[0]), 1
			for n < len(names) && n < maxSubscribeBatch && hashSlot(names[n]) == s {
				n++
			}
			if err := do(names[:n]); err != nil {
				return err
			}
			names = names[n:]
		}
		return nil
	}
	for len(names) > 0 {
		n := min(len(names), maxSubscribeBatch)
		if err := do(names[:n]); err != nil {
			return err
		}
		names = names[n:]
	}
	return nil
}

// afterLoss handles the loss of ps: every channel of the link must be
// subscribed again and, once it is, repaired from history. In cluster mode
// the channels are routed anew, since the slot may have moved.
func (l *link) afterLoss(ps *redis.PubSub) {
	b := l.b
	_ = ps.Close()
	if l.alive.Load() {
		b.m.reconnects.Inc()
		b.log.Warn("redis bus pub/sub connection lost; resubscribing", "link", l.id)
	}
	b.mu.Lock()
	all := make([]*redisChannel, 0, len(l.chans))
	for c := range l.chans {
		all = append(all, c)
	}
	clear(l.unsubs)
	b.mu.Unlock()
	// Deactivate before resubscribing, so that no confirmation can come
	// first.
	for _, c := range all {
		c.deactivate()
	}
	if l.sharded {
		b.cluster.ReloadState(b.ctx)
	}
	b.mu.Lock()
	for _, c := range all {
		if c.link != l {
			continue
		}
		if l.sharded {
			l.removeLocked(c)
			b.routeLocked(c)
		} else {
			c.sent = false
			l.dirty[c] = struct{}{}
		}
	}
	b.mu.Unlock()
}

// readLoop receives from the link's connection and delivers messages. It
// pings when the connection is silent and declares it broken when a ping
// goes unanswered for CommandTimeout.
func (l *link) readLoop() {
	b := l.b
	for {
		ps, isBroken, ready := l.current()
		if ps == nil || isBroken {
			select {
			case <-b.done:
				return
			case <-ready:
			}
			continue
		}
		pinged := false
		for {
			msg, err := ps.ReceiveTimeout(b.ctx, b.cfg.CommandTimeout)
			if b.isClosed() {
				return
			}
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() && !pinged {
					pinged = true
					ctx, cancel := context.WithTimeout(b.ctx, b.cfg.CommandTimeout)
					err = ps.Ping(ctx)
					cancel()
					if err == nil {
						continue
					}
				}
				var rerr redis.Error
				if errors.As(err, &rerr) && !isNetErr(err) {
					// An error reply (for example MOVED after resharding):
					// the subscriptions on this connection are suspect.
					b.m.errSubscribe.Inc()
					b.log.Warn("redis bus pub/sub error reply", "link", l.id, "err", err)
				}
				l.broken(ps)
				break
			}
			pinged = false
			l.down.Store(false)
			l.alive.Store(true)
			switch m := msg.(type) {
			case *redis.Message:
				b.receive(m.Channel, m.Payload)
			case *redis.Subscription:
				l.confirmed(m)
			}
		}
	}
}

// confirmed handles a (un)subscribe confirmation from the server.
func (l *link) confirmed(s *redis.Subscription) {
	b := l.b
	name, ok := channelOf(b.cfg.KeyPrefix, s.Channel)
	if !ok {
		return
	}
	b.mu.Lock()
	c := b.chans[name]
	if c != nil && c.link != l {
		c = nil
	}
	switch s.Kind {
	case "subscribe", "ssubscribe":
		b.mu.Unlock()
		if c != nil {
			c.activate(b)
		}
		return
	case "unsubscribe", "sunsubscribe":
		if l.unsubs[s.Channel] > 0 {
			if l.unsubs[s.Channel]--; l.unsubs[s.Channel] == 0 {
				delete(l.unsubs, s.Channel)
			}
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		if c == nil {
			return
		}
		// The server dropped a subscription we still want (a cluster slot
		// moved): subscribe again where the slot now lives. Deactivate
		// first, so that no confirmation can come before.
		c.deactivate()
		if l.sharded {
			b.cluster.ReloadState(b.ctx)
		}
		b.mu.Lock()
		if c.link == l {
			if l.sharded {
				l.removeLocked(c)
				b.routeLocked(c)
			} else {
				c.sent = false
				l.dirty[c] = struct{}{}
				wake(l.wake)
			}
		}
		b.mu.Unlock()
	default:
		b.mu.Unlock()
	}
}

// nextBackoff doubles a reconnection delay, from 50 ms up to maxBackoff.
func nextBackoff(d time.Duration) time.Duration {
	return min(max(2*d, 50*time.Millisecond), maxBackoff)
}

// sleep waits d (not at all when d ≤ 0); it reports false when the bus
// closed meanwhile.
func (b *redisBus) sleep(d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-b.done:
		return false
	case <-t.C:
		return true
	}
}
