package bus

import (
	"fmt"
	"strconv"
	"sync"
)

// idemTable is the in-process bus's memory of idempotency keys: the first
// result of each key, for Config.IdempotencyWindow after its publish, at
// most Config.IdempotencyMaxKeys keys. Every key lives for the same window,
// so the order keys were stored in is the order they expire in: one FIFO
// serves both expiry and the bound.
//
// mu is taken before localShard.mu and held while a keyed call publishes,
// so that the check, the publish and the store are one step: a key is
// never published twice, whatever the concurrency. Calls without a key
// never take it.
type idemTable struct {
	window int64 // ns; immutable after newIdemTable
	max    int   // immutable after newIdemTable

	mu   sync.Mutex
	keys map[string]idemEntry
	fifo []idemRef // keys in the order stored; the oldest at fifo[head]
	head int
}

type idemEntry struct {
	channel string
	pos     Position
	expires int64 // unix ns
}

// idemRef is a key in the FIFO. A key stored again after it expired has a
// newer ref too; expires tells which ref the entry in keys belongs to.
type idemRef struct {
	key     string
	expires int64
}

// newIdemTable returns the table for cfg, or nil when idempotency is off.
func newIdemTable(cfg Config) *idemTable {
	if cfg.IdempotencyWindow <= 0 {
		return nil
	}
	return &idemTable{
		window: int64(cfg.IdempotencyWindow),
		max:    cfg.IdempotencyMaxKeys,
		keys:   make(map[string]idemEntry),
	}
}

// lookupLocked returns key's entry unless it expired. t.mu must be held.
func (t *idemTable) lookupLocked(key string, now int64) (idemEntry, bool) {
	e, ok := t.keys[key]
	if !ok || e.expires <= now {
		return idemEntry{}, false
	}
	return e, true
}

// storeLocked records the first result of key, forgetting expired keys
// and, when the table is full, the oldest ones. t.mu must be held.
func (t *idemTable) storeLocked(key, channel string, pos Position, now int64) {
	t.expireLocked(now)
	for len(t.keys) >= t.max && t.popLocked() {
	}
	e := idemEntry{channel: channel, pos: pos, expires: now + t.window}
	t.keys[key] = e
	t.fifo = append(t.fifo, idemRef{key: key, expires: e.expires})
}

// expireLocked forgets every key whose window ended. t.mu must be held.
func (t *idemTable) expireLocked(now int64) {
	for t.head < len(t.fifo) && t.fifo[t.head].expires <= now {
		t.popLocked()
	}
}

// popLocked forgets the oldest key of the FIFO; it reports false when the
// FIFO is empty. t.mu must be held.
func (t *idemTable) popLocked() bool {
	if t.head == len(t.fifo) {
		return false
	}
	r := t.fifo[t.head]
	t.fifo[t.head] = idemRef{}
	t.head++
	if e, ok := t.keys[r.key]; ok && e.expires == r.expires {
		delete(t.keys, r.key)
	}
	// Reclaim the consumed front once it is half the slice.
	if t.head >= 1024 && t.head*2 >= len(t.fifo) {
		n := copy(t.fifo, t.fifo[t.head:])
		clear(t.fifo[n:])
		t.fifo, t.head = t.fifo[:n], 0
	}
	return true
}

// expire forgets every key whose window ended (the sweeper calls it).
func (t *idemTable) expire(now int64) {
	t.mu.Lock()
	t.expireLocked(now)
	if len(t.keys) == 0 && cap(t.fifo) > 1024 {
		// After a burst, let the memory go.
		t.fifo, t.head = nil, 0
		t.keys = make(map[string]idemEntry)
	}
	t.mu.Unlock()
}

// len reports the keys remembered (for tests).
func (t *idemTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.keys)
}

// hasKeys reports whether any of pubs carries an idempotency key.
func hasKeys(pubs []Publication) bool {
	for i := range pubs {
		if pubs[i].IdempotencyKey != "" {
			return true
		}
	}
	return false
}

// keyConflict checks the keys of pubs against each other: it returns the
// ErrIdempotencyConflict of the first key given for two channels, or nil.
// bound, when not nil, reports the channel a key is already bound to.
func keyConflict(pubs []Publication, bound func(key string) (string, bool)) error {
	var seen map[string]string
	for i := range pubs {
		p := &pubs[i]
		if p.IdempotencyKey == "" {
			continue
		}
		ch, ok := seen[p.IdempotencyKey]
		if !ok && bound != nil {
			ch, ok = bound(p.IdempotencyKey)
		}
		if ok && ch != p.Channel {
			return conflict(p.IdempotencyKey, ch)
		}
		if !ok {
			if seen == nil {
				seen = make(map[string]string)
			}
			seen[p.IdempotencyKey] = p.Channel
		}
	}
	return nil
}

// conflict returns the error of a key already bound to channel.
func conflict(key, channel string) error {
	return fmt.Errorf("cannot publish with idempotency key %s: %w (%s)",
		strconv.Quote(key), ErrIdempotencyConflict, strconv.Quote(channel))
}
