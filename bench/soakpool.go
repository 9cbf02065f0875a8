package bench

import (
	"math/bits"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"
)

// This file is a pool's soak mode (poolConfig.Soak): connections that go
// away are dialed again (the next node when one is down), a churn loop
// drops connections at a steady rate, every resubscribe carries since with
// the last position processed, and the delivery figures are counted against
// the messages the publisher had acknowledged.

// soakPos is a connection's channel position. Guarded by connState.mu.
type soakPos struct {
	offset    int64
	epoch     string
	known     bool // a subscribed reply was seen: since can be sent
	sentSince bool // the pending subscribe carries since
	// excused is set when the server said it could not recover
	// (recovered:false after since, or resync): the connection's missing
	// messages with sequence numbers strictly between gapLo (the last
	// delivered before the first such word) and gapHi (the first
	// delivered after the last) are counted apart.
	excused      bool
	gapOpen      bool
	lastS        int64 // last sequence number delivered, -1 before any
	gapLo, gapHi int64
}

// excuse opens a loss gap at the last delivered sequence number.
func (sp *soakPos) excuse() {
	if !sp.excused {
		sp.gapLo = sp.lastS
	}
	sp.excused, sp.gapOpen = true, true
}

// delivered notes sequence number s, which closes an open gap.
func (sp *soakPos) delivered(s int64) {
	if sp.gapOpen {
		sp.gapHi, sp.gapOpen = s, false
	}
	sp.lastS = s
}

// inGap reports whether a message with sequence number s may have been
// lost where the server said so.
func (sp *soakPos) inGap(s int64) bool {
	return sp.excused && s > sp.gapLo && (sp.gapOpen || s < sp.gapHi)
}

// subscribe returns the subscribe frame for ch, with since when the
// position is known.
func (sp *soakPos) subscribe(ch string) string {
	sp.sentSince = sp.known
	if !sp.known {
		return `{"op":"subscribe","channel":"` + ch + `"}`
	}
	return `{"op":"subscribe","channel":"` + ch + `","since":{"offset":` +
		strconv.FormatInt(sp.offset, 10) + `,"epoch":` + strconv.Quote(sp.epoch) + `}}`
}

// setEpoch stores e, allocating only when it changed.
func (sp *soakPos) setEpoch(e []byte) {
	if string(e) != sp.epoch {
		sp.epoch = string(e)
	}
}

// soakState is a pool's soak bookkeeping.
type soakState struct {
	mu           sync.Mutex // guards the fields below
	churnStop    chan struct{}
	churnDone    chan struct{}
	churned      uint64
	recovered    uint64           // subscribes with since answered recovered:true
	notRecovered uint64           // … answered recovered:false
	resyncs      uint64           // resync frames
	lossAt       map[int64]uint64 // recovered:false and resync events by unix second
}

func (s *soakState) init() { s.lossAt = map[int64]uint64{} }

// subscribedLocked records a subscribed reply in soak mode. cs.mu held on
// entry.
func (p *pool) subscribedLocked(cs *connState, fi frameInfo, now int64) {
	sp := &cs.pos
	if sp.sentSince && !fi.recovered {
		sp.excuse()
		p.soakEvent(now, &p.soak.notRecovered)
	} else if sp.sentSince {
		p.soakEvent(0, &p.soak.recovered)
	}
	if !sp.sentSince || !fi.recovered {
		// Live messages continue after the reply's position; with
		// recovered:true the replayed messages advance it instead.
		sp.offset = fi.offset
	}
	sp.setEpoch(fi.epoch)
	sp.known, sp.sentSince = true, false
}

// resyncLocked records a resync frame. cs.mu held on entry.
func (p *pool) resyncLocked(cs *connState, fi frameInfo, now int64) {
	cs.pos.excuse()
	cs.pos.offset = fi.offset
	cs.pos.setEpoch(fi.epoch)
	p.soakEvent(now, &p.soak.resyncs)
}

// soakEvent adds one to *n and, when at is not zero, to the loss timeline.
func (p *pool) soakEvent(at int64, n *uint64) {
	p.soak.mu.Lock()
	*n++
	if at != 0 {
		p.soak.lossAt[at/int64(time.Second)]++
	}
	p.soak.mu.Unlock()
}

// requeue queues cs for a new dial after delay, as part of the current
// phase.
func (p *pool) requeue(cs *connState, delay time.Duration) {
	cs.mu.Lock()
	cs.attempts = 0
	cs.mu.Unlock()
	p.mu.Lock()
	p.phase.pending++
	p.phase.stats.Target++
	p.mu.Unlock()
	time.AfterFunc(delay, func() {
		select {
		case p.queue <- cs.idx:
		case <-p.stop:
		}
	})
}

// startChurn drops a random connection that is up and dials it again, rate
// times per second, until stopChurn.
func (p *pool) startChurn(rate float64) {
	p.soak.mu.Lock()
	defer p.soak.mu.Unlock()
	if p.soak.churnStop != nil || rate <= 0 || len(p.conns) == 0 {
		return
	}
	stop, done := make(chan struct{}), make(chan struct{})
	p.soak.churnStop, p.soak.churnDone = stop, done
	go func() {
		defer close(done)
		pace := time.Duration(float64(time.Second) / rate)
		next := time.Now()
		for {
			next = next.Add(pace)
			select {
			case <-stop:
				return
			case <-time.After(time.Until(next)):
			}
			for try := 0; try < 8; try++ {
				cs := &p.conns[rand.IntN(len(p.conns))]
				cs.mu.Lock()
				up := cs.state == stUp
				cs.mu.Unlock()
				if up {
					p.drop(cs)
					p.requeue(cs, 0)
					p.soakEvent(0, &p.soak.churned)
					break
				}
			}
		}
	}()
}

// stopChurn ends the churn loop, if any, and waits for it.
func (p *pool) stopChurn() {
	p.soak.mu.Lock()
	stop, done := p.soak.churnStop, p.soak.churnDone
	p.soak.churnStop = nil
	p.soak.mu.Unlock()
	if stop != nil {
		close(stop)
		<-done
	}
}

// soakStats are a pool's soak figures, merged by the coordinator.
type soakStats struct {
	Churned      uint64           `json:"churned"`
	Recovered    uint64           `json:"recovered"`
	NotRecovered uint64           `json:"not_recovered"`
	Resyncs      uint64           `json:"resyncs"`
	LossAt       map[int64]uint64 `json:"loss_at"` // unix second → events
	// Acked is how many (subscriber, acknowledged message) pairs were
	// expected; Missing of them never arrived on connections never told of
	// a loss, Excused on connections that were (recovered:false, resync).
	Acked          uint64 `json:"acked"`
	Missing        uint64 `json:"missing"`
	Excused        uint64 `json:"excused"`
	ExcusedConns   int    `json:"excused_conns"`
	UnackedArrived uint64 `json:"unacked_arrived"` // deliveries of messages whose publish failed
	Duplicates     uint64 `json:"duplicates"`
	Unexpected     uint64 `json:"unexpected"`
}

// soakDeliveries counts every connection's deliveries against acked, the
// bitset of acknowledged publishes: message j went to channel j%Channels
// with sequence number j/Channels.
func (p *pool) soakDeliveries(acked []uint64) soakStats {
	isAcked := func(j int) bool { return j>>6 < len(acked) && acked[j>>6]&(1<<(j&63)) != 0 }
	var st soakStats
	for i := range p.conns {
		cs := &p.conns[i]
		ch := (p.cfg.First + i) % p.cfg.Channels
		cs.mu.Lock()
		if cs.accounted {
			for s := 0; s < p.cfg.Messages; s++ {
				got := cs.seen[s>>6]&(1<<(s&63)) != 0
				acked := isAcked(s*p.cfg.Channels + ch)
				switch {
				case acked && !got && cs.pos.inGap(int64(s)):
					st.Acked++
					st.Excused++
				case acked:
					st.Acked++
					if !got {
						st.Missing++
					}
				case got:
					st.UnackedArrived++
				}
			}
			if cs.pos.excused {
				st.ExcusedConns++
			}
			st.Duplicates += uint64(cs.dups)
			st.Unexpected += uint64(cs.unexpected)
		}
		cs.mu.Unlock()
	}
	p.soak.mu.Lock()
	st.Churned, st.Recovered, st.NotRecovered, st.Resyncs = p.soak.churned, p.soak.recovered, p.soak.notRecovered, p.soak.resyncs
	st.LossAt = make(map[int64]uint64, len(p.soak.lossAt))
	for k, v := range p.soak.lossAt {
		st.LossAt[k] = v
	}
	p.soak.mu.Unlock()
	return st
}

// mergeSoak adds s to dst.
func mergeSoak(dst *soakStats, s *soakStats) {
	if s == nil {
		return
	}
	dst.Churned += s.Churned
	dst.Recovered += s.Recovered
	dst.NotRecovered += s.NotRecovered
	dst.Resyncs += s.Resyncs
	if dst.LossAt == nil {
		dst.LossAt = map[int64]uint64{}
	}
	for k, v := range s.LossAt {
		dst.LossAt[k] += v
	}
	dst.Acked += s.Acked
	dst.Missing += s.Missing
	dst.Excused += s.Excused
	dst.ExcusedConns += s.ExcusedConns
	dst.UnackedArrived += s.UnackedArrived
	dst.Duplicates += s.Duplicates
	dst.Unexpected += s.Unexpected
}

// ackedBits is a concurrent bitset of acknowledged publishes.
type ackedBits struct {
	mu   sync.Mutex
	bits []uint64
}

func newAckedBits(n int) *ackedBits { return &ackedBits{bits: make([]uint64, (n+63)/64)} }

// set marks messages first..first+count-1 acknowledged.
func (a *ackedBits) set(first, count int) {
	a.mu.Lock()
	for j := first; j < first+count; j++ {
		a.bits[j>>6] |= 1 << (j & 63)
	}
	a.mu.Unlock()
}

// snapshot returns a copy and the number of bits set.
func (a *ackedBits) snapshot() ([]uint64, int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, w := range a.bits {
		n += bits.OnesCount64(w)
	}
	return append([]uint64(nil), a.bits...), n
}
