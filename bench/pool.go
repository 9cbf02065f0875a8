package bench

import (
	"encoding/base64"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"tether/internal/wsframe"

	"github.com/lesismal/nbio"
)

// This file is a worker's connection pool: many WebSocket client
// connections on one nbio engine (no goroutine per connection), dialed by a
// bounded set of dialer goroutines, with exact per-connection delivery
// accounting.

// Connection states.
const (
	stIdle        uint8 = iota // not connected; maybe queued for a dial
	stDialing                  // TCP dial in progress
	stHandshake                // upgrade request sent, waiting for 101
	stOpen                     // upgraded, waiting for welcome
	stSubscribing              // subscribe sent, waiting for subscribed
	stUp                       // ready: upgraded and (if asked) subscribed
	stDone                     // failed for good or closed after being up
)

// timelineInterval is the width of a delivery timeline bucket.
const timelineInterval = 100 * time.Millisecond

// timelineCap bounds the timeline (about 1.8 hours at 100 ms).
const timelineCap = 1 << 16

// target is one node's WebSocket endpoint.
type target struct {
	addr string // host:port to dial
	req  []byte // the upgrade request, read-only
}

// connState is one client connection. All fields are guarded by mu, except
// idx and p which are immutable after newPool.
type connState struct {
	mu  sync.Mutex
	p   *pool
	idx int32

	c          *nbio.Conn // current connection; nil when none
	gen        uint32     // attempt number, to ignore stale timers
	state      uint8
	attempts   uint8
	holdsSem   bool
	accounted  bool   // was up at least once: counted in delivery figures
	inMsg      bool   // a fragmented message is being reassembled
	in         []byte // unparsed bytes (partial frame)
	msg        []byte // fragmented message so far
	tDial      int64
	tSub       int64
	seen       []uint64 // bitset of received sequence numbers
	dups       uint32
	unexpected uint32
	closeCode  uint16 // close code the server sent, 0 if none

	// Soak mode: the channel position last processed, sent as since on
	// resubscribe, and whether the server said it could not recover.
	pos soakPos
}

// shard holds delivery counters for one poller, to avoid contended cache
// lines. Fields are updated atomically.
type shard struct {
	lat        Hist
	delivered  atomic.Uint64
	dups       atomic.Uint64
	unexpected atomic.Uint64
	last       atomic.Int64
	timeline   []atomic.Uint64
	_          [64]byte
}

// phaseState is the bookkeeping of one connect phase. Guarded by pool.mu
// except the atomics.
type phaseState struct {
	stats    connStats
	deadline time.Time
	pending  int // connections neither up nor failed for good
	done     chan struct{}
	pace     time.Duration // 0: no pacing
	start    time.Time
	ticket   atomic.Int64
	dropIdle bool // drop a connection right before redialing it (churn)
	closed   bool // done is closed (a soak reopens connections after)
}

// pool is a worker's set of connections. cfg through conns' identity are
// immutable after newPool; each connState is guarded by its own mu; the
// shards and counters are atomic; phase and drops are guarded by mu. Lock
// order: connState.mu before pool.mu. Never call into nbio (Write, Close)
// with connState.mu held: nbio calls onClose synchronously.
type pool struct {
	cfg             poolConfig
	eng             *nbio.Engine
	targets         []target
	srcs            []netip.Addr
	accept          string
	timeout         time.Duration
	conns           []connState
	shards          []shard
	t0              atomic.Int64 // timeline origin, unix ns
	queue           chan int32
	sem             chan struct{}
	stop            chan struct{} // closed by close: dialers stop waiting
	dialers         sync.WaitGroup
	upNow           atomic.Int64
	dropped         atomic.Int64
	malformedFrames atomic.Uint64
	pingsAnswered   atomic.Uint64
	errorFrames     atomic.Uint64
	reconnectFrames atomic.Uint64

	mu    sync.Mutex // guards phase and drops
	phase *phaseState
	drops map[string]uint64 // connections lost after being up, by reason

	soak soakState // soak mode only
}

// newPool builds a pool and starts its engine and dialers.
func newPool(cfg poolConfig) (*pool, error) {
	if cfg.Count < 0 || len(cfg.Targets) == 0 {
		return nil, fmt.Errorf("cannot start pool: %w", errBadConfig)
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 256
	}
	if cfg.Pollers <= 0 {
		cfg.Pollers = 1
	}
	if cfg.Path == "" {
		cfg.Path = "/ws"
	}
	if cfg.Channels <= 0 {
		cfg.Channels = 1
	}
	p := &pool{
		cfg:     cfg,
		timeout: time.Duration(cfg.TimeoutNS),
		conns:   make([]connState, cfg.Count),
		queue:   make(chan int32, max(cfg.Count, 1)),
		sem:     make(chan struct{}, cfg.Concurrency),
		stop:    make(chan struct{}),
		shards:  make([]shard, cfg.Pollers),
		drops:   map[string]uint64{},
	}
	p.soak.init()
	if p.timeout <= 0 {
		p.timeout = 10 * time.Second
	}
	var kb [16]byte
	for i := range kb {
		kb[i] = byte(rand.Uint32())
	}
	key := base64.StdEncoding.EncodeToString(kb[:])
	p.accept = wsframe.AcceptKey(key)
	for _, t := range cfg.Targets {
		p.targets = append(p.targets, target{addr: t, req: appendUpgradeRequest(nil, t, cfg.Path, key, cfg.Token)})
	}
	for _, s := range cfg.Srcs {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("cannot parse source address %q: %w", s, err)
		}
		p.srcs = append(p.srcs, a)
	}
	words := (cfg.Messages + 63) / 64
	slab := make([]uint64, words*cfg.Count)
	for i := range p.conns {
		cs := &p.conns[i]
		cs.p = p
		cs.idx = int32(i)
		cs.seen = slab[i*words : (i+1)*words : (i+1)*words]
		cs.pos.lastS = -1
	}
	for i := range p.shards {
		p.shards[i].timeline = make([]atomic.Uint64, timelineCap)
	}
	p.t0.Store(time.Now().UnixNano())

	p.eng = nbio.NewEngine(nbio.Config{
		Name:           "tether-bench",
		NPoller:        cfg.Pollers,
		ReadBufferSize: 64 << 10,
	})
	p.eng.OnData(p.onData)
	p.eng.OnClose(p.onClose)
	if err := p.eng.Start(); err != nil {
		return nil, fmt.Errorf("cannot start client engine: %w", err)
	}
	nd := min(cfg.Concurrency, max(cfg.Count, 1), 512)
	for i := 0; i < nd; i++ {
		p.dialers.Add(1)
		go p.dialLoop()
	}
	return p, nil
}

// close stops the dialers and the engine, closing every connection.
func (p *pool) close() {
	p.stopChurn()
	close(p.stop)
	p.dialers.Wait()
	p.eng.Stop()
}

// startPhase starts connecting every connection not up. With drop set (a
// churn), every connection is dropped first — all at once when rate is 0,
// otherwise each right before it redials, paced at rate per second. The
// returned channel is closed when every connection is up or has given up.
func (p *pool) startPhase(rate float64, drop bool) <-chan struct{} {
	ph := &phaseState{
		deadline: time.Now().Add(time.Duration(p.cfg.PhaseNS)),
		done:     make(chan struct{}),
		start:    time.Now(),
		dropIdle: drop && rate > 0,
	}
	ph.stats.Failures = map[string]int{}
	ph.stats.Handshake = new(Hist)
	ph.stats.Subscribe = new(Hist)
	if p.cfg.PhaseNS <= 0 {
		ph.deadline = time.Now().Add(time.Hour)
	}
	if rate > 0 {
		ph.pace = time.Duration(float64(time.Second) / rate)
	}
	if drop && rate <= 0 {
		for i := range p.conns {
			p.drop(&p.conns[i])
		}
	}
	var todo []int32
	for i := range p.conns {
		cs := &p.conns[i]
		cs.mu.Lock()
		if cs.state == stDone {
			cs.state = stIdle
		}
		if cs.state != stUp || drop {
			cs.attempts = 0
			todo = append(todo, cs.idx)
		}
		cs.mu.Unlock()
	}
	p.mu.Lock()
	ph.stats.Target = len(todo)
	ph.pending = len(todo)
	p.phase = ph
	if ph.pending == 0 {
		ph.closed = true
		close(ph.done)
	}
	p.mu.Unlock()
	for _, i := range todo {
		p.queue <- i
	}
	return ph.done
}

// drop closes cs's connection abruptly (RST) without counting it as a
// failure.
func (p *pool) drop(cs *connState) {
	cs.mu.Lock()
	c := cs.c
	wasUp := cs.state == stUp
	cs.c = nil
	cs.in, cs.msg, cs.inMsg = nil, nil, false
	cs.state = stIdle
	cs.mu.Unlock()
	if wasUp {
		p.upNow.Add(-1)
	}
	if c != nil {
		_ = c.SetLinger(1, 0)
		_ = c.Close()
	}
}

// phaseStats returns a copy of the current phase's figures.
func (p *pool) phaseStats() connStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	ph := p.phase
	if ph == nil {
		return connStats{Failures: map[string]int{}, Handshake: new(Hist), Subscribe: new(Hist)}
	}
	s := ph.stats
	s.Failures = make(map[string]int, len(ph.stats.Failures))
	for k, v := range ph.stats.Failures {
		s.Failures[k] = v
	}
	s.Handshake = ph.stats.Handshake.Clone()
	s.Subscribe = ph.stats.Subscribe.Clone()
	s.Extra = map[string]uint64{
		"bad_frames":       p.malformedFrames.Load(),
		"error_frames":     p.errorFrames.Load(),
		"reconnect_frames": p.reconnectFrames.Load(),
		"pings_answered":   p.pingsAnswered.Load(),
	}
	for k, v := range p.drops {
		s.Extra[k] = v
	}
	return s
}

// progress returns the live figures.
func (p *pool) progress() progressStats {
	var pr progressStats
	pr.Up = int(p.upNow.Load())
	for i := range p.shards {
		pr.Delivered += p.shards[i].delivered.Load()
		pr.Dups += p.shards[i].dups.Load()
	}
	p.mu.Lock()
	if ph := p.phase; ph != nil {
		pr.Failed = ph.stats.Failed
		pr.Refused = ph.stats.Refused
		pr.Pending = ph.pending
		for _, v := range ph.stats.Failures {
			pr.Errors += v
		}
	}
	p.mu.Unlock()
	return pr
}

// deliveries counts the delivery figures exactly from the bitsets.
func (p *pool) deliveries() deliveryStats {
	d := deliveryStats{Messages: p.cfg.Messages, Latency: new(Hist), Dropped: int(p.dropped.Load())}
	for i := range p.conns {
		cs := &p.conns[i]
		cs.mu.Lock()
		if cs.accounted {
			d.Subscribers++
			var got int
			for _, w := range cs.seen {
				got += bits.OnesCount64(w)
			}
			d.Delivered += uint64(got)
			d.Missing += uint64(p.cfg.Messages - got)
			d.Duplicates += uint64(cs.dups)
			d.Unexpected += uint64(cs.unexpected)
		}
		cs.mu.Unlock()
	}
	d.Expected = uint64(d.Subscribers) * uint64(p.cfg.Messages)
	last := 0
	tl := make([]uint64, timelineCap)
	for i := range p.shards {
		sh := &p.shards[i]
		d.Latency.Merge(&sh.lat)
		d.LastDelivery = max(d.LastDelivery, sh.last.Load())
		for j := range sh.timeline {
			if v := sh.timeline[j].Load(); v != 0 {
				tl[j] += v
				last = max(last, j+1)
			}
		}
	}
	d.Timeline = tl[:last]
	return d
}

// endOneLocked counts one connection as settled in ph. p.mu held on entry.
func (p *pool) endOneLocked(ph *phaseState) {
	ph.pending--
	if ph.pending == 0 && !ph.closed {
		ph.closed = true
		close(ph.done)
	}
}

// upLocked marks cs up. cs.mu held on entry.
func (p *pool) upLocked(cs *connState, now int64) {
	cs.state = stUp
	cs.accounted = true
	release := cs.holdsSem
	cs.holdsSem = false
	p.upNow.Add(1)
	p.mu.Lock()
	ph := p.phase
	ph.stats.Up++
	if ph.stats.FirstUp == 0 {
		ph.stats.FirstUp = now
	}
	ph.stats.LastUp = max(ph.stats.LastUp, now)
	p.endOneLocked(ph)
	p.mu.Unlock()
	if release {
		<-p.sem
	}
}
