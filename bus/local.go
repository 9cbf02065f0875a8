package bus

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"
)

// NewLocal returns an in-process bus for a single node. Offsets and history
// live in this process's memory; a channel's state is freed once nobody is
// interested in it and its history has expired.
func NewLocal(cfg Config) *Bus {
	l := newLocal(cfg, time.Now)
	return &Bus{be: l, pres: newLocalPresence(l)}
}

// newLocal returns the in-process backend, reading the time from now.
func newLocal(cfg Config, now func() time.Time) *local {
	l := &local{
		cfg:  cfg.withDefaults(),
		seed: maphash.MakeSeed(),
		done: make(chan struct{}),
		now:  now,

		delivery: newLocalDelivery(),
	}
	l.retain = l.cfg.retention()
	l.idem = newIdemTable(l.cfg)
	for i := range l.shards {
		l.shards[i].channels = make(map[string]*localChannel)
	}
	interval := l.cfg.HistoryTTL / 4
	if interval > 10*time.Second {
		interval = 10 * time.Second
	}
	if interval < 10*time.Millisecond {
		interval = 10 * time.Millisecond
	}
	l.wg.Add(1)
	go l.sweepLoop(interval)
	for i := range l.delivery.queues {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.delivery.queues[i].run(l.deliver, l.done)
		}()
	}
	return l
}

type local struct {
	cfg    Config           // immutable after NewLocal
	retain retention        // immutable after NewLocal
	now    func() time.Time // immutable after NewLocal
	seed   maphash.Seed     // immutable after NewLocal

	// handler is set before the first publish; a node restarted on the same
	// bus sets it again.
	handler  atomic.Pointer[Handler]
	delivery localDelivery  // hands messages to handler.OnMessage
	ctl      localTransport // the control plane (control_local.go)
	idem     *idemTable     // nil when idempotency is off (idempotency.go)

	closed atomic.Bool
	// Channels are sharded by name so that the sweeper, which visits every
	// channel, holds one shard's lock at a time and never stalls publishes
	// to the rest.
	shards [localShards]localShard

	done chan struct{}
	wg   sync.WaitGroup
}

const localShards = 64

type localShard struct {
	mu       sync.Mutex
	channels map[string]*localChannel
	peak     int // most channels held since the map was last rebuilt
}

// localChannel is one channel's stream. Lock order: idemTable.mu, then
// localShard.mu, then localChannel.mu, then localQueue.mu. The handler is
// called with none of them held, on a delivery goroutine
// (local_delivery.go).
type localChannel struct {
	mu       sync.Mutex
	epoch    string
	offset   uint64   // offset of the last message
	hist     msgQueue // the messages kept (Config), ending at offset
	lastPub  time.Time
	interest int // guarded by localShard.mu
}

func newEpoch() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (l *local) setHandler(h Handler) { l.handler.Store(&h) }

func (l *local) shardIndex(channel string) int {
	return int(maphash.String(l.seed, channel) % localShards)
}

func (l *local) shard(channel string) *localShard {
	return &l.shards[l.shardIndex(channel)]
}

// channelLocked returns channel's state, creating it when create is set.
// sh.mu must be held.
func (l *local) channelLocked(sh *localShard, channel string, create bool) *localChannel {
	ch := sh.channels[channel]
	if ch == nil && create {
		ch = &localChannel{epoch: newEpoch(), lastPub: l.now()}
		sh.channels[channel] = ch
		sh.peak = max(sh.peak, len(sh.channels))
	}
	return ch
}

// publish stores each publication in its channel's history and queues it
// for the handler; it never runs the handler itself. A publication whose
// delivery queue is full fails the call with ErrUnavailable, unstored (the
// ones before it in pubs are published).
func (l *local) publish(pubs []Publication, done func([]Position, error)) {
	if l.idem != nil && hasKeys(pubs) {
		l.publishIdempotent(pubs, done)
		return
	}
	pos := make([]Position, len(pubs))
	h := l.handler.Load()
	deliver := h != nil && h.OnMessage != nil
	for i := range pubs {
		p, err := l.publishOne(&pubs[i], deliver)
		if err != nil {
			done(nil, err)
			return
		}
		pos[i] = p
	}
	done(pos, nil)
}

// publishIdempotent is publish for a call with idempotency keys: with the
// table locked, it refuses the whole call when a key is bound to another
// channel, answers a key seen within the window with its first result and
// publishes (and records) the rest.
func (l *local) publishIdempotent(pubs []Publication, done func([]Position, error)) {
	t := l.idem
	pos := make([]Position, len(pubs))
	h := l.handler.Load()
	deliver := h != nil && h.OnMessage != nil
	t.mu.Lock()
	now := l.now().UnixNano()
	if err := keyConflict(pubs, func(key string) (string, bool) {
		e, ok := t.lookupLocked(key, now)
		return e.channel, ok
	}); err != nil {
		t.mu.Unlock()
		done(nil, err)
		return
	}
	for i := range pubs {
		p := &pubs[i]
		if p.IdempotencyKey != "" {
			if e, ok := t.lookupLocked(p.IdempotencyKey, now); ok {
				pos[i] = e.pos
				pos[i].Replayed = true
				continue
			}
		}
		ps, err := l.publishOne(p, deliver)
		if err != nil {
			t.mu.Unlock()
			done(nil, err)
			return
		}
		pos[i] = ps
		if p.IdempotencyKey != "" {
			t.storeLocked(p.IdempotencyKey, p.Channel, ps, now)
		}
	}
	t.mu.Unlock()
	done(pos, nil)
}

// publishOne stores p in its channel's history and, when deliver is set,
// queues it for the handler.
func (l *local) publishOne(p *Publication, deliver bool) (Position, error) {
	if l.closed.Load() {
		return Position{}, ErrClosed
	}
	si := l.shardIndex(p.Channel)
	sh := &l.shards[si]
	sh.mu.Lock()
	ch := l.channelLocked(sh, p.Channel, true)
	ch.mu.Lock()
	sh.mu.Unlock()
	q := l.delivery.queue(si)
	if deliver {
		q.mu.Lock()
		if len(q.pending) >= localQueueSize {
			q.mu.Unlock()
			ch.mu.Unlock()
			return Position{}, ErrUnavailable
		}
	}
	ch.offset++
	m := Message{Channel: p.Channel, Offset: ch.offset, Epoch: ch.epoch, Data: p.Data}
	ch.lastPub = l.now()
	ch.hist.push(m, ch.lastPub.UnixNano(), l.retain)
	if deliver {
		// Queued under ch.mu: the channel's messages keep offset order.
		q.pending = append(q.pending, m)
		q.mu.Unlock()
		q.signal()
	}
	ch.mu.Unlock()
	return Position{Offset: m.Offset, Epoch: m.Epoch}, nil
}

// deliver hands m to the handler. It runs on a delivery goroutine.
func (l *local) deliver(m Message) {
	if h := l.handler.Load(); h != nil && h.OnMessage != nil {
		h.OnMessage(m)
	}
}

func (l *local) subscribe(channel string) {
	if l.closed.Load() {
		return
	}
	sh := l.shard(channel)
	sh.mu.Lock()
	l.channelLocked(sh, channel, true).interest++
	sh.mu.Unlock()
}

func (l *local) unsubscribe(channel string) {
	sh := l.shard(channel)
	sh.mu.Lock()
	if ch := l.channelLocked(sh, channel, false); ch != nil && ch.interest > 0 {
		ch.interest--
	}
	sh.mu.Unlock()
}

func (l *local) history(ctx context.Context, channel string, since *Position) (History, error) {
	if err := ctx.Err(); err != nil {
		return History{}, err
	}
	if l.closed.Load() {
		return History{}, ErrClosed
	}
	sh := l.shard(channel)
	sh.mu.Lock()
	ch := l.channelLocked(sh, channel, true)
	ch.mu.Lock()
	sh.mu.Unlock()
	defer ch.mu.Unlock()
	return historyAfter(ch.hist.msgs, Position{Offset: ch.offset, Epoch: ch.epoch}, since), nil
}

func (l *local) sweepLoop(interval time.Duration) {
	defer l.wg.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-l.done:
			return
		case <-t.C:
			l.sweep()
		}
	}
}

// sweep frees the history of channels whose last publish is older than the
// TTL, and the whole state of such channels nobody is interested in. It
// holds one shard's lock at a time.
func (l *local) sweep() {
	if l.idem != nil {
		l.idem.expire(l.now().UnixNano())
	}
	cutoff := l.now().Add(-l.cfg.HistoryTTL)
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		for name, ch := range sh.channels {
			ch.mu.Lock()
			if ch.lastPub.Before(cutoff) {
				if ch.interest == 0 {
					delete(sh.channels, name)
				} else {
					ch.hist = msgQueue{}
				}
			}
			ch.mu.Unlock()
		}
		// Go maps keep their buckets when entries go: after a burst of
		// short-lived channels, rebuild the map so the memory goes too.
		if sh.peak > 256 && len(sh.channels) < sh.peak/4 {
			m := make(map[string]*localChannel, len(sh.channels))
			for name, ch := range sh.channels {
				m[name] = ch
			}
			sh.channels, sh.peak = m, len(m)
		}
		sh.mu.Unlock()
	}
}

func (l *local) stats() Stats {
	n := 0
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		for _, ch := range sh.channels {
			if ch.interest > 0 {
				n++
			}
		}
		sh.mu.Unlock()
	}
	return Stats{Healthy: !l.closed.Load(), Channels: n}
}

func (l *local) close() error {
	if l.closed.Swap(true) {
		return nil
	}
	close(l.done)
	l.wg.Wait()
	return nil
}

// channelCount reports how many channels hold state (for tests).
func (l *local) channelCount() int {
	n := 0
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		n += len(sh.channels)
		sh.mu.Unlock()
	}
	return n
}
