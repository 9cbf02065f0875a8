package bus

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// historyCmd queues one history script call on pipe: the position and the
// messages after since, or, with full, the position and every message held.
func (b *redisBus) historyCmd(ctx context.Context, pipe redis.Pipeliner, base string, since *Position, full bool, epoch string) *redis.Cmd {
	sinceOff, sinceEpoch := "", ""
	switch {
	case full:
		sinceOff = "*"
	case since != nil:
		sinceOff, sinceEpoch = strconv.FormatUint(since.Offset, 10), since.Epoch
	}
	return pipe.EvalSha(ctx, b.histScript.Hash(), channelKeys(base), sinceOff, sinceEpoch, epoch, b.ttlMillis)
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

// history implements backend. For a channel the node has interest in it
// answers from the node's own state (see serve); otherwise, or when the
// caller is ahead of this node, it reads Redis.
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
		h, served, err := b.serve(ctx, c, since)
		if err != nil {
			b.m.errHistory.Inc()
			if errors.Is(err, ErrClosed) {
				return History{}, err
			}
			return History{}, unavailable("read history of "+strconv.Quote(channel), err)
		}
		if served {
			b.m.historyNode.Inc()
			return h, nil
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
	b.m.historyRedis.Inc()
	return h, nil
}

// serve answers History for a channel the node has interest in from the
// node's position and window, so that N subscribes on one node cost Redis
// O(1). It waits until the subscription is active (messages after the
// answer must arrive on pub/sub) and the channel's position is known and
// not being repaired; the one read that gets it there, and the one full read
// a window needs, are the repair loop's, shared by every waiting caller. It
// reports false when the caller must read Redis itself: the channel was
// dropped, or since is ahead of what this node delivered.
func (b *redisBus) serve(ctx context.Context, c *redisChannel, since *Position) (History, bool, error) {
	for {
		c.mu.Lock()
		if c.dead {
			c.mu.Unlock()
			return History{}, false, nil
		}
		if c.active && c.known && !c.repairing {
			if since != nil && since.Epoch == c.epoch && since.Offset > c.last {
				c.mu.Unlock()
				return History{}, false, nil
			}
			if h, ok := c.serveLocked(since); ok {
				c.mu.Unlock()
				return h, true, nil
			}
		}
		if since != nil && !c.win.filling {
			c.win.want, c.win.used = true, time.Now()
		}
		read := c.active && !c.reading && (!c.known || c.repairing || c.win.want)
		wait := c.changed
		if wait == nil {
			wait = make(chan struct{})
			c.changed = wait
		}
		c.mu.Unlock()
		if read {
			b.queueRepair(c)
		}
		select {
		case <-wait:
		case <-b.done:
			return History{}, false, ErrClosed
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.Canceled) && b.isClosed() {
				return History{}, false, ErrClosed
			}
			return History{}, false, errors.New("subscription not active or its history read not done")
		}
	}
}

// readHistory runs the history script once, loading it when Redis lost it.
func (b *redisBus) readHistory(ctx context.Context, base, channel string, since *Position) (History, error) {
	epoch := newEpochCandidate()
	for range 2 {
		pipe := b.client.Pipeline()
		cmd := b.historyCmd(ctx, pipe, base, since, false, epoch)
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
