package bus

import (
	"context"
	"errors"

	"github.com/redis/go-redis/v9"
)

// Idempotency keys on the Redis bus (redis_wire.go has the keys and the
// scripts). A keyed publication costs two steps, both pipelined with the
// rest of its batch:
//
//  1. claimKeys binds every key to its channel (claimScript, in the key's
//     own slot) unless it is bound already; a key bound to another channel
//     fails its call before anything of it is published.
//  2. the publish runs idempotentPublishScript instead of publishScript: in
//     the channel's slot, atomically with the publish, it either replays
//     the key's first result or publishes and records it. Two nodes
//     publishing with the same key at once therefore publish it once.
//
// A batch without keys takes neither step: it costs what it did before.

// batchHasKeys reports whether a publication of batch has an idempotency
// key.
func batchHasKeys(batch []pubReq) bool {
	for _, r := range batch {
		if hasKeys(r.pubs) {
			return true
		}
	}
	return false
}

// claimKeys binds the idempotency keys of batch to their channels, in one
// pipeline. A request with a key bound to another channel (in Redis, or
// twice in the request) is completed with ErrIdempotencyConflict, one
// whose claim failed with ErrUnavailable, before anything of it is
// published. It returns the other requests, in order, in batch's memory.
func (b *redisBus) claimKeys(ctx context.Context, batch []pubReq) []pubReq {
	failed := make([]error, len(batch))
	pipe := b.client.Pipeline()
	var cmds []*redis.Cmd // one per keyed publication of a request not failed
	for i, r := range batch {
		if err := keyConflict(r.pubs, nil); err != nil {
			failed[i] = err
			continue
		}
		for _, p := range r.pubs {
			if p.IdempotencyKey != "" {
				cmds = append(cmds, pipe.Eval(ctx, claimScript,
					[]string{idemClaimKey(b.cfg.KeyPrefix, p.IdempotencyKey)}, p.Channel, b.idemMillis))
			}
		}
	}
	if len(cmds) > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			b.commandFailed(err)
		}
	}
	k := 0
	for i, r := range batch {
		if failed[i] != nil {
			continue
		}
		for _, p := range r.pubs {
			if p.IdempotencyKey == "" {
				continue
			}
			cmd := cmds[k]
			k++
			if failed[i] != nil {
				continue
			}
			switch ch, err := cmd.Text(); {
			case err != nil:
				failed[i] = unavailable("claim idempotency key", err)
			case ch != p.Channel:
				failed[i] = conflict(p.IdempotencyKey, ch)
			}
		}
	}
	n := 0
	for i, r := range batch {
		if err := failed[i]; err != nil {
			if !errors.Is(err, ErrIdempotencyConflict) {
				b.m.errPublish.Inc()
			}
			r.done(nil, err)
			continue
		}
		batch[n] = r
		n++
	}
	clear(batch[n:])
	return batch[:n]
}
