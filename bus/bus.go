package bus

import (
	"context"
	"errors"
	"sync/atomic"
	"time"
)

// Errors returned by a Bus. Check them with errors.Is.
var (
	// ErrUnavailable means the bus cannot accept or answer right now (the
	// backend is unreachable, or its bounded queue is full). The caller may
	// retry later; nothing was acknowledged.
	ErrUnavailable = errors.New("bus: unavailable")
	// ErrClosed means the bus has been closed.
	ErrClosed = errors.New("bus: closed")
	// ErrIdempotencyConflict means a publication's IdempotencyKey was
	// used, within Config.IdempotencyWindow, for another channel. None of
	// the call's publications was published.
	ErrIdempotencyConflict = errors.New("bus: idempotency key already used for another channel")
)

// Position is a point in a channel's stream: the offset of the last message
// and the epoch the offsets belong to. Offsets grow by exactly one per
// message within an epoch; a new epoch starts whenever the channel's history
// was lost, and offsets of different epochs are not comparable.
type Position struct {
	Offset uint64
	Epoch  string
	// Replayed is set in a publish result that is the first result of its
	// publication's IdempotencyKey, returned again instead of publishing.
	Replayed bool
}

// Message is one published message. Data is the raw JSON value as published;
// it is shared and must be treated as read-only.
type Message struct {
	Channel string
	Offset  uint64
	Epoch   string
	Data    []byte
}

// Publication is one message to publish.
type Publication struct {
	Channel string
	Data    []byte
	// IdempotencyKey, when not empty and Config.IdempotencyWindow is on,
	// makes the publication happen at most once per window: a publication
	// whose key the bus has seen within the window (on any node sharing the
	// Redis bus) is not published again and gets the first one's position,
	// with Replayed set; a key seen for another channel fails the call with
	// ErrIdempotencyConflict. The window starts at the first publish. Keys
	// are compared as bytes, in one space shared by every caller: the
	// caller namespaces and bounds them (the server does, docs/protocol.md).
	IdempotencyKey string
}

// History is the answer to a recovery request.
type History struct {
	// Messages are the messages after the requested position, in offset
	// order. Empty when Recovered is false.
	Messages []Message
	// Top is the channel's position as the bus knows it at the time of the
	// read: every message with an offset above Top.Offset (in Top.Epoch)
	// is delivered to the handler after the read (possibly before History
	// returns). With the Redis bus, Top may be ahead of what the node has
	// delivered: a message at or below it can still arrive afterwards,
	// and is to be skipped.
	Top Position
	// Recovered reports whether Messages hold every message after the
	// requested position (same epoch, still within the history window).
	Recovered bool
}

// Handler receives what the bus delivers to this node.
//
// OnMessage is called for every message on a channel the node has interest
// in (the local bus calls it for every message). Calls for one channel are
// serialized and in offset order. It runs on one of the bus's own
// goroutines, never on a publisher's: the local bus's delivery goroutines
// (local_delivery.go), or the Redis bus's pub/sub readers and repair
// workers. It may take the time its work needs (a node runs a whole fan-out
// in it, waiting for its fan-out workers), but must not wait for anything
// that waits for the bus (a publish, a history read): messages behind it on
// the same goroutine wait for it to return.
//
// OnGap is called when the bus lost messages of a channel and cannot repair
// the loss from history (for example Redis restarted empty): subscribers must
// resync by other means. top is the channel's new position.
//
// OnPresence is called, on a bus goroutine, with one node's announced
// joins and leaves of channel (PresenceChange.Announce) of one
// PresenceWindow, in order, on every node interested in channel; clients is
// the channel's presence count once they were applied.
type Handler struct {
	OnMessage  func(m Message)
	OnGap      func(channel string, top Position)
	OnPresence func(channel string, clients int, events []PresenceEvent)
}

// Stats is a snapshot of a bus's state for /readyz and metrics.
type Stats struct {
	// Healthy is false while the backend is unreachable.
	Healthy bool
	// Channels is the number of channels the node has interest in.
	Channels int
	// Queued is the number of publishes waiting to be sent.
	Queued int
}

// backend is what a Bus implementation provides. All methods are safe for
// concurrent use.
type backend interface {
	// publish publishes pubs in order and calls done exactly once, from any
	// goroutine (possibly before publish returns), with one position per
	// publication or an error. A publication is acknowledged only once it is
	// durable in the channel's history.
	publish(pubs []Publication, done func([]Position, error))
	// subscribe and unsubscribe record the node's interest in a channel.
	// They never block and never call the handler synchronously, so they may
	// be called with the caller's locks held. Calls are counted: interest
	// ends when unsubscribe has been called as often as subscribe.
	subscribe(channel string)
	unsubscribe(channel string)
	// history returns the messages after since (or, with since nil, only
	// the channel's current position). It must not be called with locks
	// held that the handler takes.
	history(ctx context.Context, channel string, since *Position) (History, error)
	setHandler(h Handler)
	stats() Stats
	close() error
}

// Bus is a message bus for one node. Its methods are safe for concurrent use.
type Bus struct {
	be   backend
	ctl  atomic.Pointer[control] // set by StartControl (control.go)
	pres presenceStore
}

// SetHandler sets the receiver of delivered messages. It must be called
// before the first publish and not changed afterwards.
func (b *Bus) SetHandler(h Handler) { b.be.setHandler(h) }

// Publish publishes one message and returns its position once it is
// acknowledged.
func (b *Bus) Publish(ctx context.Context, channel string, data []byte) (Position, error) {
	pos, err := b.PublishBatch(ctx, []Publication{{Channel: channel, Data: data}})
	if err != nil {
		return Position{}, err
	}
	return pos[0], nil
}

// PublishBatch publishes pubs in order and returns their positions once all
// are acknowledged. If ctx ends first, it returns ctx's error and the
// messages may or may not have been published.
func (b *Bus) PublishBatch(ctx context.Context, pubs []Publication) ([]Position, error) {
	type result struct {
		pos []Position
		err error
	}
	ch := make(chan result, 1)
	b.be.publish(pubs, func(pos []Position, err error) { ch <- result{pos, err} })
	select {
	case r := <-ch:
		return r.pos, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// PublishAsync publishes pubs and calls done exactly once, from any
// goroutine (possibly before PublishAsync returns), when they are
// acknowledged or have failed. It never blocks and never calls the
// handler: the local bus stores and queues the messages for its delivery
// goroutines and fails with ErrUnavailable, storing nothing more, when a
// queue is full; the Redis bus queues them for its flusher and fails with
// ErrUnavailable when its queue is full. pubs and their Data must not be
// modified until done is called: a backend may send them later.
func (b *Bus) PublishAsync(pubs []Publication, done func([]Position, error)) {
	b.be.publish(pubs, done)
}

// Subscribe records interest in channel: from now on its messages are
// delivered to the handler. It never blocks.
func (b *Bus) Subscribe(channel string) { b.be.subscribe(channel) }

// Unsubscribe ends one Subscribe's interest in channel. It never blocks.
func (b *Bus) Unsubscribe(channel string) { b.be.unsubscribe(channel) }

// History reads channel's messages after since, or only its current position
// when since is nil. See History for the guarantees.
func (b *Bus) History(ctx context.Context, channel string, since *Position) (History, error) {
	return b.be.history(ctx, channel, since)
}

// Stats returns a snapshot of the bus's state.
func (b *Bus) Stats() Stats { return b.be.stats() }

// Close stops the bus. Publishes after Close fail with ErrClosed.
func (b *Bus) Close() error {
	b.closeControl()
	return b.be.close()
}

// Config bounds a bus's history. It is shared by all implementations.
//
// A channel's history keeps its last HistorySize messages whatever their
// age and size, and beyond them every message younger than HistoryWindow,
// as long as the messages kept hold at most HistoryMaxBytes of data. The
// window is what gives continuity across a drain: clients told to wait up
// to the reconnect advice before coming back find what they missed, however
// busy the channel, up to the byte cap.
type Config struct {
	// HistorySize is the number of messages kept per channel whatever
	// their age. If zero, 100 is used; negative keeps no history at all
	// (HistoryWindow is then ignored).
	HistorySize int
	// HistoryWindow is how long a message is kept beyond HistorySize.
	// If zero, 30 seconds is used (twice the longest reconnect advice at
	// the server's default --reconnect-jitter of 5 s, which also bounds
	// Retry-After: 2 × (5 s + 5 s) = 20 s, rounded up); negative keeps
	// by count only.
	HistoryWindow time.Duration
	// HistoryMaxBytes bounds the data bytes of one channel's history when
	// it keeps messages beyond HistorySize for HistoryWindow; the last
	// HistorySize messages are kept even when they hold more. If zero,
	// 1 MiB is used; negative keeps by count only. (The Redis bus trims in
	// steps of a sixteenth of the window or of this cap, so it may hold up
	// to a step more.)
	HistoryMaxBytes int
	// HistoryTTL is how long a channel's history outlives its last
	// publish. If zero, 5 minutes is used.
	HistoryTTL time.Duration
	// IdempotencyWindow is how long a Publication.IdempotencyKey is
	// remembered after its first publish. If zero or negative, keys are
	// ignored: every publication is published. Windows under a
	// millisecond count as one millisecond.
	IdempotencyWindow time.Duration
	// IdempotencyMaxKeys bounds the keys the in-process bus remembers at
	// once. When it is full, the oldest key (the nearest to its expiry) is
	// forgotten early, so a retry with it publishes again. If zero, 100,000
	// is used. The Redis bus keeps keys in Redis instead, each with its own
	// expiry; there the bound is Redis's memory.
	IdempotencyMaxKeys int
}

func (c Config) withDefaults() Config {
	if c.HistorySize == 0 {
		c.HistorySize = 100
	}
	if c.HistorySize < 0 {
		c.HistorySize = 0
	}
	if c.HistoryWindow == 0 {
		c.HistoryWindow = 30 * time.Second
	}
	if c.HistoryMaxBytes == 0 {
		c.HistoryMaxBytes = 1 << 20
	}
	if c.HistorySize == 0 || c.HistoryWindow < 0 || c.HistoryMaxBytes < 0 {
		c.HistoryWindow, c.HistoryMaxBytes = 0, 0
	}
	if c.HistoryTTL <= 0 {
		c.HistoryTTL = 5 * time.Minute
	}
	if c.IdempotencyWindow < 0 {
		c.IdempotencyWindow = 0
	}
	if c.IdempotencyWindow > 0 && c.IdempotencyWindow < time.Millisecond {
		c.IdempotencyWindow = time.Millisecond
	}
	if c.IdempotencyMaxKeys <= 0 {
		c.IdempotencyMaxKeys = 100_000
	}
	return c
}
