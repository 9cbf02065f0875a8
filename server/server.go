package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lesismal/nbio"
	"github.com/lesismal/nbio/nbhttp"
	"github.com/lesismal/nbio/nbhttp/websocket"

	"tether/bus"
)

// Server is one tether node. Create it with New, run it with Start, stop it
// with Drain and Shutdown.
type Server struct {
	// immutable after New
	cfg        Config
	bus        *bus.Bus
	log        *slog.Logger
	m          *serverMetrics
	index      *index
	flushers   []*flusher
	hb         *heartbeats
	upgrader   *websocket.Upgrader
	handler    http.Handler // the public listener's
	apiHandler http.Handler // the private listener's (Config.APIListen)

	fanoutJobs  chan fanoutJob
	scratchPool sync.Pool // *fanoutScratch
	syncPool    sync.Pool // *fanoutSync
	recoveries  recoveryQueue

	clock    atomic.Int64 // coarse unix nanos, advanced by the heartbeat loop
	nextID   atomic.Uint64
	draining atomic.Bool
	admit    tokenBucket

	conns connSet

	mu      sync.Mutex // guards engine, api, addr, started, stopped
	engine  *nbhttp.Engine
	api     *apiListener // nil without Config.APIListen
	addr    net.Addr
	started bool
	stopped bool

	done chan struct{} // closed by Shutdown
	wg   sync.WaitGroup
}

// recoveryWorkers bounds concurrent history reads: enough to keep a
// Redis connection pool busy during a reconnect storm.
const recoveryWorkers = 64

// New returns a server that delivers what b carries. It does not listen
// until Start. b's handler is set to the server.
func New(cfg Config, b *bus.Bus, log *slog.Logger) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if b == nil {
		return nil, fmt.Errorf("%w: a bus is required", ErrInvalidConfig)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		cfg:        cfg,
		bus:        b,
		log:        log,
		m:          newServerMetrics(cfg.Metrics),
		index:      newIndex(),
		fanoutJobs: make(chan fanoutJob, 256),
		done:       make(chan struct{}),
	}
	s.recoveries.wake = make(chan struct{}, recoveryWorkers)
	s.clock.Store(time.Now().UnixNano())
	s.admit.init(cfg.AcceptRate, cfg.AcceptBurst)
	s.conns.init()
	s.flushers = make([]*flusher, cfg.Flushers)
	for i := range s.flushers {
		s.flushers[i] = &flusher{srv: s, idx: i, wake: make(chan struct{}, 1)}
	}
	s.scratchPool.New = func() any { return &fanoutScratch{ready: make([][]*conn, len(s.flushers))} }
	s.syncPool.New = func() any { return new(fanoutSync) }
	s.hb = newHeartbeats(s, 4*runtime.GOMAXPROCS(0))

	u := websocket.NewUpgrader()
	u.KeepaliveTime = 0 // liveness is ours (heartbeats), not a timer per connection
	u.HandshakeTimeout = cfg.HandshakeTimeout
	u.MessageLengthLimit = cfg.MaxMessageSize + 1024
	u.CheckOrigin = func(*http.Request) bool { return true } // checked before Upgrade, with a JSON error
	u.OnMessage(s.onMessage)
	u.OnClose(s.onClose)
	u.SetPingHandler(func(ws *websocket.Conn, data string) {
		if c, ok := ws.Session().(*conn); ok {
			c.lastSeen.Store(s.clock.Load())
		}
		_ = ws.WriteMessage(websocket.PongMessage, []byte(data))
	})
	u.SetPongHandler(func(ws *websocket.Conn, _ string) {
		if c, ok := ws.Session().(*conn); ok {
			c.lastSeen.Store(s.clock.Load())
		}
	})
	s.upgrader = u
	s.handler, s.apiHandler = s.routes()

	b.SetHandler(bus.Handler{OnMessage: s.onBusMessage, OnGap: s.onBusGap})
	return s, nil
}

// Start listens on cfg.Listen and serves until Shutdown. It returns once
// the server is accepting connections.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return ErrServerClosed
	}
	if s.started {
		return errors.New("server: already started")
	}
	// No TCP keepalive: liveness is tether's own heartbeat, and Go would
	// otherwise spend four setsockopt calls on every accepted connection.
	lc := net.ListenConfig{KeepAlive: -1}
	ln, err := lc.Listen(context.Background(), "tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("cannot listen on %s: %w", s.cfg.Listen, err)
	}
	api, err := s.listenAPI()
	if err != nil {
		_ = ln.Close()
		return err
	}
	engine := nbhttp.NewEngine(nbhttp.Config{
		Name:                    "tether",
		Network:                 "tcp",
		Addrs:                   []string{ln.Addr().String()},
		Listen:                  func(string, string) (net.Listener, error) { return ln, nil },
		NPoller:                 s.cfg.Pollers,
		MaxLoad:                 s.maxLoad(),
		ReadLimit:               s.maxBatchBody() + 64<<10, // bounds what one HTTP request may buffer
		MaxHTTPBodySize:         s.maxBatchBody(),
		MaxWriteBufferSize:      s.cfg.MaxConnBuffer,
		ReleaseWebsocketPayload: true,
		KeepaliveTime:           s.cfg.HandshakeTimeout,
		Handler:                 s.handler,
	})
	addRaceEdges(engine)
	if err := engine.Start(); err != nil {
		_ = ln.Close()
		if api != nil {
			api.close()
		}
		return fmt.Errorf("cannot start engine: %w", err)
	}
	s.engine = engine
	s.api = api
	if api != nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			api.serve(s.log)
		}()
	}
	s.addr = ln.Addr()
	s.started = true

	for _, f := range s.flushers {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			f.run(s.done)
		}()
	}
	for range runtime.GOMAXPROCS(0) {
		s.wg.Add(1)
		go s.fanoutWorker()
	}
	for range recoveryWorkers {
		s.wg.Add(1)
		go s.recoveryWorker()
	}
	s.wg.Add(1)
	go s.hb.run(s.done)
	s.log.Info("tether listening", "addr", s.addr.String(), "api_addr", s.cfg.APIListen, "node", s.cfg.NodeID,
		"max_conns", s.cfg.MaxConns, "auth", len(s.cfg.JWTSecret) > 0)
	return nil
}

// Addr returns the address the server listens on, or nil before Start.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// NodeID returns the node's id.
func (s *Server) NodeID() string { return s.cfg.NodeID }

// Shutdown closes every connection at once and stops the server. Use Drain
// first for a graceful stop. It is safe to call more than once.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return nil
	}
	s.stopped = true
	engine, api := s.engine, s.api
	s.mu.Unlock()
	s.draining.Store(true)
	if api != nil {
		api.close()
	}
	if engine != nil {
		s.conns.each(func(c *conn) { c.setDisconnect("shutdown") })
		stopped := make(chan struct{})
		go func() {
			engine.Stop()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	close(s.done)
	waited := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(waited)
	}()
	select {
	case <-waited:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Connections returns the number of open WebSocket connections.
func (s *Server) Connections() int { return int(s.m.conns.Load()) }

// upgrade handles GET /ws: admission, origin, auth, then the upgrade.
func (s *Server) upgrade(w http.ResponseWriter, r *http.Request) {
	if s.draining.Load() {
		s.m.reject("draining")
		s.refuse(w, "draining", "the node is draining: reconnect to another node")
		return
	}
	if !s.checkOrigin(r) {
		s.m.reject("origin")
		httpError(w, http.StatusForbidden, "forbidden", "origin not allowed")
		return
	}
	var auth *claims
	if len(s.cfg.JWTSecret) > 0 {
		tok := tokenFromRequest(r)
		if tok == "" {
			s.m.reject("unauthorized")
			httpError(w, http.StatusUnauthorized, codeUnauthorized, "a token is required")
			return
		}
		a, err := parseToken(s.cfg.JWTSecret, tok, time.Now())
		if err != nil {
			s.m.reject("unauthorized")
			httpError(w, http.StatusUnauthorized, codeUnauthorized, err.Error())
			return
		}
		auth = a
	}
	if n := s.m.conns.Add(1); s.cfg.MaxConns > 0 && n > int64(s.cfg.MaxConns) {
		s.m.conns.Add(-1)
		s.m.reject("max_conns")
		s.refuse(w, "max_conns", "the node is at capacity")
		return
	}
	if !s.admit.take(time.Now()) {
		s.m.conns.Add(-1)
		s.m.reject("accept_rate")
		s.refuse(w, "accept_rate", "too many new connections: retry later")
		return
	}
	ws, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		s.m.conns.Add(-1)
		s.m.reject("bad_request")
		s.log.Debug("cannot upgrade", "remote", r.RemoteAddr, "err", err)
		return
	}
	nc, ok := underlying(ws)
	if !ok {
		s.m.conns.Add(-1)
		_ = ws.Close()
		return
	}
	id := s.nextID.Add(1)
	now := s.clock.Load()
	c := &conn{
		srv:   s,
		ws:    ws,
		nc:    nc,
		id:    id,
		auth:  auth,
		flush: s.flushers[id%uint64(len(s.flushers))],
		hbWhl: s.hb.shardFor(id),
	}
	if auth != nil {
		c.expiry = auth.expiry.UnixNano()
	}
	c.hb.Value = c
	c.lastSeen.Store(now)
	ws.SetSession(c)
	s.conns.add(c)
	s.m.accepted.Inc()
	s.hb.add(c, now)
	connID := c.connID()
	c.reply(func(b []byte) []byte {
		return appendWelcome(b, s.cfg.NodeID, connID, s.cfg.PingInterval.Milliseconds())
	})
}

// underlying returns the engine connection under ws.
func underlying(ws *websocket.Conn) (*nbio.Conn, bool) {
	switch c := ws.Conn.(type) {
	case *nbio.Conn:
		return c, true
	case *nbhttp.Conn:
		nc, ok := c.Conn.(*nbio.Conn)
		return nc, ok
	}
	return nil, false
}

// refuse answers an upgrade with 503 and a jittered Retry-After, so that
// refused clients spread their retries.
func (s *Server) refuse(w http.ResponseWriter, reason, msg string) {
	retry := 1 + rand.Int64N(max(1, int64(s.cfg.ReconnectJitter/time.Second)))
	w.Header().Set("Retry-After", strconv.FormatInt(retry, 10))
	httpError(w, http.StatusServiceUnavailable, codeUnavailable, msg)
}

func (s *Server) onMessage(ws *websocket.Conn, mt websocket.MessageType, data []byte) {
	c, ok := ws.Session().(*conn)
	if !ok {
		return
	}
	c.onFrame(mt, data)
}

// onClose runs once per upgraded connection when its socket is closed.
func (s *Server) onClose(ws *websocket.Conn, err error) {
	c, ok := ws.Session().(*conn)
	if !ok {
		return
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	subs := c.subs
	c.subs = nil
	c.pending, c.spare = nil, nil
	reason := c.disconnect
	c.mu.Unlock()
	if reason == "" {
		switch {
		case errors.Is(err, websocket.ErrMessageTooLarge):
			reason = "too_large"
		case errors.Is(err, nbio.ErrOverflow):
			reason = "slow_consumer"
			s.m.slowConsumers.Inc()
		default:
			reason = "client"
		}
	}
	s.log.Debug("connection closed", "conn", c.id, "reason", reason, "err", err)
	s.hb.remove(c)
	for _, sub := range subs {
		s.removeSub(sub)
	}
	s.conns.remove(c)
	s.m.conns.Add(-1)
	s.m.disconnect(reason)
}

// setDisconnect records why c is being closed, unless a reason is set.
func (c *conn) setDisconnect(reason string) {
	c.mu.Lock()
	if c.disconnect == "" {
		c.disconnect = reason
	}
	c.mu.Unlock()
}

// closeConn sends c a close frame with code and closes it.
func (s *Server) closeConn(c *conn, code int, text, reason string) {
	c.setDisconnect(reason)
	c.sendClose(code, text, nil)
}

// slowConsumer closes c for falling behind by more than MaxConnBuffer.
func (s *Server) slowConsumer(c *conn) {
	c.mu.Lock()
	first := c.disconnect == "" && !c.closed
	if first {
		c.disconnect = "slow_consumer"
	}
	c.mu.Unlock()
	if !first {
		return
	}
	s.m.slowConsumers.Inc()
	// The queue is full: drop it so the close frame goes out next.
	c.mu.Lock()
	clear(c.pending)
	c.pending = c.pending[:0]
	c.pendingBytes = 0
	c.mu.Unlock()
	c.sendClose(CloseSlowConsumer, "slow consumer", nil)
}

// jitterMS returns a random delay in milliseconds within ReconnectJitter.
func (s *Server) jitterMS() int64 {
	return rand.Int64N(max(1, s.cfg.ReconnectJitter.Milliseconds())) + 1
}

// maxLoad is the engine's bound on sockets: WebSocket connections plus
// room for API requests and upgrades in flight.
func (s *Server) maxLoad() int {
	if s.cfg.MaxConns < 0 {
		return nbhttp.DefaultMaxLoad
	}
	return s.cfg.MaxConns + 1024
}

// maxBatchBody bounds the body of one API request: 4 MiB, or four
// messages of the maximum size when that is more.
func (s *Server) maxBatchBody() int {
	return max(4<<20, 4*(s.cfg.MaxMessageSize+1024))
}

// tokenBucket is a thread-safe token bucket; rate < 0 disables it.
type tokenBucket struct {
	mu     sync.Mutex
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func (b *tokenBucket) init(rate float64, burst int) {
	b.rate, b.burst, b.tokens = rate, float64(burst), float64(burst)
}

func (b *tokenBucket) take(now time.Time) bool {
	if b.rate < 0 {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.last.IsZero() {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// connSet holds every open connection, for drain and shutdown.
type connSet struct {
	shards [64]struct {
		mu sync.Mutex
		m  map[uint64]*conn
	}
}

func (cs *connSet) init() {
	for i := range cs.shards {
		cs.shards[i].m = make(map[uint64]*conn)
	}
}

func (cs *connSet) add(c *conn) {
	sh := &cs.shards[c.id%64]
	sh.mu.Lock()
	sh.m[c.id] = c
	sh.mu.Unlock()
}

func (cs *connSet) remove(c *conn) {
	sh := &cs.shards[c.id%64]
	sh.mu.Lock()
	delete(sh.m, c.id)
	sh.mu.Unlock()
}

// snapshot returns every open connection.
func (cs *connSet) snapshot() []*conn {
	var all []*conn
	for i := range cs.shards {
		sh := &cs.shards[i]
		sh.mu.Lock()
		for _, c := range sh.m {
			all = append(all, c)
		}
		sh.mu.Unlock()
	}
	return all
}

func (cs *connSet) each(fn func(*conn)) {
	for _, c := range cs.snapshot() {
		fn(c)
	}
}

func randUint64() uint64 { return rand.Uint64() }
