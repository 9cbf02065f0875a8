package server

import (
	"sync"
	"time"
)

// Samples of the node's load for the admin page's charts: every
// sampleEvery, the deliveries per second since the previous sample and the
// open connections, the last sampleCount of them (6 minutes).
const (
	sampleEvery = 5 * time.Second
	sampleCount = 72
)

// sample is one point of the charts.
type sample struct {
	T          int64   `json:"t"` // unix seconds
	Deliveries float64 `json:"deliveries_per_s"`
	Conns      int64   `json:"conns"`
}

// samples is a ring of the last sampleCount samples.
type samples struct {
	mu        sync.Mutex // guards the fields below
	ring      [sampleCount]sample
	n         int // samples taken
	lastCount uint64
	lastT     time.Time
}

// take records a sample at now from the delivered counter and the
// connection count.
func (r *samples) take(now time.Time, delivered uint64, conns int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var rate float64
	if !r.lastT.IsZero() {
		if dt := now.Sub(r.lastT).Seconds(); dt > 0 {
			rate = float64(delivered-r.lastCount) / dt
		}
	}
	r.ring[r.n%sampleCount] = sample{T: now.Unix(), Deliveries: rate, Conns: conns}
	r.n++
	r.lastCount, r.lastT = delivered, now
}

// snapshot returns the samples, oldest first.
func (r *samples) snapshot() []sample {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := min(r.n, sampleCount)
	out := make([]sample, 0, k)
	for i := r.n - k; i < r.n; i++ {
		out = append(out, r.ring[i%sampleCount])
	}
	return out
}

// sampleLoop samples the node every sampleEvery until the server stops.
func (s *Server) sampleLoop() {
	t := time.NewTicker(sampleEvery)
	defer t.Stop()
	s.samples.take(time.Now(), s.m.delivered.Get(), s.m.conns.Load())
	for {
		select {
		case <-s.done:
			return
		case now := <-t.C:
			s.samples.take(now, s.m.delivered.Get(), s.m.conns.Load())
		}
	}
}
