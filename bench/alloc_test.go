//go:build !race

package bench

import (
	"testing"
	"time"
)

func TestDeliveryPathAllocatesNothing(t *testing.T) {
	p := newTestPool(t, 1, 1000)
	now := time.Now().UnixNano()
	frames := make([][]byte, 1000)
	for i := range frames {
		frames[i] = deliveryFrame(now, i)
	}
	cs, sh := &p.conns[0], &p.shards[0]
	i := 0
	allocs := testing.AllocsPerRun(500, func() {
		var later deferred
		cs.mu.Lock()
		p.processLocked(cs, sh, frames[i%len(frames)], now, &later)
		cs.mu.Unlock()
		i++
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per delivery", allocs)
	}
	msg := frames[0][2:]
	if a := testing.AllocsPerRun(100, func() { parseFrame(msg) }); a != 0 {
		t.Fatalf("parseFrame: %v allocations", a)
	}
	var h Hist
	if a := testing.AllocsPerRun(100, func() { h.Record(12345) }); a != 0 {
		t.Fatalf("Hist.Record: %v allocations", a)
	}
}
