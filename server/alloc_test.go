//go:build !race

package server

import (
	"testing"
	"time"

	"tether/bus"
	"tether/internal/wsframe"
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

// TestUpgradeRequestAllocs bounds what reading an upgrade request costs:
// the head's one copy and its field slice, nothing per header field, and
// nothing for the handshake checks, the token or the accept key. (It was
// a map, a slice per field and a canonical key per mixed-case name.)
func TestUpgradeRequestAllocs(t *testing.T) {
	req := []byte("GET /ws?v=1&token=a.b.c HTTP/1.1\r\nHost: tether.example:8080\r\nUser-Agent: bench\r\n" +
		"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
		"Sec-WebSocket-Version: 13\r\nOrigin: https://tether.example:8080\r\nAuthorization: Bearer x.y.z\r\n\r\n")
	var out [64]byte
	allocs := testing.AllocsPerRun(200, func() {
		head, n, err := parseRequestHead(req, 16<<10)
		if err != nil || n != len(req) {
			t.Fatalf("n=%d err=%v", n, err)
		}
		if status, msg, _ := checkHandshake(&head); status != 0 {
			t.Fatal(msg)
		}
		key, _ := head.only("Sec-WebSocket-Key")
		if tokenFromHead(&head) != "a.b.c" || head.get("origin") == "" || len(wsframe.AppendAcceptKey(out[:0], key)) != wsframe.AcceptKeyLen {
			t.Fatal("head misread")
		}
	})
	if allocs > 2 {
		t.Fatalf("%.1f allocations per upgrade request, want at most 2", allocs)
	}
}

// TestClientPongAllocatesNothing checks that a client's answer to a ping,
// which every connection sends every ping interval, is handled without a
// decode or an allocation.
func TestClientPongAllocatesNothing(t *testing.T) {
	ts := startServer(t, Config{PingInterval: time.Hour})
	c := &conn{srv: ts.Server}
	pong := []byte(pongJSON)
	if allocs := testing.AllocsPerRun(1000, func() { _ = c.wsMessage(wsframe.OpText, pong) }); allocs != 0 {
		t.Fatalf("%.1f allocations per pong, want 0", allocs)
	}
}
