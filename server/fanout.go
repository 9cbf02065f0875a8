package server

import (
	"sync"
	"sync/atomic"

	"tether/bus"
)

// fanoutScratch is per-fan-out scratch space: the connections that became
// ready to flush, grouped by flusher so each flusher's lock is taken once.
type fanoutScratch struct {
	ready [][]*conn // indexed by flusher
}

// fanoutJob is one chunk of a large channel's subscribers.
type fanoutJob struct {
	s     *Server
	subs  []*subscription
	m     *bus.Message
	frame []byte
	sync  *fanoutSync
}

// fanoutSync waits for the chunks of one fan-out and sums their deliveries.
type fanoutSync struct {
	wg sync.WaitGroup
	n  atomic.Int64
}

// fanout queues frame to every live subscriber of ch and holds m back for
// recovering ones. Large channels are split across the fan-out workers,
// and fanout waits for them. ch.mu must be held. It returns the number of
// deliveries queued. It runs on the bus's delivery goroutine (see
// bus.Handler), never on an nbio goroutine: a client's publish only queues
// the message in the bus.
func (s *Server) fanout(ch *channel, m bus.Message, frame []byte) int {
	subs := ch.subs
	chunk := s.cfg.FanoutChunk
	if len(subs) <= chunk {
		return s.fanoutChunk(subs, &m, frame)
	}
	fs := s.syncPool.Get().(*fanoutSync)
	for len(subs) > chunk {
		fs.wg.Add(1)
		s.fanoutJobs <- fanoutJob{s: s, subs: subs[:chunk], m: &m, frame: frame, sync: fs}
		subs = subs[chunk:]
	}
	n := s.fanoutChunk(subs, &m, frame)
	fs.wg.Wait()
	n += int(fs.n.Swap(0))
	s.syncPool.Put(fs)
	return n
}

// fanoutChunk queues frame to subs. It returns the deliveries queued.
func (s *Server) fanoutChunk(subs []*subscription, m *bus.Message, frame []byte) int {
	sc := s.scratchPool.Get().(*fanoutScratch)
	n := 0
	for _, sub := range subs {
		switch sub.rec.admit(m) {
		case holdBack, skip:
			continue
		case overflow:
			s.slowConsumer(sub.c)
			continue
		}
		c := sub.c
		if c.enqueue(frame) {
			i := int(c.id % uint64(len(s.flushers))) // c.flusher()'s index
			sc.ready[i] = append(sc.ready[i], c)
		}
		n++
	}
	for i, ready := range sc.ready {
		s.flushers[i].pushAll(ready)
		clear(ready)
		sc.ready[i] = ready[:0]
	}
	s.scratchPool.Put(sc)
	return n
}

func (s *Server) fanoutWorker() {
	for {
		select {
		case <-s.done:
			return
		case j := <-s.fanoutJobs:
			j.sync.n.Add(int64(j.s.fanoutChunk(j.subs, j.m, j.frame)))
			j.sync.wg.Done()
		}
	}
}
