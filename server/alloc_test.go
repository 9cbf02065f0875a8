//go:build !race

package server

import (
	"testing"
	"time"

	"tether/bus"
)

// TestFanoutAllocatesNothingPerDelivery checks that a broadcast costs the
// same few allocations (the encoded frame) whether it reaches 10 or 300
// subscribers: nothing is allocated per delivery.
func TestFanoutAllocatesNothingPerDelivery(t *testing.T) {
	allocs := func(n int) float64 {
		ts := startServer(t, Config{PingInterval: time.Hour})
		discardSubscribers(t, ts, "alloc", n)
		m := bus.Message{Channel: "alloc", Epoch: "e", Data: []byte(`{"k":"v"}`)}
		// Warm up queues and scratch space.
		for i := 0; i < 50; i++ {
			m.Offset++
			ts.onBusMessage(m)
			ts.waitFlushed()
		}
		return testing.AllocsPerRun(200, func() {
			m.Offset++
			ts.onBusMessage(m)
			ts.waitFlushed()
		})
	}
	small, large := allocs(10), allocs(300)
	t.Logf("allocations per broadcast: %.2f with 10 subscribers, %.2f with 300", small, large)
	if large > small+0.5 || large > 4 {
		t.Fatalf("allocations grow with subscribers: %.2f (10) vs %.2f (300)", small, large)
	}
}

// TestHeartbeatPingAllocatesNothing checks that pinging connections costs
// no allocation per ping.
func TestHeartbeatPingAllocatesNothing(t *testing.T) {
	ts := startServer(t, Config{PingInterval: time.Hour})
	discardSubscribers(t, ts, "hb", 100)
	conns := ts.conns.snapshot()
	for range 3 {
		for _, c := range conns {
			c.send(pingFrame)
		}
		ts.waitFlushed()
	}
	a := testing.AllocsPerRun(100, func() {
		for _, c := range conns {
			c.send(pingFrame)
		}
		ts.waitFlushed()
	})
	if a > 0.5 {
		t.Fatalf("%.2f allocations per 100 pings", a)
	}
}

// TestLifetimeObserveAllocatesNothing checks that recording a closed
// connection, abnormal ones included, allocates nothing.
func TestLifetimeObserveAllocatesNothing(t *testing.T) {
	ts := startServer(t, Config{PingInterval: time.Hour})
	now := time.Now().UnixNano()
	a := testing.AllocsPerRun(1000, func() {
		now += int64(time.Millisecond)
		ts.lifetimes.observe(now, 3*time.Second, 3*time.Second, reasonEOF)
		ts.lifetimes.observe(now, time.Minute, time.Second, reasonCloseFrame)
	})
	if a > 0 {
		t.Fatalf("%.2f allocations per two closes", a)
	}
}
