package server

import (
	"hash/maphash"
	"sync"
	"time"

	"tether/bus"
	"tether/internal/proto"
)

const indexShards = 64

// index maps channel names to the channels this node has subscribers of.
type index struct {
	seed   maphash.Seed
	shards [indexShards]indexShard
}

type indexShard struct {
	mu       sync.RWMutex
	channels map[string]*channel
}

func newIndex() *index {
	x := &index{seed: maphash.MakeSeed()}
	for i := range x.shards {
		x.shards[i].channels = make(map[string]*channel)
	}
	return x
}

func (x *index) shard(name string) *indexShard {
	return &x.shards[maphash.String(x.seed, name)%indexShards]
}

func (x *index) lookup(name string) *channel {
	s := x.shard(name)
	s.mu.RLock()
	ch := s.channels[name]
	s.mu.RUnlock()
	return ch
}

// count returns the number of channels with local subscribers.
func (x *index) count() int {
	n := 0
	for i := range x.shards {
		s := &x.shards[i]
		s.mu.RLock()
		n += len(s.channels)
		s.mu.RUnlock()
	}
	return n
}

// channel is a channel with at least one local subscriber. It is removed
// from the index, and marked dead, when its last subscriber leaves.
type channel struct {
	name string // immutable
	pres uint8  // immutable: presence mode (presence.go)

	mu     sync.Mutex
	subs   []*subscription
	dead   bool
	epoch  string // position of the last message delivered live ("" = none yet)
	offset uint64
}

// subscription is one connection's interest in one channel.
type subscription struct {
	c  *conn    // immutable
	ch *channel // immutable

	// guarded by c.mu
	nextOfConn *subscription // the next of c's subscriptions (conn.subs)

	// guarded by ch.mu
	idx int32    // position in ch.subs; -1 once removed
	rec recovery // the switch from history to live delivery (recovery.go)
}

func (s *Server) subscribe(c *conn, f clientFrame) {
	if !c.mayRead(f.Channel) {
		c.replyError(f.ID, errf(proto.CodeForbidden, "not allowed to subscribe to this channel"))
		return
	}
	if e := s.join(c, f, false); e != nil {
		c.replyError(f.ID, e)
	}
}

// Refusals of join.
var (
	errAlreadySubscribed = errf(proto.CodeLimit, "already subscribed")
	errTooManySubs       = errf(proto.CodeLimit, "too many subscriptions on this connection")
)

// join subscribes c to f.Channel and answers with a subscribed frame (now
// or after recovery). With checkRead it checks c's right to read the
// channel itself, under c.mu: a caller on another goroutine than c's read
// path could not, since a refresh there replaces the claims. It returns
// errAlreadySubscribed, errTooManySubs or errJoinForbidden without sending
// anything; it does nothing when c is closing. The client's subscribe and the HTTP API's (api_cluster.go) call
// it, so two joins of one connection may run at once: the checks and the
// links into c.subs and ch.subs happen in one critical section (shard,
// channel, then connection lock), so that they cannot both pass.
func (s *Server) join(c *conn, f clientFrame, checkRead bool) *protoError {
	// A first look without the index locks turns the common refusals away
	// cheaply; the look under them below decides.
	c.mu.Lock()
	perr := s.checkJoinLocked(c, f.Channel, checkRead)
	c.mu.Unlock()
	if perr != nil {
		return perr.orNil()
	}

	sh := s.index.shard(f.Channel)
	sh.mu.Lock()
	ch := sh.channels[f.Channel]
	created := ch == nil
	if created {
		ch = &channel{name: f.Channel, pres: s.presenceMode(f.Channel)}
		sh.channels[f.Channel] = ch
		s.m.channels.Add(1)
	}
	sub := &subscription{c: c, ch: ch}
	ch.mu.Lock()
	c.mu.Lock()
	first := c.subs == nil
	if perr := s.checkJoinLocked(c, f.Channel, checkRead); perr != nil {
		c.mu.Unlock()
		if created && len(ch.subs) == 0 {
			ch.dead = true
			delete(sh.channels, ch.name)
			s.m.channels.Add(-1)
			created = false
		}
		ch.mu.Unlock()
		sh.mu.Unlock()
		return perr.orNil()
	}
	// Linked to c and to ch under both locks: a close (onClose takes c.subs
	// under c.mu) or an unsubscribe (takeSub, then removeSub under ch.mu)
	// finds it in both.
	sub.nextOfConn = c.subs
	c.subs = sub
	c.mu.Unlock()
	sub.idx = int32(len(ch.subs))
	ch.subs = append(ch.subs, sub)
	// Counted as it joins the channel, as removeSub uncounts it as it
	// leaves.
	s.m.subscriptions.Add(1)
	if ch.pres != 0 {
		s.presenceChangeLocked(c, ch, false)
	}
	// Fast path: the node already delivers this channel live, so the last
	// message it delivered is the channel's position as far as this
	// subscriber can tell, and the client needs nothing from history.
	// Answering here, under ch.mu, orders the reply before every later live
	// message, and a reconnect storm onto a busy channel costs the bus
	// nothing. (A position read from history would not do: messages at or
	// below it may still be on their way to the node.)
	fast := ch.epoch != "" && (f.Since == nil || (f.Since.Epoch == ch.epoch && f.Since.Offset == ch.offset))
	if fast {
		sub.rec.joinLive()
		c.send(textFrame(func(b []byte) []byte {
			return appendSubscribed(b, ch.name, ch.offset, ch.epoch, f.Since != nil, f.ID)
		}))
	}
	ch.mu.Unlock()
	sh.mu.Unlock()
	if created {
		s.bus.Subscribe(f.Channel)
	}

	if first && f.Since != nil {
		s.lifetimes.resumed(time.Now().UnixNano(), c.opened)
	}
	if fast {
		if f.Since != nil {
			s.m.recovered.Inc()
		}
		return nil
	}

	var since *bus.Position
	if f.Since != nil {
		since = &bus.Position{Offset: f.Since.Offset, Epoch: f.Since.Epoch}
	}
	s.recoveries.push(recoveryJob{sub: sub, since: since, id: f.ID})
	return nil
}

// errJoinClosing is checkJoinLocked's answer for a connection that is
// closing: join then does nothing and reports no error.
var errJoinClosing = errf(proto.CodeUnavailable, "closing")

// orNil returns e, or nil for errJoinClosing.
func (e *protoError) orNil() *protoError {
	if e == errJoinClosing {
		return nil
	}
	return e
}

// errJoinForbidden is join's refusal of a channel c's claims do not allow.
var errJoinForbidden = errf(proto.CodeForbidden, "not allowed to subscribe to this channel")

// checkJoinLocked returns why c may not join channel now, or nil. c.mu is
// held.
func (s *Server) checkJoinLocked(c *conn, channel string, checkRead bool) *protoError {
	if c.closing || c.closed {
		return errJoinClosing
	}
	if checkRead && !c.mayRead(channel) {
		return errJoinForbidden
	}
	n := 0
	for sub := c.subs; sub != nil; sub = sub.nextOfConn {
		if sub.ch.name == channel {
			return errAlreadySubscribed
		}
		n++
	}
	if max := s.cfg.MaxSubsPerConn; max > 0 && n >= max {
		return errTooManySubs
	}
	return nil
}

func (s *Server) unsubscribe(c *conn, f clientFrame) {
	sub := c.takeSub(func(x *subscription) bool { return x.ch.name == f.Channel })
	if sub == nil {
		c.replyError(f.ID, errf(proto.CodeNotFound, "not subscribed to this channel"))
		return
	}
	s.removeSub(sub)
	c.reply(func(b []byte) []byte { return appendUnsubscribed(b, f.Channel, f.ID) })
}

// clientPublish handles a publish frame.
func (s *Server) clientPublish(c *conn, f clientFrame) {
	if !c.mayPublish(f.Channel) {
		c.replyError(f.ID, errf(proto.CodeForbidden, "not allowed to publish to this channel"))
		return
	}
	if len(f.Data) > s.cfg.MaxMessageSize {
		c.replyError(f.ID, errf(proto.CodeTooLarge, "data larger than the max message size"))
		return
	}
	id := f.ID
	pub := bus.Publication{Channel: f.Channel, Data: compactJSON(f.Data)}
	if f.IdempotencyKey != "" {
		pub.IdempotencyKey = c.idempotencyKey(f.IdempotencyKey)
	}
	keyed := pub.IdempotencyKey != ""
	s.bus.PublishAsync([]bus.Publication{pub}, func(pos []bus.Position, err error) {
		if err != nil {
			c.replyError(id, s.publishError(err))
			return
		}
		if keyed {
			s.m.idempotent(pos[0].Replayed)
		}
		if !pos[0].Replayed {
			s.m.published.Inc()
		}
		c.reply(func(b []byte) []byte { return appendAck(b, id, pos[0].Offset, pos[0].Replayed) })
	})
}

// dropSub removes sub from both its connection and its channel.
func (s *Server) dropSub(sub *subscription) {
	sub.c.takeSub(func(x *subscription) bool { return x == sub })
	s.removeSub(sub)
}

// takeSub removes from c's subscriptions the first one match accepts and
// returns it, or nil.
func (c *conn) takeSub(match func(*subscription) bool) *subscription {
	c.mu.Lock()
	defer c.mu.Unlock()
	for p := &c.subs; *p != nil; p = &(*p).nextOfConn {
		if x := *p; match(x) {
			*p = x.nextOfConn
			x.nextOfConn = nil
			return x
		}
	}
	return nil
}

// removeSub removes sub from its channel, and the channel from the index
// when it was the last subscriber. When sub was live it returns the
// position of the last message queued to it (ok false when it was still
// recovering, or no message has come live since the channel was set up).
func (s *Server) removeSub(sub *subscription) (pos bus.Position, ok bool) {
	ch := sub.ch
	sh := s.index.shard(ch.name)
	sh.mu.Lock()
	ch.mu.Lock()
	if sub.idx < 0 {
		ch.mu.Unlock()
		sh.mu.Unlock()
		return pos, false
	}
	if sub.rec.state == live && ch.epoch != "" {
		pos, ok = bus.Position{Offset: ch.offset, Epoch: ch.epoch}, true
	}
	last := len(ch.subs) - 1
	moved := ch.subs[last]
	ch.subs[sub.idx] = moved
	moved.idx = sub.idx
	ch.subs[last] = nil
	ch.subs = ch.subs[:last]
	sub.idx = -1
	sub.rec.drop()
	if ch.pres != 0 {
		s.presenceChangeLocked(sub.c, ch, true)
	}
	empty := len(ch.subs) == 0
	if empty {
		ch.dead = true
		ch.subs = nil
		delete(sh.channels, ch.name)
	}
	ch.mu.Unlock()
	sh.mu.Unlock()
	s.m.subscriptions.Add(-1)
	if empty {
		s.m.channels.Add(-1)
		s.bus.Unsubscribe(ch.name)
	}
	return pos, ok
}

// onBusMessage is the bus handler: it encodes m once and queues the same
// bytes to every subscriber.
func (s *Server) onBusMessage(m bus.Message) {
	ch := s.index.lookup(m.Channel)
	if ch == nil {
		return
	}
	start := time.Now()
	frame := messageFrame(m)
	ch.mu.Lock()
	if ch.dead || (m.Epoch == ch.epoch && m.Offset <= ch.offset) {
		ch.mu.Unlock()
		return
	}
	ch.epoch, ch.offset = m.Epoch, m.Offset
	n := s.fanout(ch, m, frame)
	ch.mu.Unlock()
	s.m.fannedOut.Inc()
	s.m.delivered.Add(n)
	s.m.deliveredBytes.Add(n * len(frame))
	s.m.fanoutDuration.UpdateDuration(start)
}

// onBusGap tells every subscriber of channel that messages were lost.
func (s *Server) onBusGap(channel string, top bus.Position) {
	ch := s.index.lookup(channel)
	if ch == nil {
		return
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.dead {
		return
	}
	ch.epoch, ch.offset = top.Epoch, top.Offset
	for _, sub := range ch.subs {
		after := s.jitterMS()
		sub.c.send(textFrame(func(b []byte) []byte {
			return appendResync(b, channel, top.Offset, top.Epoch, after)
		}))
	}
}
