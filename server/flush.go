package server

import (
	"errors"
	"sync"

	"github.com/lesismal/nbio"
)

// maxCoalesce bounds the bytes one flush copies into a single write.
const maxCoalesce = 256 << 10

// flusher writes queued frames to connections. A connection with frames
// queued sits in exactly one flusher's queue (conn.queued); whatever queues
// up meanwhile goes out in the same write, so under load deliveries per
// write grow instead of syscalls per message.
type flusher struct {
	srv *Server // immutable
	idx int     // immutable: position in Server.flushers

	mu     sync.Mutex // guards queue and closed
	queue  []*conn
	closed bool

	wake chan struct{} // capacity 1

	// owned by the flusher goroutine
	work []*conn
	buf  []byte
}

func (f *flusher) push(c *conn) {
	f.mu.Lock()
	f.queue = append(f.queue, c)
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// pushAll queues a batch of connections with one lock round.
func (f *flusher) pushAll(cs []*conn) {
	if len(cs) == 0 {
		return
	}
	f.mu.Lock()
	f.queue = append(f.queue, cs...)
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

func (f *flusher) run(done <-chan struct{}) {
	for {
		select {
		case <-done:
			return
		case <-f.wake:
		}
		for {
			f.mu.Lock()
			f.work, f.queue = f.queue, f.work[:0]
			f.mu.Unlock()
			if len(f.work) == 0 {
				break
			}
			for i, c := range f.work {
				f.flush(c)
				f.work[i] = nil
			}
		}
		if cap(f.buf) > 4*maxCoalesce {
			f.buf = nil
		}
	}
}

// flush writes everything queued for c. If more was queued during the
// write, c goes to the back of the queue (fairness between connections).
func (f *flusher) flush(c *conn) {
	c.mu.Lock()
	bufs := c.pending
	c.pending = c.spare[:0]
	c.spare = nil
	c.pendingBytes = 0
	c.mu.Unlock()

	var err error
	for i := 0; i < len(bufs) && err == nil; {
		f.srv.m.socketWrites.Inc()
		if i == len(bufs)-1 || len(bufs[i]) >= maxCoalesce {
			_, err = c.write(bufs[i])
			i++
			continue
		}
		b := f.buf[:0]
		for j := i; i < len(bufs) && (i == j || len(b)+len(bufs[i]) <= maxCoalesce); i++ {
			b = append(b, bufs[i]...)
		}
		f.buf = b
		_, err = c.write(b)
		f.srv.m.coalescedWrites.Inc()
	}
	clear(bufs)
	if err != nil {
		if errors.Is(err, nbio.ErrOverflow) {
			c.srv.slowConsumer(c)
		}
		c.mu.Lock()
		c.pending = c.pending[:0]
		c.pendingBytes = 0
		c.queued = false
		c.mu.Unlock()
		return
	}
	c.mu.Lock()
	c.spare = bufs[:0]
	if len(c.pending) > 0 {
		c.mu.Unlock()
		f.push(c)
		return
	}
	c.queued = false
	closeNow := c.closeAfterFlush
	c.mu.Unlock()
	if closeNow {
		_ = c.nc.Close()
	}
}
