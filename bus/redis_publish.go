package bus

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// pubReq is one publish call waiting in the queue.
type pubReq struct {
	pubs []Publication
	done func([]Position, error)
}

// publish implements backend.
func (b *redisBus) publish(pubs []Publication, done func([]Position, error)) {
	if len(pubs) == 0 {
		done(nil, nil)
		return
	}
	b.queueMu.Lock()
	switch {
	case b.closed:
		b.queueMu.Unlock()
		done(nil, ErrClosed)
		return
	case !b.healthy.Load():
		b.queueMu.Unlock()
		b.m.errPublish.Inc()
		done(nil, unavailable("publish", errUnreachable))
		return
	case b.queued+len(pubs) > b.cfg.QueueSize:
		b.queueMu.Unlock()
		b.m.errPublish.Inc()
		done(nil, unavailable("publish", errQueueFull))
		return
	}
	b.queue = append(b.queue, pubReq{pubs: pubs, done: done})
	b.queued += len(pubs)
	b.queueMu.Unlock()
	wake(b.queueWake)
}

// flushLoop sends queued publishes as pipelines, one batch at a time: a
// batch is sent as soon as the previous one returned, so batches grow with
// the load and each costs one round trip.
func (b *redisBus) flushLoop() {
	var batch []pubReq
	for {
		select {
		case <-b.done:
			b.failQueue(ErrClosed)
			return
		case <-b.queueWake:
		}
		for {
			batch = b.takeBatch(batch[:0])
			if len(batch) == 0 {
				break
			}
			if !b.healthy.Load() {
				b.failBatch(batch, unavailable("publish", errUnreachable))
			} else {
				b.flush(batch)
			}
			clear(batch)
		}
	}
}

// takeBatch moves up to maxPublishBatch messages (whole requests, at least
// one) from the queue to dst.
func (b *redisBus) takeBatch(dst []pubReq) []pubReq {
	b.queueMu.Lock()
	defer b.queueMu.Unlock()
	n, i := 0, 0
	for i < len(b.queue) && (i == 0 || n+len(b.queue[i].pubs) <= maxPublishBatch) {
		n += len(b.queue[i].pubs)
		i++
	}
	dst = append(dst, b.queue[:i]...)
	rest := copy(b.queue, b.queue[i:])
	clear(b.queue[rest:])
	b.queue = b.queue[:rest]
	b.queued -= n
	return dst
}

// failQueue fails every queued publish with err.
func (b *redisBus) failQueue(err error) {
	b.queueMu.Lock()
	q := b.queue
	b.queue, b.queued = nil, 0
	b.queueMu.Unlock()
	b.failBatch(q, err)
}

func (b *redisBus) failBatch(batch []pubReq, err error) {
	for _, r := range batch {
		r.done(nil, err)
	}
}

// flush sends one batch as a pipeline of publish script calls and completes
// its requests.
func (b *redisBus) flush(batch []pubReq) {
	ctx, cancel := context.WithTimeout(b.ctx, b.cfg.CommandTimeout)
	defer cancel()
	if b.needLoad.Load() {
		err := b.pubScript.Load(ctx, b.client).Err()
		if err == nil && b.idemMillis != "" {
			err = b.idemScript.Load(ctx, b.client).Err()
		}
		if err != nil {
			b.commandFailed(err)
			b.m.errPublish.Add(len(batch))
			b.failBatch(batch, unavailable("load publish script", err))
			return
		}
		b.needLoad.Store(false)
	}
	start := time.Now()
	keyed := b.idemMillis != "" && batchHasKeys(batch)
	if keyed {
		// The claims cost keyed batches one round trip more
		// (redis_idempotency.go).
		if batch = b.claimKeys(ctx, batch); len(batch) == 0 {
			return
		}
	}
	epoch := newEpochCandidate()
	pipe := b.client.Pipeline()
	cmds := make([]*redis.Cmd, 0, 64)
	for _, r := range batch {
		for _, p := range r.pubs {
			base := pubsubName(b.cfg.KeyPrefix, p.Channel)
			if keyed && p.IdempotencyKey != "" {
				cmds = append(cmds, pipe.EvalSha(ctx, b.idemScript.Hash(),
					append(channelKeys(base), idemRecordKey(base, p.IdempotencyKey)),
					p.Data, b.histSize, b.ttlMillis, epoch, base, b.publishCmd, b.windowMillis, b.maxBytes, b.idemMillis))
				continue
			}
			cmds = append(cmds, pipe.EvalSha(ctx, b.pubScript.Hash(), channelKeys(base),
				p.Data, b.histSize, b.ttlMillis, epoch, base, b.publishCmd, b.windowMillis, b.maxBytes))
		}
	}
	_, err := pipe.Exec(ctx)
	b.m.publishDuration.UpdateDuration(start)
	b.m.batchPublish.Update(float64(len(cmds)))
	if err != nil {
		b.commandFailed(err)
	} else {
		b.healthy.Store(true)
	}
	i := 0
	for _, r := range batch {
		var (
			pos  = make([]Position, len(r.pubs))
			rerr error
		)
		for j := range r.pubs {
			cmd := cmds[i]
			i++
			if rerr != nil {
				continue
			}
			p, err := parsePosition(cmd)
			if err != nil {
				if strings.HasPrefix(err.Error(), "NOSCRIPT") {
					b.needLoad.Store(true)
				}
				rerr = unavailable("publish to "+strconv.Quote(r.pubs[j].Channel), err)
				continue
			}
			pos[j] = p
		}
		if rerr != nil {
			b.m.errPublish.Inc()
			r.done(nil, rerr)
		} else {
			r.done(pos, nil)
		}
	}
}

// parsePosition reads the {offset, epoch} reply of the publish scripts,
// or the {offset, epoch, 1} of a replayed idempotency key.
func parsePosition(cmd *redis.Cmd) (Position, error) {
	v, err := cmd.Slice()
	if err != nil {
		return Position{}, err
	}
	if len(v) != 2 && len(v) != 3 {
		return Position{}, fmt.Errorf("unexpected publish reply %v", v)
	}
	off, ok1 := v[0].(int64)
	epoch, ok2 := v[1].(string)
	if !ok1 || !ok2 || off < 1 {
		return Position{}, fmt.Errorf("unexpected publish reply %v", v)
	}
	return Position{Offset: uint64(off), Epoch: epoch, Replayed: len(v) == 3}, nil
}
