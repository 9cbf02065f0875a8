package bus

import (
	"context"
	"errors"
	"hash/maphash"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// rchan is the node's state of one channel it has interest in.
type rchan struct {
	name string // immutable
	base string // immutable: the pub/sub channel, prefix{name}

	// Guarded by redisBus.mu.
	refs     int       // local subscribers
	lingerAt time.Time // when refs is 0: when to unsubscribe in Redis
	link     *link     // nil while unrouted (cluster mode)
	sent     bool      // SUBSCRIBE written on link's current connection

	mu        sync.Mutex
	dead      bool          // removed from the bus: deliver nothing more
	active    bool          // the server confirmed the subscription on the current connection
	activeCh  chan struct{} // closed when active becomes true
	known     bool          // last and epoch hold the last delivered position
	last      uint64
	epoch     string
	repairing bool      // a gap is being repaired: live messages go to buf
	queued    bool      // in redisBus.repairQ
	buf       []Message // live messages received while repairing, in order
	overflow  bool      // buf was full and messages were dropped from it
}

var chanSeed = maphash.MakeSeed()

// subscribe implements backend.
func (b *redisBus) subscribe(channel string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.isClosed() {
		return
	}
	c := b.chans[channel]
	if c == nil {
		c = &rchan{name: channel, base: pubsubName(b.cfg.KeyPrefix, channel), activeCh: make(chan struct{}), refs: 1}
		b.chans[channel] = c
		b.interest++
		b.routeLocked(c)
		return
	}
	c.refs++
	if c.refs == 1 {
		b.interest++
		c.lingerAt = time.Time{}
		if c.link != nil {
			delete(c.link.lingering, c)
		}
	}
}

// unsubscribe implements backend.
func (b *redisBus) unsubscribe(channel string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.chans[channel]
	if c == nil || c.refs == 0 {
		return
	}
	c.refs--
	if c.refs > 0 {
		return
	}
	b.interest--
	c.lingerAt = time.Now().Add(max(b.cfg.Linger, 0))
	if c.link != nil {
		c.link.lingering[c] = struct{}{}
		if b.cfg.Linger <= 0 {
			wake(c.link.wake)
		}
	}
}

func (b *redisBus) isClosed() bool {
	select {
	case <-b.done:
		return true
	default:
		return false
	}
}

// routeLocked gives c to the link that serves it: by hash in standalone
// mode, or to the janitor, which asks the cluster for the slot's master.
// b.mu must be held.
func (b *redisBus) routeLocked(c *rchan) {
	c.link, c.sent = nil, false
	if b.cluster == nil {
		l := b.links[strconv.Itoa(int(maphash.String(chanSeed, c.name)%uint64(len(b.links))))]
		l.addLocked(c)
		return
	}
	if b.unrouted == nil {
		b.unrouted = make(map[*rchan]struct{})
	}
	b.unrouted[c] = struct{}{}
	wake(b.routeWake)
}

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
	chans     map[*rchan]struct{} // every channel routed here
	dirty     map[*rchan]struct{} // channels whose SUBSCRIBE is not yet sent
	lingering map[*rchan]struct{} // channels with refs 0
	unsubs    map[string]int      // UNSUBSCRIBEs sent and not yet confirmed

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
		chans:     make(map[*rchan]struct{}),
		dirty:     make(map[*rchan]struct{}),
		lingering: make(map[*rchan]struct{}),
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
func (l *link) addLocked(c *rchan) {
	c.link = l
	l.chans[c] = struct{}{}
	l.dirty[c] = struct{}{}
	if c.refs == 0 {
		l.lingering[c] = struct{}{}
	}
	wake(l.wake)
}

// removeLocked unroutes c from l. redisBus.mu must be held.
func (l *link) removeLocked(c *rchan) {
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
			l.reset(ps)
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
	var gone []*rchan
	b.mu.Lock()
	for c := range l.lingering {
		if c.refs > 0 {
			delete(l.lingering, c)
			continue
		}
		if !now.Before(c.lingerAt) {
			if c.sent {
				unsubs = append(unsubs, c.base)
				l.unsubs[c.base]++
			}
			l.removeLocked(c)
			delete(b.chans, c.name)
			gone = append(gone, c)
		}
	}
	for c := range l.dirty {
		subs = append(subs, c.base)
		c.sent = true
		delete(l.dirty, c)
	}
	b.mu.Unlock()
	for _, c := range gone {
		c.mu.Lock()
		c.dead = true
		c.buf = nil
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

// reset handles the loss of ps: every channel of the link must be
// subscribed again and, once it is, repaired from history. In cluster mode
// the channels are routed anew, since the slot may have moved.
func (l *link) reset(ps *redis.PubSub) {
	b := l.b
	_ = ps.Close()
	if l.alive.Load() {
		b.m.reconnects.Inc()
		b.log.Warn("redis bus pub/sub connection lost; resubscribing", "link", l.id)
	}
	b.mu.Lock()
	all := make([]*rchan, 0, len(l.chans))
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

// deactivate records that c's subscription is gone: History waits again,
// and a channel with a known position repairs its gap once resubscribed.
func (c *rchan) deactivate() {
	c.mu.Lock()
	if c.active {
		c.active = false
		c.activeCh = make(chan struct{})
	}
	if c.known {
		c.repairing = true
	}
	c.mu.Unlock()
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

// activate marks c's subscription active and schedules the read that sets
// its baseline position or repairs its gap.
func (c *rchan) activate(b *redisBus) {
	c.mu.Lock()
	if !c.active {
		c.active = true
		close(c.activeCh)
	}
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
func (b *redisBus) offerLocked(c *rchan, m Message) (gap bool) {
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
	return false
}

// bufferLocked keeps m for after the repair. c.mu must be held.
func (c *rchan) bufferLocked(m Message) {
	if len(c.buf) >= maxRepairBuffer {
		c.overflow = true
		return
	}
	c.buf = append(c.buf, m)
}

// queueRepair schedules a history read for c.
func (b *redisBus) queueRepair(c *rchan) {
	c.mu.Lock()
	if c.queued || c.dead {
		c.mu.Unlock()
		return
	}
	c.queued = true
	c.mu.Unlock()
	b.rmu.Lock()
	b.repairQ = append(b.repairQ, c)
	b.rmu.Unlock()
	wake(b.rwake)
}

// repairLoop reads history for the channels in repairQ, many per pipeline:
// a channel whose position is unknown learns it, a channel with a gap gets
// the missed messages (or OnGap when history no longer covers them).
func (b *redisBus) repairLoop() {
	backoff := time.Duration(0)
	for {
		select {
		case <-b.done:
			return
		case <-b.rwake:
		}
		if !b.sleep(backoff) {
			return
		}
		b.rmu.Lock()
		q := b.repairQ
		b.repairQ = nil
		b.rmu.Unlock()
		failed := false
		for len(q) > 0 {
			n := min(len(q), maxRepairBatch)
			if err := b.repair(q[:n]); err != nil {
				b.m.errRepair.Inc()
				b.log.Debug("redis bus repair failed", "err", err)
				// Try again later, with everything not yet done.
				for _, c := range q {
					c.mu.Lock()
					c.queued = false
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
func (b *redisBus) repair(chans []*rchan) error {
	ctx, cancel := context.WithTimeout(b.ctx, b.cfg.CommandTimeout)
	defer cancel()
	type read struct {
		c     *rchan
		since *Position
		cmd   *redis.Cmd
	}
	reads := make([]read, 0, len(chans))
	epoch := newEpochCandidate()
	pipe := b.client.Pipeline()
	for _, c := range chans {
		c.mu.Lock()
		c.queued = false
		var since *Position
		if c.known {
			since = &Position{Offset: c.last, Epoch: c.epoch}
		}
		dead := c.dead
		c.mu.Unlock()
		if dead {
			continue
		}
		reads = append(reads, read{c: c, since: since, cmd: b.historyCmd(ctx, pipe, c.base, since, epoch)})
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
		b.applyRepair(r.c, r.since, h)
	}
	return nil
}

// applyRepair delivers what a history read found, then the live messages
// buffered meanwhile.
func (b *redisBus) applyRepair(c *rchan, since *Position, h History) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead {
		return
	}
	switch {
	case !c.known:
		c.known = true
		c.last = h.Top.Offset
		c.epoch = h.Top.Epoch
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
		if f := b.handlers().OnGap; f != nil {
			f(c.name, h.Top)
		}
	}
	if !c.repairing {
		return
	}
	c.repairing = false
	buf, overflow := c.buf, c.overflow
	c.buf, c.overflow = nil, false
	for i, m := range buf {
		if b.offerLocked(c, m) {
			c.repairing = true
			c.buf = append(c.buf, buf[i:]...)
			break
		}
	}
	if overflow {
		c.repairing = true
	}
	if c.repairing {
		// Another round; queueRepair takes c.mu, so hand it to the loop.
		c.queued = true
		b.rmu.Lock()
		b.repairQ = append(b.repairQ, c)
		b.rmu.Unlock()
		wake(b.rwake)
	}
}

// historyCmd queues one history script call on pipe.
func (b *redisBus) historyCmd(ctx context.Context, pipe redis.Pipeliner, base string, since *Position, epoch string) *redis.Cmd {
	meta, hist := channelKeys(base)
	sinceOff, sinceEpoch := "", ""
	if since != nil {
		sinceOff, sinceEpoch = strconv.FormatUint(since.Offset, 10), since.Epoch
	}
	return pipe.EvalSha(ctx, b.histScript.Hash(), []string{meta, hist}, sinceOff, sinceEpoch, epoch, b.ttlMillis)
}

func isNoScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}

func (b *redisBus) loadHistoryScript(ctx context.Context) {
	_ = b.histScript.Load(ctx, b.client).Err()
}

// parseHistory reads the reply of the history script.
func parseHistory(channel string, cmd *redis.Cmd) (History, error) {
	v, err := cmd.Slice()
	if err != nil {
		return History{}, err
	}
	if len(v) < 3 {
		return History{}, errors.New("unexpected history reply")
	}
	top, ok1 := v[0].(int64)
	epoch, ok2 := v[1].(string)
	rec, ok3 := v[2].(int64)
	if !ok1 || !ok2 || !ok3 || top < 0 {
		return History{}, errors.New("unexpected history reply")
	}
	h := History{Top: Position{Offset: uint64(top), Epoch: epoch}, Recovered: rec == 1}
	if len(v) > 3 {
		list, ok := v[3].([]any)
		if !ok || len(list) > int(top) {
			return History{}, errors.New("unexpected history reply")
		}
		h.Messages = make([]Message, len(list))
		for i, e := range list {
			s, _ := e.(string)
			// Newest first: entry i has offset top-i.
			h.Messages[len(list)-1-i] = Message{Channel: channel, Offset: uint64(top) - uint64(i), Epoch: epoch, Data: stringBytes(s)}
		}
	}
	return h, nil
}

// history implements backend.
func (b *redisBus) history(ctx context.Context, channel string, since *Position) (History, error) {
	if b.isClosed() {
		return History{}, ErrClosed
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, b.cfg.CommandTimeout)
	defer cancel()
	b.mu.Lock()
	c := b.chans[channel]
	b.mu.Unlock()
	if c != nil {
		// Messages after the read must arrive on pub/sub: wait until the
		// subscription is active.
		c.mu.Lock()
		active, ch := c.active, c.activeCh
		c.mu.Unlock()
		if !active {
			select {
			case <-ch:
			case <-ctx.Done():
				b.m.errHistory.Inc()
				if err := ctx.Err(); errors.Is(err, context.Canceled) && b.isClosed() {
					return History{}, ErrClosed
				}
				return History{}, unavailable("read history of "+strconv.Quote(channel), errors.New("subscription not active"))
			}
		}
	}
	h, err := b.readHistory(ctx, pubsubName(b.cfg.KeyPrefix, channel), channel, since)
	if err != nil {
		b.m.errHistory.Inc()
		if parent.Err() == nil && isNetErr(err) {
			// Redis failed, not the caller's context.
			b.commandFailed(err)
		}
		return History{}, unavailable("read history of "+strconv.Quote(channel), err)
	}
	if c != nil {
		c.mu.Lock()
		if !c.known && !c.dead {
			c.known = true
			c.last = h.Top.Offset
			c.epoch = h.Top.Epoch
		}
		c.mu.Unlock()
	}
	return h, nil
}

// readHistory runs the history script once, loading it when Redis lost it.
func (b *redisBus) readHistory(ctx context.Context, base, channel string, since *Position) (History, error) {
	epoch := newEpochCandidate()
	for range 2 {
		pipe := b.client.Pipeline()
		cmd := b.historyCmd(ctx, pipe, base, since, epoch)
		_, err := pipe.Exec(ctx)
		if isNoScript(err) {
			b.loadHistoryScript(ctx)
			continue
		}
		if err != nil {
			return History{}, err
		}
		return parseHistory(channel, cmd)
	}
	return History{}, errors.New("history script not loaded")
}

// janitorLoop routes new channels to cluster nodes, and keeps the meta key
// of every channel the node serves alive, so that a channel quiet for
// longer than HistoryTTL keeps its epoch while anyone listens.
func (b *redisBus) janitorLoop() {
	keepalive := time.NewTicker(max(b.cfg.HistoryTTL/3, 10*time.Millisecond))
	defer keepalive.Stop()
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	for {
		select {
		case <-b.done:
			return
		case <-b.routeWake:
			if !b.route() {
				retry.Reset(100 * time.Millisecond)
			}
		case <-retry.C:
			wake(b.routeWake)
		case <-keepalive.C:
			b.keepalive()
		}
	}
}

// route assigns every unrouted channel to its slot master's link, and
// reports whether all could be.
func (b *redisBus) route() bool {
	if b.cluster == nil {
		return true
	}
	b.mu.Lock()
	todo := make([]*rchan, 0, len(b.unrouted))
	for c := range b.unrouted {
		todo = append(todo, c)
	}
	b.mu.Unlock()
	ok := true
	for _, c := range todo {
		ctx, cancel := context.WithTimeout(b.ctx, b.cfg.CommandTimeout)
		node, err := b.cluster.MasterForKey(ctx, c.base)
		cancel()
		if err != nil {
			ok = false
			break
		}
		addr := node.Options().Addr
		b.mu.Lock()
		if _, still := b.unrouted[c]; still && b.chans[c.name] == c {
			delete(b.unrouted, c)
			l := b.links[addr]
			if l == nil {
				l = b.newLink(addr, node, true)
				b.links[addr] = l
				l.start()
			}
			l.addLocked(c)
		} else {
			delete(b.unrouted, c)
		}
		b.mu.Unlock()
	}
	return ok
}

// keepalive refreshes the TTL of the meta keys of the channels served.
func (b *redisBus) keepalive() {
	b.mu.Lock()
	keys := make([]string, 0, len(b.chans))
	for _, c := range b.chans {
		meta, _ := channelKeys(c.base)
		keys = append(keys, meta)
	}
	b.mu.Unlock()
	ttl := b.cfg.HistoryTTL
	for len(keys) > 0 && b.healthy.Load() {
		n := min(len(keys), 1000)
		ctx, cancel := context.WithTimeout(b.ctx, b.cfg.CommandTimeout)
		pipe := b.client.Pipeline()
		for _, k := range keys[:n] {
			pipe.PExpire(ctx, k, ttl)
		}
		_, err := pipe.Exec(ctx)
		cancel()
		if err != nil {
			b.m.errKeepalive.Inc()
			return
		}
		keys = keys[n:]
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
