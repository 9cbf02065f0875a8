package bus

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"tether/internal/testutil"
)

// TestLocalHistoryWindow publishes 50 messages of 100 bytes per second for
// a minute, on a clock the test moves, and checks what the history keeps:
// everything younger than the window even above the count, no more than
// the byte cap allows, and never less than the count.
func TestLocalHistoryWindow(t *testing.T) {
	testutil.CheckGoroutines(t)
	f := func(cfg Config, wantKept int) {
		t.Helper()
		var clock atomic.Int64
		clock.Store(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC).UnixNano())
		cfg.HistoryTTL = time.Hour
		l := newLocal(cfg, func() time.Time { return time.Unix(0, clock.Load()) })
		b := &Bus{be: l}
		t.Cleanup(func() { _ = b.Close() })
		data := strings.Repeat("x", 98)
		var last Position
		for i := range 3000 { // 60 s at 50 msg/s
			clock.Add(int64(20 * time.Millisecond))
			last = mustPublishLocal(t, b, "w", fmt.Sprintf("%q", data[:98-len(strconv.Itoa(i))]+strconv.Itoa(i)))
		}
		since := func(n int) *Position { return &Position{Offset: last.Offset - uint64(n), Epoch: last.Epoch} }
		h := mustHistoryLocal(t, b, "w", since(wantKept))
		if !h.Recovered || len(h.Messages) != wantKept {
			t.Fatalf("%+v: the last %d messages: recovered %v, %d messages", cfg, wantKept, h.Recovered, len(h.Messages))
		}
		if h := mustHistoryLocal(t, b, "w", since(wantKept+1)); h.Recovered {
			t.Fatalf("%+v: %d messages kept, want %d", cfg, len(h.Messages), wantKept)
		}
	}
	// 30 s at 50 msg/s: 1,500 messages, above the count of 100.
	f(Config{HistorySize: 100, HistoryWindow: 30 * time.Second}, 1500)
	// The default window is 30 s too.
	f(Config{HistorySize: 100}, 1500)
	// The cap bounds it: 20,000 bytes are 200 messages of 100 bytes.
	f(Config{HistorySize: 100, HistoryWindow: 30 * time.Second, HistoryMaxBytes: 20000}, 200)
	// The count is kept even when it holds more than the cap.
	f(Config{HistorySize: 100, HistoryWindow: 30 * time.Second, HistoryMaxBytes: 5000}, 100)
	// The count wins when the window holds fewer messages.
	f(Config{HistorySize: 2000, HistoryWindow: 30 * time.Second}, 2000)
	// By count only.
	f(Config{HistorySize: 100, HistoryWindow: -1}, 100)
	f(Config{HistorySize: 100, HistoryMaxBytes: -1}, 100)
}

// TestRedisHistoryWindow publishes at 50 msg/s to a Redis bus with a
// history of 10 messages and a window of 1 s: every message younger than
// the window is recovered, and the list holds about a window's worth, not
// everything. Then the byte cap bounds a window that would hold more.
func TestRedisHistoryWindow(t *testing.T) {
	testutil.CheckGoroutines(t)
	r := testutil.StartRedis(t)
	cfg := testConfig(r.URL())
	cfg.HistorySize = 10
	cfg.HistoryWindow = time.Second
	n := newTestNode(t, cfg)
	ctx := context.Background()

	type sent struct {
		at  time.Time
		pos Position
	}
	var log []sent
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for i := range 125 { // 2.5 s
		<-tick.C
		at := time.Now()
		p, err := n.bus.Publish(ctx, "w", []byte(strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		log = append(log, sent{at, p})
	}
	end := time.Now()
	// Every message sent after end-window must be in history (Redis ran
	// it after it was sent, and trimmed no later than end).
	first := len(log)
	for first > 0 && log[first-1].at.After(end.Add(-cfg.HistoryWindow)) {
		first--
	}
	since := log[first].pos
	since.Offset--
	h, err := n.bus.History(ctx, "w", &since)
	if err != nil {
		t.Fatal(err)
	}
	if !h.Recovered || len(h.Messages) < len(log)-first {
		t.Fatalf("since %d (%d messages younger than the window): recovered %v, %d messages", since.Offset, len(log)-first, h.Recovered, len(h.Messages))
	}
	for i, m := range h.Messages {
		if want := strconv.Itoa(first + i); string(m.Data) != want {
			t.Fatalf("message %d is %q, want %q", m.Offset, m.Data, want)
		}
	}
	kept, _ := r.Do(t, "LLEN", "tether:{w}:h").(int64)
	// A window at 50 msg/s is 50 messages; trimming happens in steps of a
	// sixteenth of the window (about 3), and the ticker may bunch up.
	if kept < int64(len(log)-first) || kept > 75 {
		t.Fatalf("history holds %d messages, want about 50 (%d younger than the window)", kept, len(log)-first)
	}
	t.Logf("%d messages younger than the window, %d kept", len(log)-first, kept)

	// The cap: 4,000 bytes of 100-byte messages are 40, trimmed in steps of
	// 250 bytes.
	cfg.HistoryWindow = time.Minute
	cfg.HistoryMaxBytes = 4000
	c := newTestNode(t, cfg)
	data := []byte(strings.Repeat("y", 100))
	for range 300 {
		if _, err := c.bus.Publish(ctx, "capped", data); err != nil {
			t.Fatal(err)
		}
	}
	kept, _ = r.Do(t, "LLEN", "tether:{capped}:h").(int64)
	if kept < 36 || kept > 43 {
		t.Fatalf("capped history holds %d messages of 100 bytes, want about 40", kept)
	}
	// Never fewer than HistorySize, whatever the cap.
	cfg.HistoryMaxBytes = 300
	d := newTestNode(t, cfg)
	for range 100 {
		if _, err := d.bus.Publish(ctx, "tiny", data); err != nil {
			t.Fatal(err)
		}
	}
	if kept, _ = r.Do(t, "LLEN", "tether:{tiny}:h").(int64); kept < 10 || kept > 13 {
		t.Fatalf("history over the cap holds %d messages, want 10 (HistorySize) and at most a step more", kept)
	}
}

// TestWindowRetention checks what a node's recovery window keeps against
// the history: at 10 messages/s with a history of 100 messages and 1 s,
// the history keeps 100, the window the 10 of the last second; with the
// history by count only, the window keeps the count too.
func TestWindowRetention(t *testing.T) {
	f := func(r retention, want int) {
		t.Helper()
		var q msgQueue
		now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC).UnixNano()
		for i := range 300 {
			now += int64(100 * time.Millisecond)
			q.push(Message{Offset: uint64(i + 1), Data: []byte("x")}, now, r)
		}
		if len(q.msgs) != want || q.msgs[len(q.msgs)-1].Offset != 300 {
			t.Fatalf("%+v: kept %d messages ending at %d, want %d ending at 300", r, len(q.msgs), q.msgs[len(q.msgs)-1].Offset, want)
		}
	}
	history := retention{size: 100, window: time.Second, maxBytes: 1 << 20}
	f(history, 100)
	f(history.recent(), 10)
	byCount := retention{size: 100}
	f(byCount.recent(), 100)
}
