package bus

import (
	"context"
	"hash/maphash"
	"strconv"
	"sync"
	"time"
)

// redisChannel is the node's state of one channel it has interest in.
type redisChannel struct {
	name          string // immutable
	pubsubChannel string // immutable: the pub/sub channel, prefix{name}

	// Guarded by redisBus.mu.
	refs     int       // local subscribers
	lingerAt time.Time // when refs is 0: when to unsubscribe in Redis
	link     *link     // nil while unrouted (cluster mode)
	sent     bool      // SUBSCRIBE written on link's current connection

	mu           sync.Mutex
	dead         bool // removed from the bus: deliver nothing more
	active       bool // the server confirmed the subscription on the current connection
	known        bool // last and epoch hold the last delivered position
	last         uint64
	epoch        string
	repairing    bool          // a gap is being repaired: live messages go to held
	repairQueued bool          // in redisBus.repairQueue
	reading      bool          // the repair loop is reading c's history
	held         []Message     // live messages received while repairing, in order
	heldOverflow bool          // held was full and messages were dropped from it
	changed      chan struct{} // nil, or made by a waiting History: closed by notifyLocked
	win          window        // the node's copy of the channel's recent history
}

var channelSeed = maphash.MakeSeed()

// subscribe implements backend.
func (b *redisBus) subscribe(channel string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.isClosed() {
		return
	}
	c := b.chans[channel]
	if c == nil {
		c = &redisChannel{name: channel, pubsubChannel: pubsubName(b.cfg.KeyPrefix, channel), refs: 1}
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

// routeLocked gives c to the link that serves it: by hash in standalone
// mode, or to the janitor, which asks the cluster for the slot's master.
// b.mu must be held.
func (b *redisBus) routeLocked(c *redisChannel) {
	c.link, c.sent = nil, false
	if b.cluster == nil {
		l := b.links[strconv.Itoa(int(maphash.String(channelSeed, c.name)%uint64(len(b.links))))]
		l.addLocked(c)
		return
	}
	if b.unrouted == nil {
		b.unrouted = make(map[*redisChannel]struct{})
	}
	b.unrouted[c] = struct{}{}
	wake(b.routeWake)
}

// route assigns every unrouted channel to its slot master's link, and
// reports whether all could be.
func (b *redisBus) route() bool {
	if b.cluster == nil {
		return true
	}
	b.mu.Lock()
	todo := make([]*redisChannel, 0, len(b.unrouted))
	for c := range b.unrouted {
		todo = append(todo, c)
	}
	b.mu.Unlock()
	ok := true
	for _, c := range todo {
		ctx, cancel := context.WithTimeout(b.ctx, b.cfg.CommandTimeout)
		node, err := b.cluster.MasterForKey(ctx, c.pubsubChannel)
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
