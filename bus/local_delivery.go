package bus

import (
	"runtime"
	"sync"
)

// localQueueSize bounds the messages waiting for one delivery goroutine of
// the local bus. A publish that finds its channel's queue full fails with
// ErrUnavailable, and nothing of it is stored.
const localQueueSize = 8192

// localDelivery hands published messages to the handler on the bus's own
// goroutines, so that a publish never runs the handler (a node's whole
// fan-out) on the publisher's goroutine, which may be one of nbio's. A
// channel always goes to the same goroutine, and its messages are queued
// under its lock in offset order, so the handler sees each channel's
// messages one at a time and in order.
type localDelivery struct {
	queues []localQueue // immutable after newLocalDelivery
}

// localQueue is one delivery goroutine's queue.
type localQueue struct {
	wake chan struct{} // capacity 1: signals a non-empty queue

	mu      sync.Mutex
	pending []Message // waiting for the goroutine; len ≤ localQueueSize
	busy    bool      // the goroutine is handing out a batch
}

func newLocalDelivery() localDelivery {
	d := localDelivery{queues: make([]localQueue, runtime.GOMAXPROCS(0))}
	for i := range d.queues {
		d.queues[i].wake = make(chan struct{}, 1)
	}
	return d
}

// queue returns the queue of the channels of the local shard numbered
// shard.
func (d *localDelivery) queue(shard int) *localQueue {
	return &d.queues[shard%len(d.queues)]
}

// signal wakes q's goroutine after a push to pending.
func (q *localQueue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// run hands q's messages to h until done is closed; messages still queued
// then are dropped with the bus.
func (q *localQueue) run(h func(Message), done <-chan struct{}) {
	var batch []Message
	for {
		select {
		case <-done:
			return
		case <-q.wake:
		}
		for {
			q.mu.Lock()
			batch, q.pending = q.pending, batch[:0]
			q.busy = len(batch) > 0
			q.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			for _, m := range batch {
				h(m)
			}
			clear(batch)
		}
	}
}

// idle reports whether q holds nothing and hands out nothing (for tests).
func (q *localQueue) idle() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.pending) == 0 && !q.busy
}
