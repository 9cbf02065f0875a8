package bench

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"math/rand/v2"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

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

// poolConfig is what a pool needs; it comes from the coordinator.
type poolConfig struct {
	Targets     []string `json:"targets"` // host:port of each node
	Path        string   `json:"path"`    // WebSocket path, "/ws"
	Token       string   `json:"token,omitempty"`
	Srcs        []string `json:"srcs,omitempty"` // source IPs, shared by all workers
	First       int      `json:"first"`          // global index of this pool's first connection
	Count       int      `json:"count"`
	Channels    int      `json:"channels"`
	ChanPrefix  string   `json:"chan_prefix"`
	Subscribe   bool     `json:"subscribe"`
	Messages    int      `json:"messages"`    // sequence numbers 0..Messages-1 are expected
	Concurrency int      `json:"concurrency"` // in-flight handshakes
	Retries     int      `json:"retries"`     // extra attempts per connection per phase
	TimeoutNS   int64    `json:"timeout_ns"`  // per attempt
	PhaseNS     int64    `json:"phase_ns"`    // a phase stops retrying after this
	Pollers     int      `json:"pollers"`
}

// connStats are the connection figures of one phase (connect, or the
// reconnect of a churn). Merged by the coordinator.
type connStats struct {
	Target    int               `json:"target"`
	Up        int               `json:"up"`     // connections that got up in this phase
	Failed    int               `json:"failed"` // connections that gave up in this phase
	Attempts  int               `json:"attempts"`
	Refused   int               `json:"refused"` // attempts answered 503
	Failures  map[string]int    `json:"failures"`
	Handshake *Hist             `json:"handshake"` // dial start to 101, ns
	Subscribe *Hist             `json:"subscribe"` // subscribe sent to subscribed, ns
	FirstUp   int64             `json:"first_up"`  // unix ns
	LastUp    int64             `json:"last_up"`   // unix ns
	Extra     map[string]uint64 `json:"extra,omitempty"`
}

// delivStats are the delivery figures of a pool.
type delivStats struct {
	Subscribers  int      `json:"subscribers"` // connections counted (were up at least once)
	Messages     int      `json:"messages"`
	Expected     uint64   `json:"expected"`
	Delivered    uint64   `json:"delivered"` // unique (connection, sequence) pairs
	Missing      uint64   `json:"missing"`
	Duplicates   uint64   `json:"duplicates"`
	Unexpected   uint64   `json:"unexpected"`    // sequence out of range or payload without t/s
	Latency      *Hist    `json:"latency"`       // ns, one value per unique delivery
	Timeline     []uint64 `json:"timeline"`      // unique deliveries per timelineInterval since t0
	LastDelivery int64    `json:"last_delivery"` // unix ns
	Dropped      int      `json:"dropped"`       // connections closed by the server or network after up
}

// progressStats is a worker's live state, sent several times a second.
type progressStats struct {
	Up        int    `json:"up"`
	Failed    int    `json:"failed"`
	Refused   int    `json:"refused"`
	Errors    int    `json:"errors"` // failed attempts of this phase
	Delivered uint64 `json:"delivered"`
	Dups      uint64 `json:"dups"`
	Pending   int    `json:"pending"`
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
}

// shard holds delivery counters for one poller, to avoid contended cache
// lines. Fields are updated atomically.
type shard struct {
	lat       Hist
	delivered atomic.Uint64
	dups      atomic.Uint64
	unexp     atomic.Uint64
	last      atomic.Int64
	timeline  []atomic.Uint64
	_         [64]byte
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
}

// pool is a worker's set of connections. cfg through conns' identity are
// immutable after newPool; each connState is guarded by its own mu; the
// shards and counters are atomic; phase and drops are guarded by mu. Lock
// order: connState.mu before pool.mu. Never call into nbio (Write, Close)
// with connState.mu held: nbio calls onClose synchronously.
type pool struct {
	cfg     poolConfig
	eng     *nbio.Engine
	targets []target
	srcs    []netip.Addr
	accept  string
	timeout time.Duration
	conns   []connState
	shards  []shard
	t0      atomic.Int64 // timeline origin, unix ns
	queue   chan int32
	sem     chan struct{}
	stop    chan struct{} // closed by close: dialers stop waiting
	dialers sync.WaitGroup
	upNow   atomic.Int64
	dropped atomic.Int64
	badFrm  atomic.Uint64
	pings   atomic.Uint64
	errFrm  atomic.Uint64
	recon   atomic.Uint64

	mu    sync.Mutex // guards phase and drops
	phase *phaseState
	drops map[string]uint64 // connections lost after being up, by reason
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
	if p.timeout <= 0 {
		p.timeout = 10 * time.Second
	}
	var kb [16]byte
	for i := range kb {
		kb[i] = byte(rand.Uint32())
	}
	key := base64.StdEncoding.EncodeToString(kb[:])
	p.accept = wsAccept(key)
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
		"bad_frames":       p.badFrm.Load(),
		"error_frames":     p.errFrm.Load(),
		"reconnect_frames": p.recon.Load(),
		"pings_answered":   p.pings.Load(),
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
func (p *pool) deliveries() delivStats {
	d := delivStats{Messages: p.cfg.Messages, Latency: new(Hist), Dropped: int(p.dropped.Load())}
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

// dialLoop dials queued connections until the pool is closed.
func (p *pool) dialLoop() {
	defer p.dialers.Done()
	for {
		var idx int32
		select {
		case idx = <-p.queue:
		case <-p.stop:
			return
		}
		select {
		case p.sem <- struct{}{}:
		case <-p.stop:
			return
		}
		p.mu.Lock()
		ph := p.phase
		p.mu.Unlock()
		if ph.pace > 0 {
			n := ph.ticket.Add(1) - 1
			if d := time.Until(ph.start.Add(time.Duration(n) * ph.pace)); d > 0 {
				select {
				case <-time.After(d):
				case <-p.stop:
					return
				}
			}
		}
		cs := &p.conns[idx]
		if ph.dropIdle {
			p.drop(cs)
		}
		p.dial(cs, ph)
	}
}

// dial makes one attempt for cs. The caller holds a semaphore slot, which
// the attempt releases when it ends.
func (p *pool) dial(cs *connState, ph *phaseState) {
	gi := p.cfg.First + int(cs.idx)
	tg := &p.targets[gi%len(p.targets)]
	cs.mu.Lock()
	if cs.state != stIdle {
		cs.mu.Unlock()
		<-p.sem
		return
	}
	cs.gen++
	gen := cs.gen
	cs.state = stDialing
	cs.holdsSem = true
	if cs.attempts < 255 {
		cs.attempts++
	}
	cs.tDial = time.Now().UnixNano()
	cs.mu.Unlock()
	p.mu.Lock()
	ph.stats.Attempts++
	p.mu.Unlock()

	d := net.Dialer{Timeout: p.timeout, Control: bindNoPort}
	if len(p.srcs) > 0 {
		d.LocalAddr = &net.TCPAddr{IP: p.srcs[gi%len(p.srcs)].AsSlice()}
	}
	nc, err := d.Dial("tcp", tg.addr)
	if err != nil {
		p.fail(cs, gen, dialReason(err), -1, nil)
		return
	}
	c, err := p.eng.AddConn(nc)
	if err != nil {
		p.fail(cs, gen, "nbio_add", -1, nil)
		return
	}
	cs.mu.Lock()
	if cs.gen != gen || cs.state != stDialing {
		cs.mu.Unlock()
		_ = c.Close()
		return
	}
	cs.c = c
	cs.state = stHandshake
	c.SetSession(cs)
	cs.mu.Unlock()
	time.AfterFunc(p.timeout, func() { p.attemptTimeout(cs, gen) })
	if _, err := c.Write(tg.req); err != nil {
		p.fail(cs, gen, "write", -1, c)
	}
}

// attemptTimeout fails attempt gen of cs if it has not got up yet.
func (p *pool) attemptTimeout(cs *connState, gen uint32) {
	p.fail(cs, gen, "timeout", -1, nil)
}

// fail ends attempt gen of cs with reason and retries it when allowed.
// retryAfter is the server's Retry-After in seconds, or -1. c, if not nil,
// is closed.
func (p *pool) fail(cs *connState, gen uint32, reason string, retryAfter int, c *nbio.Conn) {
	cs.mu.Lock()
	if cs.gen != gen || cs.state == stUp || cs.state == stIdle || cs.state == stDone {
		cs.mu.Unlock()
		return
	}
	if c == nil {
		c = cs.c
	}
	cs.c = nil
	cs.in, cs.msg, cs.inMsg = nil, nil, false
	release := cs.holdsSem
	cs.holdsSem = false
	attempts := int(cs.attempts)
	p.mu.Lock()
	ph := p.phase
	ph.stats.Failures[reason]++
	if reason == "http_503" {
		ph.stats.Refused++
	}
	// Client errors (401, 403, 400…) will not change on retry.
	retry := !strings.HasPrefix(reason, "http_4") && attempts <= p.cfg.Retries && time.Now().Before(ph.deadline)
	if retry {
		cs.state = stIdle
	} else {
		cs.state = stDone
		ph.stats.Failed++
		p.endOneLocked(ph)
	}
	p.mu.Unlock()
	cs.mu.Unlock()
	if release {
		<-p.sem
	}
	if c != nil {
		_ = c.SetLinger(1, 0)
		_ = c.Close()
	}
	if retry {
		time.AfterFunc(retryDelay(retryAfter, attempts), func() {
			select {
			case p.queue <- cs.idx:
			case <-p.stop:
			}
		})
	}
}

// retryDelay honours Retry-After (seconds) with up to 50% jitter on top, so
// refused clients do not return together; otherwise it backs off
// exponentially from 50 ms with full jitter, capped at 5 s.
func retryDelay(retryAfter, attempts int) time.Duration {
	if retryAfter >= 0 {
		base := time.Duration(max(retryAfter, 1)) * time.Second
		return base + time.Duration(rand.Int64N(int64(base/2)+1))
	}
	ceil := min(50*time.Millisecond<<min(attempts, 10), 5*time.Second)
	return time.Duration(rand.Int64N(int64(ceil))) + time.Millisecond
}

// endOneLocked counts one connection as settled in ph. p.mu held on entry.
func (p *pool) endOneLocked(ph *phaseState) {
	ph.pending--
	if ph.pending == 0 {
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

// dialReason names a dial error for the failure table.
func dialReason(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "conn_refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "conn_reset"
	case errors.Is(err, syscall.EADDRNOTAVAIL), errors.Is(err, syscall.EADDRINUSE):
		return "no_local_port"
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return "too_many_files"
	case errors.As(err, &ne) && ne.Timeout():
		return "dial_timeout"
	}
	return "dial_error"
}

// onClose handles a connection closed by the peer, the network or us.
func (p *pool) onClose(c *nbio.Conn, err error) {
	cs, _ := c.Session().(*connState)
	if cs == nil {
		return
	}
	cs.mu.Lock()
	if cs.c != c {
		cs.mu.Unlock()
		return
	}
	switch cs.state {
	case stUp:
		cs.c = nil
		cs.state = stDone
		reason := closeReason(cs.closeCode, err)
		cs.mu.Unlock()
		p.upNow.Add(-1)
		p.dropped.Add(1)
		p.mu.Lock()
		p.drops[reason]++
		p.mu.Unlock()
		return
	case stHandshake, stOpen, stSubscribing:
		gen := cs.gen
		cs.mu.Unlock()
		p.fail(cs, gen, "closed_early", -1, nil)
		return
	}
	cs.mu.Unlock()
}

// closeReason names why a connection that was up went away.
func closeReason(code uint16, err error) string {
	switch {
	case code != 0:
		return "dropped_close_" + strconv.Itoa(int(code))
	case err == nil || errors.Is(err, io.EOF):
		return "dropped_eof"
	case errors.Is(err, syscall.ECONNRESET):
		return "dropped_reset"
	case errors.Is(err, syscall.ETIMEDOUT):
		return "dropped_timeout"
	}
	return "dropped_error"
}

// onData handles bytes from a connection. It runs on a poller goroutine.
func (p *pool) onData(c *nbio.Conn, data []byte) {
	cs, _ := c.Session().(*connState)
	if cs == nil {
		return
	}
	sh := &p.shards[c.Hash()%len(p.shards)]
	now := time.Now().UnixNano()
	cs.mu.Lock()
	if cs.c != c {
		cs.mu.Unlock()
		return
	}
	fr := failure{retryAfter: -1}
	n := p.processLocked(cs, sh, data, now, &fr)
	gen := cs.gen
	cs.mu.Unlock()
	if n > 0 {
		sh.delivered.Add(uint64(n))
		if b := (now - p.t0.Load()) / int64(timelineInterval); b >= 0 {
			sh.timeline[min(b, timelineCap-1)].Add(uint64(n))
		}
		for {
			l := sh.last.Load()
			if now <= l || sh.last.CompareAndSwap(l, now) {
				break
			}
		}
	}
	if len(fr.out) > 0 {
		_, _ = c.Write(fr.out)
	}
	if fr.closeConn {
		_ = c.Close()
	}
	if fr.reason != "" {
		p.fail(cs, gen, fr.reason, fr.retryAfter, nil)
	}
}

// failure is an attempt failure detected while cs.mu was held.
type failure struct {
	reason     string
	retryAfter int
	// out holds frames to write once cs.mu is released: a failed nbio
	// write calls onClose synchronously, which takes cs.mu.
	out []byte
	// closeConn asks to close a connection that was up (protocol error).
	closeConn bool
}

// processLocked parses data for cs and returns the number of new unique
// deliveries. cs.mu held on entry.
func (p *pool) processLocked(cs *connState, sh *shard, data []byte, now int64, fr *failure) int {
	buf := data
	inCopy := len(cs.in) > 0
	if inCopy {
		cs.in = append(cs.in, data...)
		buf = cs.in
	}
	off := 0
	if cs.state == stHandshake {
		res, n, err := parseHandshake(buf, p.accept)
		if err != nil {
			fr.reason = "bad_handshake"
			return 0
		}
		if n == 0 {
			p.keepLocked(cs, buf, 0, inCopy)
			return 0
		}
		switch {
		case res.status == 101 && res.acceptOK:
			p.handshakeDoneLocked(cs, now)
		case res.status == 101:
			fr.reason = "bad_accept"
			return 0
		case res.status == 503:
			fr.reason, fr.retryAfter = "http_503", max(res.retryAfter, 0)
			return 0
		default:
			fr.reason = "http_" + strconv.Itoa(res.status)
			return 0
		}
		off = n
	}
	delivered := 0
	for off < len(buf) {
		h, n, err := parseFrameHeader(buf[off:])
		if err != nil {
			p.badFrm.Add(1)
			if cs.state != stUp {
				fr.reason = "bad_frame"
			} else {
				fr.closeConn = true // onClose counts the drop
			}
			return delivered
		}
		if n == 0 {
			break
		}
		payload := buf[off+n : off+n+h.length]
		off += n + h.length
		if h.masked {
			maskBytes(payload, h.mask)
		}
		switch h.opcode {
		case wsText, wsBinary:
			if h.fin {
				delivered += p.messageLocked(cs, sh, payload, now, fr)
			} else {
				cs.msg = append(cs.msg[:0], payload...)
				cs.inMsg = true
			}
		case wsCont:
			if cs.inMsg {
				cs.msg = append(cs.msg, payload...)
				if len(cs.msg) > maxFrame {
					fr.reason = "bad_frame"
					return delivered
				}
				if h.fin {
					delivered += p.messageLocked(cs, sh, cs.msg, now, fr)
					cs.msg, cs.inMsg = nil, false
				}
			}
		case wsPing:
			fr.out = appendClientFrame(fr.out, wsPong, payload, cs.maskKey())
		case wsClose:
			code := 1005
			if len(payload) >= 2 {
				code = int(payload[0])<<8 | int(payload[1])
			}
			fr.out = appendClientFrame(fr.out, wsClose, payload[:min(len(payload), 2)], cs.maskKey())
			if cs.state != stUp {
				fr.reason = "close_" + strconv.Itoa(code)
			} else {
				cs.closeCode = uint16(code)
			}
			// When up, onClose counts the drop after the server closes.
		}
		if fr.reason != "" {
			return delivered
		}
	}
	p.keepLocked(cs, buf, off, inCopy)
	return delivered
}

// keepLocked keeps buf[off:] for the next read. buf aliases cs.in when
// inCopy is set, otherwise the engine's buffer, which must not be kept.
func (p *pool) keepLocked(cs *connState, buf []byte, off int, inCopy bool) {
	rest := buf[off:]
	switch {
	case len(rest) == 0:
		if cap(cs.in) > 4096 {
			cs.in = nil
		} else {
			cs.in = cs.in[:0]
		}
	case inCopy:
		cs.in = cs.in[:copy(cs.in, rest)]
	default:
		cs.in = append(cs.in[:0], rest...)
	}
}

// maskKey returns a masking key for a client frame. Any key is valid; it
// varies per connection so frames are not trivially predictable.
func (cs *connState) maskKey() [4]byte {
	v := uint32(cs.idx)*2654435761 + cs.gen
	return [4]byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)}
}

// handshakeDoneLocked records a completed upgrade. cs.mu held on entry.
func (p *pool) handshakeDoneLocked(cs *connState, now int64) {
	p.mu.Lock()
	p.phase.stats.Handshake.Record(now - cs.tDial)
	p.mu.Unlock()
	cs.state = stOpen
	if !p.cfg.Subscribe {
		p.upLocked(cs, now)
	}
}

// messageLocked handles one tether frame and returns 1 for a new unique
// delivery. cs.mu held on entry.
func (p *pool) messageLocked(cs *connState, sh *shard, msg []byte, now int64, fr *failure) int {
	fi, ok := parseFrame(msg)
	if !ok {
		p.badFrm.Add(1)
		return 0
	}
	switch fi.op {
	case opMessage:
		return p.deliverLocked(cs, sh, fi, now)
	case opPing:
		p.pings.Add(1)
		fr.out = appendClientFrame(fr.out, wsText, []byte(`{"op":"pong"}`), cs.maskKey())
	case opWelcome:
		if cs.state == stOpen && p.cfg.Subscribe {
			ch := p.cfg.ChanPrefix + strconv.Itoa((p.cfg.First+int(cs.idx))%p.cfg.Channels)
			sub := `{"op":"subscribe","channel":"` + ch + `"}`
			cs.state = stSubscribing
			cs.tSub = now
			fr.out = appendClientFrame(fr.out, wsText, []byte(sub), cs.maskKey())
		}
	case opSubscribed:
		if cs.state == stSubscribing {
			p.mu.Lock()
			p.phase.stats.Subscribe.Record(now - cs.tSub)
			p.mu.Unlock()
			p.upLocked(cs, now)
		}
	case opError:
		p.errFrm.Add(1)
		if cs.state == stSubscribing {
			fr.reason = "subscribe_error"
		}
	case opReconnect:
		p.recon.Add(1)
	}
	return 0
}

// deliverLocked accounts one delivery. cs.mu held on entry. It allocates
// nothing.
func (p *pool) deliverLocked(cs *connState, sh *shard, fi frameInfo, now int64) int {
	if !fi.hasT || !fi.hasS || fi.s < 0 || fi.s >= int64(p.cfg.Messages) {
		cs.unexpected++
		sh.unexp.Add(1)
		return 0
	}
	w := &cs.seen[fi.s>>6]
	bit := uint64(1) << (fi.s & 63)
	if *w&bit != 0 {
		cs.dups++
		sh.dups.Add(1)
		return 0
	}
	*w |= bit
	sh.lat.Record(now - fi.t)
	return 1
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
