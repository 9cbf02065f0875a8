package bus

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"tether/internal/testutil"
)

// waitDelivered waits until the local bus has handed every queued message
// to the handler.
func (l *local) waitDelivered(t testing.TB) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, func() bool {
		for i := range l.delivery.queues {
			if !l.delivery.queues[i].idle() {
				return false
			}
		}
		return true
	}, "the local bus to deliver what it queued")
}

// TestLocalPublishDoesNotWaitForHandler checks PublishAsync's "never blocks"
// with a handler that does not return: the publish is acknowledged, and the
// handler gets the message on the bus's goroutine.
func TestLocalPublishDoesNotWaitForHandler(t *testing.T) {
	testutil.CheckGoroutines(t)
	b := newLocalForTest(t, Config{})
	got := make(chan Message, 1)
	release := make(chan struct{})
	b.SetHandler(Handler{OnMessage: func(m Message) {
		got <- m
		<-release
	}})
	defer close(release)
	acked := make(chan error, 1)
	go b.PublishAsync([]Publication{{Channel: "c", Data: []byte("1")}}, func(_ []Position, err error) { acked <- err })
	select {
	case err := <-acked:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("PublishAsync waited for the handler")
	}
	if m := <-got; m.Offset != 1 || string(m.Data) != "1" {
		t.Fatalf("handler got %+v", m)
	}
}

// TestLocalDeliveryQueueFull fills a delivery queue behind a stuck handler:
// the publish that finds it full fails with ErrUnavailable and stores
// nothing, and once the handler returns every stored message arrives, in
// order.
func TestLocalDeliveryQueueFull(t *testing.T) {
	testutil.CheckGoroutines(t)
	b := newLocalForTest(t, Config{HistorySize: -1})
	l := localOf(t, b)
	started := make(chan struct{})
	release := make(chan struct{})
	var offsets []uint64 // written by the one delivery goroutine of "c"
	b.SetHandler(Handler{OnMessage: func(m Message) {
		if m.Offset == 1 {
			close(started)
			<-release
		}
		offsets = append(offsets, m.Offset)
	}})
	mustPublishLocal(t, b, "c", "1")
	<-started // the handler holds message 1; the queue is empty
	for i := 0; i < localQueueSize; i++ {
		mustPublishLocal(t, b, "c", strconv.Itoa(i+2))
	}
	if _, err := b.Publish(context.Background(), "c", []byte("full")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("publish to a full queue: %v, want ErrUnavailable", err)
	}
	if h := mustHistoryLocal(t, b, "c", nil); h.Top.Offset != localQueueSize+1 {
		t.Fatalf("top %+v after a refused publish, want offset %d", h.Top, localQueueSize+1)
	}
	close(release)
	l.waitDelivered(t)
	if len(offsets) != localQueueSize+1 {
		t.Fatalf("handler got %d messages, want %d", len(offsets), localQueueSize+1)
	}
	for i, off := range offsets {
		if off != uint64(i+1) {
			t.Fatalf("message %d has offset %d", i, off)
		}
	}
	// There is room again.
	if p := mustPublishLocal(t, b, "c", "after"); p.Offset != localQueueSize+2 {
		t.Fatalf("publish after the queue drained: %+v", p)
	}
}
