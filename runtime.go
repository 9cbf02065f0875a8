package main

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"time"

	vm "github.com/VictoriaMetrics/metrics"
)

// The Go runtime's settings for a node: the density mode (--memory-limit,
// --gc-percent) and the profiling listener (--pprof-listen).
//
// GC policy (docs/operations.md, "Memory"): by default the collector runs
// when the heap has grown by GOGC percent (100) over what the last cycle
// found live, so a node's RSS settles near twice its live heap. An idle
// node allocates almost nothing (pings and the heartbeat wheel allocate
// nothing), so that headroom is never used while the node is idle and
// costs memory only. --gc-percent lowers it (25: the heap may grow 25%
// over the live heap between cycles); --memory-limit is the soft ceiling
// of debug.SetMemoryLimit: the collector runs earlier, whatever GOGC
// says, to keep the process's Go memory under it, and the scavenger gives
// freed pages back to the kernel to stay under it. A limit under what the
// live heap needs makes the collector run back to back; the runtime caps
// that at about half the CPU, so set the limit with room over the live
// heap (the 1M arithmetic in docs/BENCHMARKS.md).

// Memory after a peak: the runtime's scavenger returns freed pages to the
// kernel only down to about the current heap goal, and an idle node's goal
// moves only when the collector runs (at least every two minutes). A node
// that held a peak for a while (a peer's drained clients, a reconnect
// storm) therefore keeps the RSS of the peak long after the connections
// left. --memory-release checks the heap's free, unreturned pages every
// --memory-release/12 and, when their minimum over the last
// --memory-release stayed above an eighth of the heap in use (and above
// 1 MiB), returns them with debug.FreeOSMemory: that memory was not used
// for a whole period, so returning it costs nothing but the collection
// FreeOSMemory forces (one GC cycle, concurrent with the node's work).
// On a node that collected during the period only the free pages beyond
// what the heap grows into before its goal count (releasePeriod).

// runtimeOptions are the flags of this file.
type runtimeOptions struct {
	memoryLimit   byteSize
	gcPercent     int
	pprofListen   string
	memoryRelease time.Duration
}

// releaseMinFree is the least free memory worth a forced collection.
const releaseMinFree = 1 << 20

// startRelease runs the --memory-release policy (0: every 30 s; negative:
// never) on a goroutine of its own until done is closed.
func (r *runtimeOptions) startRelease(set *vm.Set, log *slog.Logger, done <-chan struct{}) {
	every := r.memoryRelease
	if every == 0 {
		every = 30 * time.Second
	}
	if every > 0 {
		go releaseMemory(every, set, log, done)
	}
}

// releaseMemory runs the --memory-release policy until done is closed.
func releaseMemory(every time.Duration, set *vm.Set, log *slog.Logger, done <-chan struct{}) {
	released := set.GetOrCreateCounter("tether_memory_released_bytes_total")
	releases := set.GetOrCreateCounter("tether_memory_releases_total")
	const checks = 12
	t := time.NewTicker(every / checks)
	defer t.Stop()
	var p releasePeriod
	p.reset(readHeap())
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		h := readHeap()
		p.add(h)
		if p.n < checks {
			continue
		}
		if p.release(h) {
			debug.FreeOSMemory()
			after := readHeap()
			back := h.free - min(h.free, after.free)
			released.Add(int(back))
			releases.Inc()
			log.Debug("returned unused heap memory to the kernel", "bytes", back, "heap_in_use", h.inUse)
			h = after // the next period starts after the collection it forced
		}
		p.reset(h)
	}
}

// heapReading is what the --memory-release policy reads of the heap.
type heapReading struct {
	free   uint64 // free pages not yet returned to the kernel
	inUse  uint64 // pages of spans in use: objects and the free space in their spans
	goal   uint64 // the heap size at which the next collection ends
	cycles uint64 // collections completed so far
}

func readHeap() heapReading {
	s := []metrics.Sample{
		{Name: "/memory/classes/heap/free:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
		{Name: "/gc/heap/goal:bytes"},
		{Name: "/gc/cycles/total:gc-cycles"},
	}
	metrics.Read(s)
	return heapReading{
		free:   s[0].Value.Uint64(),
		inUse:  s[1].Value.Uint64() + s[2].Value.Uint64(),
		goal:   s[3].Value.Uint64(),
		cycles: s[4].Value.Uint64(),
	}
}

// releasePeriod is one --memory-release period's readings.
//
// A node that is idle after a peak does not collect (at most every two
// minutes), so its goal stays where the peak left it and the runtime keeps
// the free pages up to it for a growth that does not come: the policy
// returns them when they stayed free for the whole period. A busy node
// collects often and grows into its free pages between collections; it
// gets back, page by page, what a release returned, so releasing there
// only makes RSS saw up and down. When a collection completed during the
// period, the policy counts as spare only the free pages beyond what the
// heap needs to reach its goal, and returns them when they stayed over an
// eighth of the goal all period (after a peak, once the goal has fallen).
type releasePeriod struct {
	n         int
	cycles    uint64 // collections completed when the period began
	minFree   uint64
	minExcess int64 // free pages beyond the goal's growth
}

func (p *releasePeriod) reset(h heapReading) {
	*p = releasePeriod{cycles: h.cycles, minFree: math.MaxUint64, minExcess: math.MaxInt64}
}

func (p *releasePeriod) add(h heapReading) {
	p.n++
	p.minFree = min(p.minFree, h.free)
	growth := int64(h.goal) - int64(h.inUse)
	p.minExcess = min(p.minExcess, int64(h.free)-max(0, growth))
}

// release reports whether the period's free pages are to be returned; h
// is its last reading.
func (p *releasePeriod) release(h heapReading) bool {
	if p.minFree <= releaseMinFree || p.minFree <= h.inUse/8 {
		return false
	}
	if h.cycles == p.cycles {
		return true // idle: no collection, the free pages were not used
	}
	return p.minExcess > int64(h.goal/8)
}

// byteSize is a flag value in bytes with an optional unit suffix: KiB,
// MiB, GiB, TiB (powers of 1024), or none.
type byteSize int64

func (b *byteSize) String() string {
	if *b == 0 {
		return "0"
	}
	return strconv.FormatInt(int64(*b), 10)
}

func (b *byteSize) Set(s string) error {
	n, err := parseByteSize(s)
	if err != nil {
		return err
	}
	*b = byteSize(n)
	return nil
}

// parseByteSize parses "512MiB", "2GiB", "1048576"; units are powers of
// 1024, spelled as GOMEMLIMIT spells them.
func parseByteSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, errors.New("want a byte count such as 1073741824, 512MiB or 2GiB")
	}
	return n * mult, nil
}

// apply sets the collector's knobs. A zero memory limit and a zero GC
// percent leave the runtime's own settings (GOMEMLIMIT, GOGC) alone.
func (r *runtimeOptions) apply(log *slog.Logger) {
	if r.gcPercent != 0 {
		debug.SetGCPercent(r.gcPercent)
	}
	if r.memoryLimit > 0 {
		debug.SetMemoryLimit(int64(r.memoryLimit))
	}
	if r.gcPercent != 0 || r.memoryLimit > 0 {
		gc := debug.SetGCPercent(100)
		debug.SetGCPercent(gc)
		log.Info("go runtime memory settings", "gc_percent", gc, "memory_limit", debug.SetMemoryLimit(-1))
	}
}

// servePprof serves net/http/pprof on addr until the process exits. It is
// a separate listener so that profiles are never reachable through the
// public one. It returns once the listener is bound.
func servePprof(addr string, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("cannot listen on --pprof-listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("pprof listener stopped", "err", err)
		}
	}()
	log.Info("pprof listening", "addr", ln.Addr().String())
	return nil
}
