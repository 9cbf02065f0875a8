package bus

import (
	"context"
	"time"
)

// janitorLoop routes new channels to cluster nodes, keeps the meta key
// of every channel the node serves alive, so that a channel quiet for
// longer than HistoryTTL keeps its epoch while anyone listens, and frees
// idle windows.
func (b *redisBus) janitorLoop() {
	keepalive := time.NewTicker(max(b.cfg.HistoryTTL/3, 10*time.Millisecond))
	defer keepalive.Stop()
	windows := time.NewTicker(windowIdle / 2)
	defer windows.Stop()
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	for {
		select {
		case <-b.done:
			return
		case <-b.routeWake:
			if !b.route() {
				retry.Reset(100 * time.Millisecond)
			}
		case <-retry.C:
			wake(b.routeWake)
		case <-keepalive.C:
			b.keepalive()
		case now := <-windows.C:
			b.dropIdleWindows(now)
		}
	}
}

// keepalive refreshes the TTL of the meta keys of the channels served.
func (b *redisBus) keepalive() {
	b.mu.Lock()
	keys := make([]string, 0, len(b.chans))
	for _, c := range b.chans {
		keys = append(keys, channelKeys(c.pubsubChannel)[0])
	}
	b.mu.Unlock()
	ttl := b.cfg.HistoryTTL
	for len(keys) > 0 && b.healthy.Load() {
		n := min(len(keys), 1000)
		ctx, cancel := context.WithTimeout(b.ctx, b.cfg.CommandTimeout)
		pipe := b.client.Pipeline()
		for _, k := range keys[:n] {
			pipe.PExpire(ctx, k, ttl)
		}
		_, err := pipe.Exec(ctx)
		cancel()
		if err != nil {
			b.m.errKeepalive.Inc()
			return
		}
		keys = keys[n:]
	}
}
