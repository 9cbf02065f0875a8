package server

import (
	"context"
	"encoding/json"
	"sync"

	"tether/bus"
	"tether/internal/proto"
)

// A subscription's recovery (docs/protocol.md, "Recovery") is the switch
// from reading history to delivering live messages, with no gap and no
// duplicate. Its states:
//
//	recovering  the history read is queued or running; live messages are
//	            held back, at most maxRecoveryBuffer of them (more closes
//	            the connection as a slow consumer)
//	catchingUp  the reply, the missed messages and the held-back ones are
//	            queued; live messages up to the history's top were sent
//	            from history and are skipped
//	live        every live message is delivered
//
// A subscription starts recovering; subscribe moves it to live at once when
// the node already delivers the channel live and the client's position is
// the channel's (joinLive). finish moves it to catchingUp or live; the
// first live message past the history's top ends catchingUp. admit is the
// one place that decides what happens to a live message.
//
// Every subscription embeds a recovery, and once live (nearly all of them,
// nearly all the time) it needs only its state: what the other states need
// is in a recoveryHold allocated when first needed and dropped when the
// subscription goes live, so an idle subscription costs 16 bytes here.
type recovery struct {
	state recoveryState
	x     *recoveryHold // nil when live, and while recovering until a message is held
}

// recoveryHold is what a subscription keeps while it is not live.
type recoveryHold struct {
	held []bus.Message // live messages held back while recovering
	// While catchingUp, live messages up to this position were already
	// sent from history; a bus may still deliver them (with Redis, a
	// message at or below the history's top can be in flight on pub/sub
	// when the history is read).
	skipEpoch string
	skipUpTo  uint64
}

type recoveryState uint8

const (
	recovering recoveryState = iota
	catchingUp
	live
)

// admission is admit's verdict on a live message.
type admission uint8

const (
	deliver  admission = iota // queue it to the connection now
	holdBack                  // held back until the history is sent
	skip                      // already sent from history
	overflow                  // too much held back: close the connection as a slow consumer
)

// maxRecoveryBuffer bounds the live messages one recovering subscription
// holds back while its history is read.
const maxRecoveryBuffer = 4096

// admit decides what happens to the live message m: deliver, hold back or
// skip. ch.mu must be held. It does not allocate unless it holds m back.
func (r *recovery) admit(m *bus.Message) admission {
	switch r.state {
	case recovering:
		if r.x == nil {
			r.x = new(recoveryHold)
		}
		if len(r.x.held) >= maxRecoveryBuffer {
			r.state, r.x = live, nil // stop holding back; the caller closes the conn
			return overflow
		}
		r.x.held = append(r.x.held, *m)
		return holdBack
	case catchingUp:
		if m.Epoch == r.x.skipEpoch && m.Offset <= r.x.skipUpTo {
			return skip // sent from history during recovery
		}
		r.state, r.x = live, nil
	}
	return deliver
}

// joinLive ends recovery before it starts: the node delivers the channel
// live and the client needs nothing from history. ch.mu must be held.
func (r *recovery) joinLive() { r.state, r.x = live, nil }

// finish ends recovery once the reply and the missed messages up to top
// are queued: send is called with each held-back message past top, in
// order, and live messages up to top are skipped while the node's live
// stream (at channelTop) has not reached it. ch.mu must be held.
func (r *recovery) finish(top, channelTop bus.Position, send func(bus.Message)) {
	if r.x != nil {
		for _, m := range r.x.held {
			if m.Epoch == top.Epoch && m.Offset <= top.Offset {
				continue
			}
			send(m)
		}
	}
	r.state, r.x = live, nil
	if top.Offset > 0 && (channelTop.Epoch != top.Epoch || channelTop.Offset < top.Offset) {
		// The node's live stream has not reached the history's top yet.
		r.state, r.x = catchingUp, &recoveryHold{skipEpoch: top.Epoch, skipUpTo: top.Offset}
	}
}

// drop releases what a removed subscription holds back. ch.mu must be held.
func (r *recovery) drop() { r.x = nil }

// recoveryJob is a subscription waiting for its history read.
type recoveryJob struct {
	sub   *subscription
	since *bus.Position
	id    json.RawMessage
}

// recoveryQueue hands subscriptions to a fixed set of workers that read
// history from the bus (a Redis round trip with the Redis bus). A reconnect
// storm queues small jobs instead of parking a goroutine, with its stack,
// per subscribe; nbio's callbacks never wait.
type recoveryQueue struct {
	mu   sync.Mutex
	jobs []recoveryJob
	head int
	wake chan struct{} // capacity = workers
}

func (q *recoveryQueue) push(j recoveryJob) {
	q.mu.Lock()
	q.jobs = append(q.jobs, j)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *recoveryQueue) pop() (recoveryJob, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.head == len(q.jobs) {
		q.jobs, q.head = q.jobs[:0], 0
		if cap(q.jobs) > 1024 {
			q.jobs = nil // a storm's backlog is not kept for the next one
		}
		return recoveryJob{}, false
	}
	j := q.jobs[q.head]
	q.jobs[q.head] = recoveryJob{}
	q.head++
	return j, true
}

func (s *Server) recoveryWorker() {
	for {
		select {
		case <-s.done:
			return
		case <-s.recoveries.wake:
		}
		for {
			j, ok := s.recoveries.pop()
			if !ok {
				break
			}
			s.recover(j.sub, j.since, j.id)
		}
	}
}

// recover reads the channel's position (and the missed messages when since
// is set), then switches the subscription to live delivery: the reply, the
// missed messages and the messages held back meanwhile are queued under
// ch.mu, so nothing is lost or duplicated across the switch.
func (s *Server) recover(sub *subscription, since *bus.Position, id json.RawMessage) {
	// No deadline of its own: the bus bounds each read it makes (Redis:
	// its command timeout, 2 s), and a context per subscribe would be a
	// timer and three objects on the connect path.
	h, err := s.bus.History(context.Background(), sub.ch.name, since)
	c, ch := sub.c, sub.ch
	if err != nil {
		s.log.Debug("cannot read history", "channel", ch.name, "err", err)
		s.dropSub(sub)
		c.replyError(id, errf(proto.CodeUnavailable, "cannot subscribe now, retry later"))
		return
	}
	if since != nil && h.Recovered {
		s.m.recovered.Inc()
	} else if since != nil {
		s.m.notRecovered.Inc()
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.dead || sub.idx < 0 {
		return
	}
	c.send(textFrame(func(b []byte) []byte {
		return appendSubscribed(b, ch.name, h.Top.Offset, h.Top.Epoch, since != nil && h.Recovered, id)
	}))
	for _, m := range h.Messages {
		if m.Offset > since.Offset {
			c.send(messageFrame(m))
		}
	}
	sub.rec.finish(h.Top, bus.Position{Offset: ch.offset, Epoch: ch.epoch}, func(m bus.Message) {
		c.send(messageFrame(m))
	})
}
