package server

import (
	"context"
	"crypto/tls"
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

	"github.com/lesismal/nbio"

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
	apiCmds    apiCommandMetrics
	handler    http.Handler // the public listener's, for requests other than the upgrade
	tlsConfig  *tls.Config  // nil without Config.TLSCert

	cert       atomic.Pointer[tls.Certificate] // the TLS certificate of new handshakes (tls.go)
	apiHandler http.Handler                    // the private listener's (Config.APIListen)

	fanoutJobs    chan fanoutJob
	scratchPool   sync.Pool // *fanoutScratch
	syncPool      sync.Pool // *fanoutSync
	recoveries    recoveryQueue
	httpSlots     chan struct{} // bounds HTTP requests answered at once (httpconn.go)
	presenceReads chan struct{} // bounds presence reads at once (presence.go)
	clusterCmds   chan struct{} // bounds cluster-wide commands at once (api_cluster.go)

	clock    atomic.Int64 // coarse unix nanos, advanced by the heartbeat loop
	nextID   atomic.Uint64
	draining atomic.Bool // /readyz says 503: set by Drain and Shutdown
	refusing atomic.Bool // upgrades are refused: set DrainDelay after draining
	admit    tokenBucket

	conns connSet

	startedAt time.Time // set by Start (cluster.go's info)
	samples   samples   // the admin page's charts (samples.go)
	userConns userConns // per-user connection counts (userconns.go)

	mu      sync.Mutex // guards engine, api, addr, started, stopped
	engine  *nbio.Engine
	api     *apiListener // nil without Config.APIListen
	addr    net.Addr
	started bool
	stopped bool

	done       chan struct{} // closed by the stop sequence once the engine is stopped
	allStopped chan struct{} // closed once every goroutine of the server has returned
	goroutines goroutines
}

// maxHTTPInFlight bounds the HTTP requests the public listener answers at
// once (each on a goroutine); more are refused with 503.
const maxHTTPInFlight = 256

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
		cfg:           cfg,
		bus:           b,
		log:           log,
		m:             newServerMetrics(cfg.Metrics),
		index:         newIndex(),
		fanoutJobs:    make(chan fanoutJob, 256),
		httpSlots:     make(chan struct{}, maxHTTPInFlight),
		presenceReads: make(chan struct{}, maxPresenceReads),
		clusterCmds:   make(chan struct{}, maxClusterCmds),
		done:          make(chan struct{}),
		allStopped:    make(chan struct{}),
	}
	s.lifetimes = newLifetimes(cfg.Metrics, log, cfg.PingInterval, disconnectReasons)
	s.recoveries.wake = make(chan struct{}, recoveryWorkers)
	s.clock.Store(time.Now().UnixNano())
	s.admit.init(cfg.AcceptRate, cfg.AcceptBurst)
	s.flushers = make([]*flusher, cfg.Flushers)
	for i := range s.flushers {
		s.flushers[i] = &flusher{srv: s, idx: i, wake: make(chan struct{}, 1)}
	}
	s.scratchPool.New = func() any { return &fanoutScratch{ready: make([][]*conn, len(s.flushers))} }
	s.syncPool.New = func() any { return new(fanoutSync) }
	s.heartbeats = newHeartbeats(s, 4*runtime.GOMAXPROCS(0))
	s.apiCmds = newAPICommandMetrics(cfg.Metrics)
	s.handler, s.apiHandler = s.routes()
	if cfg.TLSCert != "" {
		cert, err := loadCertificate(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
		}
		s.cert.Store(cert)
		s.tlsConfig = newTLSConfig(&s.cert)
	}

	b.SetHandler(bus.Handler{OnMessage: s.onBusMessage, OnGap: s.onBusGap, OnPresence: s.onBusPresence})
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
	engine := s.newEngine(ln)
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
		s.goroutines.start("api-listener", func() { api.serve(s.log) })
	}
	s.addr = ln.Addr()
	s.started = true

	for _, f := range s.flushers {
		s.goroutines.start("flusher", func() { f.run(s.done) })
	}
	for range runtime.GOMAXPROCS(0) {
		s.goroutines.start("fanout", s.fanoutWorker)
	}
	for range recoveryWorkers {
		s.goroutines.start("recovery", s.recoveryWorker)
	}
	s.goroutines.start("heartbeats", func() { s.heartbeats.run(s.done) })
	s.startedAt = time.Now()
	s.goroutines.start("sampler", s.sampleLoop)
	s.startControl()
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
// first for a graceful stop.
//
// The first call starts the stop, which always runs to its end: the
// listeners close, every connection is closed, then every goroutine of the
// server returns. Every call, the first included, waits for that end until
// ctx is done; it returns nil once everything has stopped, or ctx's error
// naming the goroutines still running. So a second call, with a fresh
// context, waits for what a first one gave up on.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	first := !s.stopped
	s.stopped = true
	engine, api := s.engine, s.api
	s.mu.Unlock()
	if first {
		s.draining.Store(true)
		s.refusing.Store(true)
		go s.stop(engine, api)
	}
	select {
	case <-s.allStopped:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("server: shutdown: %w; still running: %v", ctx.Err(), s.goroutines.count())
	}
}

// stop is the stop sequence Shutdown starts once.
func (s *Server) stop(engine *nbio.Engine, api *apiListener) {
	if api != nil {
		api.close()
	}
	if engine != nil {
		s.conns.each(func(c *conn) { c.setDisconnect("shutdown") })
		engine.Stop()
	}
	close(s.done)
	s.goroutines.wait()
	close(s.allStopped)
}

// Goroutines returns how many goroutines of each kind the server runs, for
// leak checks in tests and for debugging.
func (s *Server) Goroutines() map[string]int { return s.goroutines.count() }

// Connections returns the number of open WebSocket connections.
func (s *Server) Connections() int { return int(s.m.conns.Load()) }

// jitterMS returns a random delay in milliseconds within ReconnectJitter.
func (s *Server) jitterMS() int64 {
	return rand.Int64N(max(1, s.cfg.ReconnectJitter.Milliseconds())) + 1
}

func randUint64() uint64 { return rand.Uint64() }
