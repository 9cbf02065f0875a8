package server

import (
	"sync"
	"time"
)

// tokenBucket is a thread-safe token bucket; rate < 0 disables it.
type tokenBucket struct {
	mu     sync.Mutex
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func (b *tokenBucket) init(rate float64, burst int) {
	b.rate, b.burst, b.tokens = rate, float64(burst), float64(burst)
}

func (b *tokenBucket) take(now time.Time) bool {
	if b.rate < 0 {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.last.IsZero() {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// allow takes one token of the client's message rate; it reports false
// when the bucket is empty.
func (c *conn) allow(now int64) bool {
	rate := c.srv.cfg.ClientMsgRate
	if rate < 0 {
		return true
	}
	burst := float64(c.srv.cfg.ClientMsgBurst)
	if c.lastTaken == 0 {
		c.tokens = burst
	} else {
		c.tokens += float64(now-c.lastTaken) / 1e9 * rate
		if c.tokens > burst {
			c.tokens = burst
		}
	}
	c.lastTaken = now
	if c.tokens >= 1 {
		c.tokens--
		c.strikes = 0
		return true
	}
	c.strikes++
	return false
}
