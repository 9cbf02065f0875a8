package bus

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisTransport is the control plane over Redis: commands on one pub/sub
// channel every node subscribes to, replies on a channel per node, and the
// node registry in a sorted set (member: node id, score: last
// announcement, unix ms). Every name carries the hash tag {ctl}, so on a
// Redis Cluster they all live in one slot and one sharded pub/sub
// connection (SSUBSCRIBE) carries a node's two channels.
//
// The registry uses each node's clock: nodes whose clocks differ by more
// than a fraction of NodeTTL see each other's liveness skewed by as much.
type redisTransport struct {
	b *redisBus // immutable

	mu sync.Mutex // guards ps
	ps *redis.PubSub
}

func (b *redisBus) controlTransport() transport { return &redisTransport{b: b} }

func (t *redisTransport) commandChannel() string { return t.b.cfg.KeyPrefix + "{ctl}" }

func (t *redisTransport) replyChannel(node string) string {
	return t.b.cfg.KeyPrefix + "{ctl}:r:" + node
}

func (t *redisTransport) registryKey() string { return t.b.cfg.KeyPrefix + "{ctl}:nodes" }

// listen subscribes and waits (up to CommandTimeout) for both subscriptions
// to be confirmed, so that a request sent right after it returns reaches
// this node; when Redis is down it returns anyway and go-redis subscribes
// once it is back.
func (t *redisTransport) listen(node string, deliver func([]byte)) error {
	b := t.b
	chans := []string{t.commandChannel(), t.replyChannel(node)}
	ctx, cancel := context.WithTimeout(b.ctx, b.cfg.CommandTimeout)
	defer cancel()
	var ps *redis.PubSub
	if b.cluster != nil {
		ps = b.cluster.SSubscribe(ctx, chans...)
	} else {
		ps = b.client.Subscribe(ctx, chans...)
	}
	for confirmed := 0; confirmed < len(chans); {
		msg, err := ps.Receive(ctx)
		if err != nil {
			b.log.Warn("control plane subscription not confirmed yet", "err", err)
			break
		}
		if _, ok := msg.(*redis.Subscription); ok {
			confirmed++
		}
	}
	t.mu.Lock()
	t.ps = ps
	t.mu.Unlock()
	msgs := ps.Channel(redis.WithChannelSize(256))
	b.start(func() {
		for m := range msgs {
			deliver([]byte(m.Payload))
		}
	})
	return nil
}

func (t *redisTransport) send(ctx context.Context, to string, envelope []byte) error {
	ch := t.commandChannel()
	if to != "" {
		ch = t.replyChannel(to)
	}
	if t.b.cluster != nil {
		return t.b.cluster.SPublish(ctx, ch, envelope).Err()
	}
	return t.b.client.Publish(ctx, ch, envelope).Err()
}

// announce records node as alive now, and forgets nodes silent for four
// TTLs (a crashed node never removes itself).
func (t *redisTransport) announce(ctx context.Context, node string) error {
	now := time.Now().UnixMilli()
	key := t.registryKey()
	_, err := t.b.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.ZAdd(ctx, key, redis.Z{Score: float64(now), Member: node})
		p.ZRemRangeByScore(ctx, key, "-inf", "("+strconv.FormatInt(now-4*NodeTTL.Milliseconds(), 10))
		return nil
	})
	return err
}

func (t *redisTransport) nodes(ctx context.Context) ([]string, error) {
	since := time.Now().Add(-NodeTTL).UnixMilli()
	return t.b.client.ZRangeByScore(ctx, t.registryKey(), &redis.ZRangeBy{
		Min: strconv.FormatInt(since, 10), Max: "+inf",
	}).Result()
}

func (t *redisTransport) leave(node string) {
	ctx, cancel := context.WithTimeout(context.Background(), t.b.cfg.CommandTimeout)
	_ = t.b.client.ZRem(ctx, t.registryKey(), node).Err()
	cancel()
	t.mu.Lock()
	ps := t.ps
	t.mu.Unlock()
	if ps != nil {
		_ = ps.Close()
	}
}
