package bus

import (
	"context"
	"errors"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

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
