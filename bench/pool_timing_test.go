package bench

import (
	"testing"
	"time"
)

func BenchmarkParseFrame(b *testing.B) {
	msg := deliveryFrame(time.Now().UnixNano(), 42)[2:]
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		parseFrame(msg)
	}
}

// BenchmarkDeliver measures the worker's cost per delivery: frame decode,
// JSON scan, bitset and histogram update.
func BenchmarkDeliver(b *testing.B) {
	const m = 4096
	p := newTestPool(b, 1, m)
	now := time.Now().UnixNano()
	frames := make([][]byte, m)
	for i := range frames {
		frames[i] = deliveryFrame(now, i)
	}
	cs, sh := &p.conns[0], &p.shards[0]
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if i%m == 0 {
			clear(cs.seen)
		}
		var later deferred
		cs.mu.Lock()
		p.processLocked(cs, sh, frames[i%m], now, &later)
		cs.mu.Unlock()
		i++
	}
}

func BenchmarkHistRecord(b *testing.B) {
	var h Hist
	b.ReportAllocs()
	v := int64(1)
	for b.Loop() {
		h.Record(v)
		v = v*7 + 13&(1<<40-1)
	}
}
