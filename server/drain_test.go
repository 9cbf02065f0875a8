package server

import (
	"context"
	"testing"
	"time"

	"tether/internal/proto"
)

// TestDrainDelayAcceptsThenRefuses checks the order of a drain: /readyz
// turns 503 at once, upgrades are still accepted during DrainDelay, then
// refused, and the connections accepted during the delay are drained with
// the rest.
func TestDrainDelayAcceptsThenRefuses(t *testing.T) {
	const delay = 700 * time.Millisecond
	ts := startServer(t, Config{DrainDelay: delay, DrainWindow: 200 * time.Millisecond, ReconnectJitter: time.Second})
	before := mustDial(t, ts.addr)
	start := time.Now()
	drained := make(chan error, 1)
	go func() { drained <- ts.Drain(context.Background()) }()
	eventually(t, time.Second, ts.Draining, "draining")
	if code, body := ts.get(t, "/readyz"); code != 503 {
		t.Fatalf("readyz while draining: %d %s", code, body)
	}
	during := mustDial(t, ts.addr)
	if time.Since(start) >= delay {
		t.Skip("the machine is too slow to dial within the drain delay")
	}
	eventually(t, 3*time.Second, func() bool {
		c, resp, err := dialWS(ts.addr, "/ws", nil)
		if err == nil {
			c.conn.Close()
			return false
		}
		return resp != nil && resp.StatusCode == 503
	}, "upgrades not refused after the drain delay")
	if refusedAfter := time.Since(start); refusedAfter < delay {
		t.Fatalf("refused after %v, before the %v delay", refusedAfter, delay)
	}
	for name, c := range map[string]*testClient{"before": before, "during": during} {
		if code := c.expectClose(5 * time.Second); code != proto.CloseRestart {
			t.Fatalf("client connected %s the drain: close %d, want %d", name, code, proto.CloseRestart)
		}
	}
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
}
