package bus

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"sync"
	"time"
)

// NewLocal returns an in-process bus for a single node. Offsets and history
// live in this process's memory; a channel's state is freed once nobody is
// interested in it and its history has expired.
func NewLocal(cfg Config) *Bus {
	l := &local{
		cfg:      cfg.withDefaults(),
		channels: make(map[string]*localChannel),
		done:     make(chan struct{}),
		now:      time.Now,
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
	return &Bus{be: l}
}

type local struct {
	cfg Config           // immutable after NewLocal
	now func() time.Time // immutable after NewLocal

	handler Handler // set before the first publish

	mu       sync.Mutex // guards channels and closed
	channels map[string]*localChannel
	closed   bool

	done chan struct{}
	wg   sync.WaitGroup
}

// localChannel is one channel's stream. Lock order: local.mu, then
// localChannel.mu; the handler is called with localChannel.mu held.
type localChannel struct {
	mu        sync.Mutex
	epoch     string
	offset    uint64    // offset of the last message
	hist      []Message // ring buffer of the last len(hist) messages
	head      int       // index of the oldest message in hist when full
	n         int       // messages in hist
	lastPub   time.Time
	interest  int // guarded by local.mu
	histLimit int
}

func newEpoch() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (l *local) setHandler(h Handler) { l.handler = h }

// channelLocked returns channel's state, creating it when create is set.
// l.mu must be held.
func (l *local) channelLocked(channel string, create bool) *localChannel {
	ch := l.channels[channel]
	if ch == nil && create {
		ch = &localChannel{epoch: newEpoch(), histLimit: l.cfg.HistorySize, lastPub: l.now()}
		l.channels[channel] = ch
	}
	return ch
}

func (l *local) publish(pubs []Publication, done func([]Position, error)) {
	pos := make([]Position, len(pubs))
	for i, p := range pubs {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			done(nil, ErrClosed)
			return
		}
		ch := l.channelLocked(p.Channel, true)
		ch.mu.Lock()
		l.mu.Unlock()
		ch.offset++
		m := Message{Channel: p.Channel, Offset: ch.offset, Epoch: ch.epoch, Data: p.Data}
		ch.appendLocked(m)
		ch.lastPub = l.now()
		pos[i] = Position{Offset: m.Offset, Epoch: m.Epoch}
		if h := l.handler.OnMessage; h != nil {
			h(m)
		}
		ch.mu.Unlock()
	}
	done(pos, nil)
}

// appendLocked adds m to the history ring. ch.mu must be held.
func (ch *localChannel) appendLocked(m Message) {
	if ch.histLimit <= 0 {
		return
	}
	if ch.n < ch.histLimit {
		ch.hist = append(ch.hist, m)
		ch.n++
		return
	}
	ch.hist[ch.head] = m
	ch.head = (ch.head + 1) % ch.histLimit
}

// oldestLocked returns the offset of the oldest message in history, or 0
// when history is empty. ch.mu must be held.
func (ch *localChannel) oldestLocked() uint64 {
	if ch.n == 0 {
		return 0
	}
	return ch.hist[ch.head].Offset
}

func (l *local) subscribe(channel string) {
	l.mu.Lock()
	if !l.closed {
		l.channelLocked(channel, true).interest++
	}
	l.mu.Unlock()
}

func (l *local) unsubscribe(channel string) {
	l.mu.Lock()
	if ch := l.channelLocked(channel, false); ch != nil && ch.interest > 0 {
		ch.interest--
	}
	l.mu.Unlock()
}

func (l *local) history(ctx context.Context, channel string, since *Position) (History, error) {
	if err := ctx.Err(); err != nil {
		return History{}, err
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return History{}, ErrClosed
	}
	ch := l.channelLocked(channel, true)
	ch.mu.Lock()
	l.mu.Unlock()
	defer ch.mu.Unlock()
	h := History{Top: Position{Offset: ch.offset, Epoch: ch.epoch}}
	if since == nil {
		return h, nil
	}
	if since.Epoch != ch.epoch || since.Offset > ch.offset {
		return h, nil
	}
	if since.Offset == ch.offset {
		h.Recovered = true
		return h, nil
	}
	if oldest := ch.oldestLocked(); oldest == 0 || oldest > since.Offset+1 {
		return h, nil
	}
	missed := int(ch.offset - since.Offset)
	h.Messages = make([]Message, 0, missed)
	start := ch.n - missed
	for i := start; i < ch.n; i++ {
		h.Messages = append(h.Messages, ch.hist[(ch.head+i)%len(ch.hist)])
	}
	h.Recovered = true
	return h, nil
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
// TTL, and the whole state of such channels nobody is interested in.
func (l *local) sweep() {
	cutoff := l.now().Add(-l.cfg.HistoryTTL)
	l.mu.Lock()
	defer l.mu.Unlock()
	for name, ch := range l.channels {
		ch.mu.Lock()
		if ch.lastPub.Before(cutoff) {
			if ch.interest == 0 {
				delete(l.channels, name)
			} else if ch.n > 0 {
				ch.hist, ch.n, ch.head = nil, 0, 0
			}
		}
		ch.mu.Unlock()
	}
}

func (l *local) stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, ch := range l.channels {
		if ch.interest > 0 {
			n++
		}
	}
	return Stats{Healthy: !l.closed, Channels: n}
}

func (l *local) close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.mu.Unlock()
	close(l.done)
	l.wg.Wait()
	return nil
}

// channelCount reports how many channels hold state (for tests).
func (l *local) channelCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.channels)
}
