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
	"sync"
	"sync/atomic"
	"time"

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
	lifetimes  *lifetimes
	index      *index
	flushers   []*flusher
	heartbeats *heartbeats
	upgrader   *websocket.Upgrader
	handler    http.Handler // the public listener's
	apiHandler http.Handler // the private listener's (Config.APIListen)

	fanoutJobs  chan fanoutJob
	scratchPool sync.Pool // *fanoutScratch
	syncPool    sync.Pool // *fanoutSync
	recoveries  recoveryQueue

	clock    atomic.Int64 // coarse unix nanos, advanced by the heartbeat loop
	nextID   atomic.Uint64
	draining atomic.Bool // /readyz says 503: set by Drain and Shutdown
	refusing atomic.Bool // upgrades are refused: set DrainDelay after draining
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
	s.lifetimes = newLifetimes(cfg.Metrics, log, cfg.PingInterval, disconnectReasons)
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
	s.heartbeats = newHeartbeats(s, 4*runtime.GOMAXPROCS(0))

	s.upgrader = s.newUpgrader()
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
	go s.heartbeats.run(s.done)
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
	s.refusing.Store(true)
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

func randUint64() uint64 { return rand.Uint64() }
