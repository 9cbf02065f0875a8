package ring_test

import (
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"time"

	"tether/ring"
)

// The benchmarks compare the wheel with Go runtime timers on the workload of
// a server with benchEntries connections, each with a heartbeat deadline:
// schedule, move (a ping arrived), cancel (the connection closed), fire.
// Every sub-benchmark "wheel" has a twin "timer" doing the same with
// time.AfterFunc, Reset and Stop.
const (
	benchEntries = 1 << 20
	benchMask    = benchEntries - 1
	benchTick    = 100 * time.Millisecond
	benchSlots   = 512 // one rotation is 51.2s, longer than benchTimeout
	benchTimeout = 30 * time.Second
)

// benchConn stands for a connection: the wheel's entry is embedded in it,
// while a runtime timer is a separate object it points to.
type benchConn struct {
	heartbeat ring.Entry[*benchConn]
	timer     *time.Timer
	expired   int
}

func (c *benchConn) onTimeout() { c.expired++ }

func newBenchConns() []benchConn {
	conns := make([]benchConn, benchEntries)
	for i := range conns {
		conns[i].heartbeat.Value = &conns[i]
	}
	return conns
}

// benchOffsets returns benchEntries deadlines spread uniformly, in a fixed
// pseudo-random order, over [0, span).
func benchOffsets(span time.Duration) []time.Duration {
	rng := rand.New(rand.NewPCG(1, 2))
	offs := make([]time.Duration, benchEntries)
	for i := range offs {
		offs[i] = time.Duration(rng.Int64N(int64(span)))
	}
	return offs
}

// benchShuffle maps the op number i to an entry, visiting all benchEntries
// in a fixed scattered order (an odd multiplier permutes the low bits), so
// that neighbours in the lists are not neighbours in memory.
func benchShuffle(i int) int { return (i * 0x5bd1e995) & benchMask }

// benchStart is the wheel's notion of now in the benchmarks; the wheel never
// reads the clock.
var benchStart = time.Unix(1_700_000_000, 0)

func newBenchWheel() *ring.Wheel[*benchConn] {
	w := ring.New[*benchConn](benchTick, benchSlots)
	w.Advance(benchStart, nil)
	return w
}

// Runtime timers are scheduled an hour or more ahead so that none fires
// during the benchmarks that do not measure firing.
const timerFar = time.Hour

func stopTimers(conns []benchConn) {
	for i := range conns {
		if t := conns[i].timer; t != nil {
			t.Stop()
		}
	}
}

// BenchmarkAdd schedules entries into a wheel (or the runtime's timer heap)
// that grows to benchEntries; then it is emptied, untimed, and refilled.
func BenchmarkAdd(b *testing.B) {
	offs := benchOffsets(benchTimeout)
	b.Run("wheel", func(b *testing.B) {
		conns := newBenchConns()
		w := newBenchWheel()
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			j := i & benchMask
			if j == 0 && i > 0 {
				b.StopTimer()
				for k := range conns {
					w.Remove(&conns[k].heartbeat)
				}
				b.StartTimer()
			}
			w.Add(&conns[j].heartbeat, benchStart.Add(offs[j]))
		}
	})
	b.Run("timer", func(b *testing.B) {
		conns := newBenchConns()
		defer stopTimers(conns)
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			j := i & benchMask
			if j == 0 && i > 0 {
				b.StopTimer()
				stopTimers(conns)
				clear(conns)
				runtime.GC()
				b.StartTimer()
			}
			c := &conns[j]
			c.timer = time.AfterFunc(timerFar+offs[j], c.onTimeout)
		}
	})
}

// BenchmarkReset moves the deadlines of benchEntries scheduled entries, in
// scattered order, as pings from the connections would.
func BenchmarkReset(b *testing.B) {
	offs := benchOffsets(benchTimeout)
	b.Run("wheel", func(b *testing.B) {
		conns := newBenchConns()
		w := newBenchWheel()
		for j := range conns {
			w.Add(&conns[j].heartbeat, benchStart.Add(offs[j]))
		}
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			w.Reset(&conns[benchShuffle(i)].heartbeat, benchStart.Add(offs[i&benchMask]))
		}
	})
	b.Run("timer", func(b *testing.B) {
		conns := newBenchConns()
		defer stopTimers(conns)
		for j := range conns {
			c := &conns[j]
			c.timer = time.AfterFunc(timerFar+offs[j], c.onTimeout)
		}
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			conns[benchShuffle(i)].timer.Reset(timerFar + offs[i&benchMask])
		}
	})
}

// BenchmarkRemove cancels the deadlines of benchEntries scheduled entries,
// in scattered order; once all are cancelled they are scheduled again,
// untimed.
func BenchmarkRemove(b *testing.B) {
	offs := benchOffsets(benchTimeout)
	b.Run("wheel", func(b *testing.B) {
		conns := newBenchConns()
		w := newBenchWheel()
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			j := benchShuffle(i)
			if j == 0 {
				b.StopTimer()
				for k := range conns {
					w.Add(&conns[k].heartbeat, benchStart.Add(offs[k]))
				}
				b.StartTimer()
			}
			w.Remove(&conns[j].heartbeat)
		}
	})
	b.Run("timer", func(b *testing.B) {
		conns := newBenchConns()
		defer stopTimers(conns)
		for j := range conns {
			c := &conns[j]
			c.timer = time.AfterFunc(timerFar, c.onTimeout)
			c.timer.Stop()
		}
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			j := benchShuffle(i)
			if j == 0 {
				b.StopTimer()
				for k := range conns {
					conns[k].timer.Reset(timerFar + offs[k])
				}
				b.StartTimer()
			}
			conns[j].timer.Stop()
		}
	})
}

// BenchmarkFire schedules up to benchEntries entries over the next fireSpan
// and runs them until all have fired; an op is one entry scheduled and
// fired. The wheel is advanced tick by tick in a loop, as fast as it goes;
// the runtime timers fire on their own, each callback in a new goroutine,
// so the timer figure is wall time and includes up to fireSpan of waiting
// per round of benchEntries.
func BenchmarkFire(b *testing.B) {
	const fireSpan = 10 * time.Millisecond
	offs := benchOffsets(fireSpan)
	b.Run("wheel", func(b *testing.B) {
		conns := newBenchConns()
		w := ring.New[*benchConn](100*time.Microsecond, 1024) // fireSpan is 100 ticks
		now := benchStart
		w.Advance(now, nil)
		fire := func(e *ring.Entry[*benchConn]) { e.Value.onTimeout() }
		b.ReportAllocs()
		b.ResetTimer()
		for fired := 0; fired < b.N; {
			n := min(b.N-fired, benchEntries)
			for j := range n {
				w.Add(&conns[j].heartbeat, now.Add(offs[j]))
			}
			for w.Len() > 0 {
				now = now.Add(100 * time.Microsecond)
				fired += w.Advance(now, fire)
			}
		}
	})
	b.Run("timer", func(b *testing.B) {
		conns := newBenchConns()
		var wg sync.WaitGroup
		for j := range conns {
			c := &conns[j]
			c.timer = time.AfterFunc(timerFar, func() {
				c.onTimeout()
				wg.Done()
			})
			c.timer.Stop()
		}
		b.ReportAllocs()
		b.ResetTimer()
		for fired := 0; fired < b.N; {
			n := min(b.N-fired, benchEntries)
			wg.Add(n)
			for j := range n {
				conns[j].timer.Reset(offs[j])
			}
			wg.Wait()
			fired += n
		}
	})
}

// BenchmarkMemory measures the heap retained by benchEntries scheduled
// entries, reported as B/entry: the wheel's entries (embedded in each
// connection, counted here as a slice of them) and its slots, against one
// *time.Timer field per connection, the timer it points to, the callback
// closure and the runtime's timer heap. An op builds all benchEntries.
func BenchmarkMemory(b *testing.B) {
	offs := benchOffsets(benchTimeout)
	conns := newBenchConns() // the connections themselves are not counted
	measure := func(b *testing.B, build func() (keep any, release func())) {
		b.ReportAllocs()
		var perEntry float64
		for range b.N {
			var before, after runtime.MemStats
			runtime.GC()
			runtime.GC()
			runtime.ReadMemStats(&before)
			keep, release := build()
			runtime.GC()
			runtime.ReadMemStats(&after)
			runtime.KeepAlive(keep)
			perEntry = float64(after.HeapAlloc-before.HeapAlloc) / benchEntries
			release()
		}
		b.ReportMetric(perEntry, "B/entry")
	}
	b.Run("wheel", func(b *testing.B) {
		measure(b, func() (any, func()) {
			w := newBenchWheel()
			entries := make([]ring.Entry[*benchConn], benchEntries)
			for j := range entries {
				entries[j].Value = &conns[j]
				w.Add(&entries[j], benchStart.Add(offs[j]))
			}
			return []any{w, entries}, func() {}
		})
	})
	b.Run("timer", func(b *testing.B) {
		measure(b, func() (any, func()) {
			timers := make([]*time.Timer, benchEntries)
			for j := range timers {
				timers[j] = time.AfterFunc(timerFar+offs[j], conns[j].onTimeout)
			}
			return timers, func() {
				for _, t := range timers {
					t.Stop()
				}
				// Stopped timers leave the runtime's heap lazily, when the
				// scheduler looks at it; let it, so that the next
				// measurement does not see them freed.
				time.Sleep(10 * time.Millisecond)
			}
		})
	})
}
