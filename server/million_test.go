package server

import (
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/lesismal/nbio"

	"tether/bus"
	"tether/internal/proto"
	"tether/internal/wsframe"
)

// TestMillionConnections builds the per-connection state of a node holding
// TETHER_MILLION connections (1000000 for the figures in docs/BENCHMARKS.md,
// "1M per node") without sockets, through the code the server runs for a
// real one: initConn and addConn (the upgrade's two steps), subscribe (the
// fast path once the channel is live), the heartbeats' ping phases and
// wheels, the flushers' queues. Each connection also holds a zero
// nbio.Conn, the engine's share. It then measures the live heap per
// connection, a full GC cycle at that size (CPU, pauses), two ping
// intervals of heartbeats in simulated time (every connection pinged twice
// and answering: the heartbeat loop's CPU and the flushers' share of the
// pings, all but the socket write), and subscribe and unsubscribe with the
// index full. Nothing is asserted: the figures are
// logged. It is skipped unless TETHER_MILLION is set:
//
//	TETHER_MILLION=1000000 go test -run TestMillionConnections -v -timeout 30m ./server/
//
// TETHER_MILLION_CHANNELS spreads the connections over that many channels
// (default 1, as tether bench idle does).
func TestMillionConnections(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("TETHER_MILLION"))
	if n <= 0 {
		t.Skip("set TETHER_MILLION=1000000 to run the 1M simulation")
	}
	channels := 1
	if k, _ := strconv.Atoi(os.Getenv("TETHER_MILLION_CHANNELS")); k > 0 {
		channels = k
	}
	s, err := New(Config{Listen: "127.0.0.1:0"}, bus.NewLocal(bus.Config{}), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.bus.Close() })
	name := func(i int) string { return "sim." + strconv.Itoa(i%channels) }

	// Times are CPU times (getrusage), not wall times: on a shared machine
	// a wall clock counts what other processes ran meanwhile. The loops run
	// on this goroutine, locked to its thread, and are timed by the thread's
	// CPU; a GC cycle runs on several threads and is timed by the process's.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	// The state of n connections.
	runtime.GC()
	before := readSim()
	start := threadCPU()
	for i := range n {
		c := &conn{srv: s, nc: new(nbio.Conn)}
		s.initConn(c, nil)
		s.addConn(c)
		s.m.conns.Add(1)
		s.subscribe(c, clientFrame{Op: proto.OpSubscribe, Channel: name(i)})
		if i < channels {
			s.runRecoveries()
			// The channel's first message: later subscribers join live.
			s.onBusMessage(bus.Message{Channel: name(i), Epoch: "sim", Offset: 1, Data: []byte("1")})
		}
		if i%1024 == 0 {
			s.settleFlushers(0)
		}
	}
	s.settleFlushers(0)
	built := threadCPU() - start
	runtime.GC()
	runtime.GC()
	after := readSim()
	perConn := float64(after.live-before.live) / float64(n)
	objs := float64(after.objects-before.objects) / float64(n)
	t.Logf("%d connections on %d channel(s) built in %v (%.2f µs each)", n, channels, built.Round(time.Millisecond), float64(built.Microseconds())/float64(n))
	t.Logf("live heap %.1f MiB → %.1f MiB: %.0f bytes and %.1f objects per connection", mib(before.live), mib(after.live), perConn, objs)

	// A full GC cycle at this size: what one costs, and its pauses
	// (TETHER_MILLION_GC_CYCLES forced cycles, default 5; the pauses are
	// rare events on a shared VM, so a pause figure wants a hundred).
	cycles := 5
	if k, _ := strconv.Atoi(os.Getenv("TETHER_MILLION_GC_CYCLES")); k > 0 {
		cycles = k
	}
	g0 := readSim()
	cpu0 := processCPU()
	wall := time.Now()
	for range cycles {
		runtime.GC()
	}
	gcCPU := (processCPU() - cpu0).Seconds() / float64(cycles)
	g1 := readSim()
	t.Logf("GC cycle at %d connections: %.1f ms of CPU (process CPU; the runtime's own estimate %.1f ms), %.1f ms wall per forced cycle; longest stop-the-world pause %.3f ms, of which stopping the running goroutines %.3f ms (bucket bounds, wall time)",
		n, gcCPU*1e3, (g1.gcCPU-g0.gcCPU)/float64(cycles)*1e3, float64(time.Since(wall).Microseconds())/1e3/float64(cycles),
		maxPauseSince(g1.pauses, g0.pauses)*1e3, maxPauseSince(g1.stopping, g0.stopping)*1e3)
	p, over := pausesOver(g1.pauses, g0.pauses, 1e-3)
	_, half := pausesOver(g1.pauses, g0.pauses, 0.5e-3)
	t.Logf("stop-the-world pauses in %d forced cycles: %d, of which %d at or over 0.5 ms and %d at or over 1 ms (bucket lower bounds)", cycles, p, half, over)

	// Heartbeats over two ping intervals of simulated time, after one that
	// warms up (a connection's first ping allocates its queue): every
	// connection is pinged twice; it answers at once (its lastSeen moves),
	// and the flushers' work is done without a socket write.
	h := s.heartbeats
	now := time.Unix(0, s.clock.Load())
	for t := h.tick; t <= s.cfg.PingInterval; t += h.tick {
		h.advance(now.Add(t))
		s.settleFlushers(now.Add(t).UnixNano())
	}
	now = now.Add(s.cfg.PingInterval)
	span := 2 * s.cfg.PingInterval
	runtime.GC()
	h0 := readSim()
	writes0 := s.m.socketWrites.Get()
	var inWheel, longest, inFlushers time.Duration
	ticks := 0
	for t := h.tick; t <= span; t += h.tick {
		at := now.Add(t)
		t0 := threadCPU()
		h.advance(at)
		d := threadCPU() - t0
		inWheel += d
		longest = max(longest, d)
		ticks++
		inFlushers += s.settleFlushers(at.UnixNano())
	}
	h1 := readSim()
	pings := s.m.socketWrites.Get() - writes0 // settleFlushers counts each flush as one write
	// Every connection is pinged once per interval; fewer means the
	// simulation's flusher step no longer matches the flushers (as when
	// it skipped the reply lane and every conn stayed queued).
	if want := uint64(2 * n); pings < want {
		t.Errorf("%d pings over two intervals for %d connections, want at least %d", pings, n, want)
	}
	t.Logf("heartbeats over %v simulated (%d ticks of %v): %d pings, %.1f ms in the heartbeat loop = %.3f%% of one core (%.0f ns per ping); one pass over every connection (one interval) %.1f ms; longest tick %.2f ms",
		span, ticks, h.tick, pings, float64(inWheel.Microseconds())/1e3, 100*inWheel.Seconds()/span.Seconds(), float64(inWheel.Nanoseconds())/float64(pings),
		float64(inWheel.Microseconds())/1e3/2, float64(longest.Microseconds())/1e3)
	t.Logf("the pings' share of the flushers (taking the conn's lock before and after the write, no write) and the clients' pongs (the message path): %.1f ms = %.3f%% of one core (%.0f ns per ping); heartbeat loop + flushers %.3f%%",
		float64(inFlushers.Microseconds())/1e3, 100*inFlushers.Seconds()/span.Seconds(), float64(inFlushers.Nanoseconds())/float64(pings),
		100*(inWheel+inFlushers).Seconds()/span.Seconds())
	allocRate := float64(h1.allocs-h0.allocs) / span.Seconds()
	gcPercent := 100.0
	// At idle the collector runs when the heap has grown by GOGC percent,
	// or every 2 minutes (the runtime's forced period), whichever is first.
	perSec := max(1.0/120, allocRate/(float64(after.live)*gcPercent/100))
	t.Logf("allocated while idle: %.0f bytes per simulated second; GC cycles at GOGC=100: one per %.0f s; GC CPU at idle (derived) %.4f%% of one core",
		allocRate, 1/perSec, 100*perSec*gcCPU)
	// A ping and its pong allocate nothing: a byte per ping on average
	// would already be a decode or a queue growing somewhere (a pong
	// through encoding/json was 352 bytes per ping).
	if idle := h1.allocs - h0.allocs; idle >= pings {
		t.Errorf("%d bytes allocated over %d pings and their pongs, want none", idle, pings)
	}

	// Subscribe and unsubscribe with the index full.
	ops := min(n, 10000)
	conns := s.conns.snapshot()[:ops]
	names := make([]string, ops)
	for i, c := range conns {
		names[i] = c.subs.ch.name
	}
	t0 := threadCPU()
	for i, c := range conns {
		s.unsubscribe(c, clientFrame{Op: proto.OpUnsubscribe, Channel: names[i]})
	}
	unsub := threadCPU() - t0
	s.settleFlushers(0)
	t0 = threadCPU()
	for i, c := range conns {
		s.subscribe(c, clientFrame{Op: proto.OpSubscribe, Channel: names[i]})
	}
	sub := threadCPU() - t0
	s.settleFlushers(0)
	t.Logf("with %d subscriptions: unsubscribe %.2f µs, subscribe %.2f µs (each with its reply queued)",
		n, float64(unsub.Nanoseconds())/1e3/float64(ops), float64(sub.Nanoseconds())/1e3/float64(ops))
	runtime.KeepAlive(conns)
}

// runRecoveries runs the queued history reads on the calling goroutine, as
// the recovery workers would.
func (s *Server) runRecoveries() {
	for {
		j, ok := s.recoveries.pop()
		if !ok {
			return
		}
		s.recover(j.sub, j.since, j.id)
	}
}

// settleFlushers does the flushers' work as if every socket write
// succeeded at once, through the flusher's own code but for the write:
// each queued connection's frames are dropped, each ping the heartbeats
// asked for is taken (flusher.ping without its write), and both end in
// flusher.written. With pong set, each connection written to answers: its
// lastSeen moves to pong. It returns the CPU time of the pings' share.
func (s *Server) settleFlushers(pong int64) (pingCPU time.Duration) {
	for _, f := range s.flushers {
		// take moves the queue and the reply lane (pushReply) to dst, as
		// the flusher takes them; written may hand a connection back.
		take := func(dst []*conn) []*conn {
			f.mu.Lock()
			defer f.mu.Unlock()
			dst = append(append(dst, f.queue...), f.replies...)
			clear(f.queue)
			clear(f.replies)
			f.queue, f.replies = f.queue[:0], f.replies[:0]
			f.hasReplies.Store(false)
			return dst
		}
		f.mu.Lock()
		pings := f.pings
		f.pings = f.pingWork[:0]
		f.mu.Unlock()
		f.pingWork = pings
		queue := take(f.work[:0])
		t0 := threadCPU()
		for _, c := range pings {
			if c.takePing() {
				s.m.socketWrites.Inc()
				f.written(c, nil, false, nil)
				if pong != 0 {
					simPong(c, pong)
				}
			}
		}
		pingCPU += threadCPU() - t0
		clear(pings)
		for len(queue) > 0 {
			for _, c := range queue {
				bufs := c.takePending()
				s.m.socketWrites.Inc()
				clear(bufs)
				f.written(c, bufs, true, nil)
				if pong != 0 {
					simPong(c, pong)
				}
			}
			clear(queue)
			// written hands back a connection that was queued more
			// meanwhile (a ping joined its frames).
			queue = take(queue[:0])
		}
		f.work = queue[:0]
	}
	return pingCPU
}

// simPongText is a client's answer to a ping, as its frame's payload.
var simPongText = []byte(pongJSON)

// simPong answers a ping for c as its client would: lastSeen moves to at
// (the read path's frame header does that), and the pong message goes
// through the server's message path, so that its cost (and any allocation)
// is the simulation's. The socket read and the unmasking are not counted.
func simPong(c *conn, at int64) {
	c.lastSeen.Store(at)
	_ = c.wsMessage(wsframe.OpText, simPongText)
}

// simSample is what TestMillionConnections reads from the runtime.
type simSample struct {
	live, objects, allocs uint64
	gcCPU                 float64
	pauses, stopping      *metrics.Float64Histogram
}

func readSim() simSample {
	ss := []metrics.Sample{
		{Name: "/gc/heap/live:bytes"},
		{Name: "/gc/heap/objects:objects"},
		{Name: "/gc/heap/allocs:bytes"},
		{Name: "/cpu/classes/gc/total:cpu-seconds"},
		{Name: "/sched/pauses/total/gc:seconds"},
		{Name: "/sched/pauses/stopping/gc:seconds"},
	}
	metrics.Read(ss)
	return simSample{
		live:     ss[0].Value.Uint64(),
		objects:  ss[1].Value.Uint64(),
		allocs:   ss[2].Value.Uint64(),
		gcCPU:    ss[3].Value.Float64(),
		pauses:   ss[4].Value.Float64Histogram(),
		stopping: ss[5].Value.Float64Histogram(),
	}
}

// maxPauseSince returns the upper bound of the highest bucket of h that
// counted a pause after prev (the same histogram read earlier).
func maxPauseSince(h, prev *metrics.Float64Histogram) float64 {
	for i := len(h.Counts) - 1; i >= 0; i-- {
		if h.Counts[i] > prev.Counts[i] {
			return h.Buckets[i+1]
		}
	}
	return 0
}

// pausesOver returns how many pauses h counted after prev, and how many
// of them fell in buckets at or above limit seconds.
func pausesOver(h, prev *metrics.Float64Histogram, limit float64) (total, over uint64) {
	for i, c := range h.Counts {
		d := c - prev.Counts[i]
		total += d
		if h.Buckets[i] >= limit {
			over += d
		}
	}
	return total, over
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// threadCPU returns the CPU time of the calling thread (user and system).
func threadCPU() time.Duration { return rusage(1) } // RUSAGE_THREAD

// processCPU returns the CPU time of the process (user and system).
func processCPU() time.Duration { return rusage(syscall.RUSAGE_SELF) }

func rusage(who int) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
