package bus

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// RedisConfig configures a Redis bus. See docs/cluster.md for the design.
type RedisConfig struct {
	// Config bounds each channel's history, which lives in Redis.
	Config
	// URL is the standalone server, redis://[user:password@]host:port/db
	// (rediss:// for TLS, unix:///path/to.sock?db=N for a unix socket).
	// It is ignored when ClusterAddrs is set. If both are empty,
	// redis://127.0.0.1:6379/0 is used.
	URL string
	// ClusterAddrs are seed nodes (host:port) of a Redis Cluster. When set,
	// the bus uses sharded pub/sub (SSUBSCRIBE/SPUBLISH). If empty, URL is
	// used.
	ClusterAddrs []string
	// Linger is how long a channel stays subscribed in Redis after its last
	// local subscriber left, so that flapping clients do not churn Redis.
	// If zero, 3 seconds is used; negative unsubscribes at once.
	Linger time.Duration
	// Shards is the number of standalone pub/sub connections; a channel uses
	// the one its name hashes to. If zero, 4 is used. In cluster mode there
	// is one pub/sub connection per master node instead.
	Shards int
	// QueueSize bounds the messages waiting to be sent to Redis; publishes
	// over it fail at once with ErrUnavailable. If zero, 10000 is used.
	QueueSize int
	// CommandTimeout bounds every Redis call, and how long History waits
	// for a channel's subscription to become active. If zero, 2 seconds is
	// used.
	CommandTimeout time.Duration
	// KeyPrefix starts every Redis key and pub/sub channel of this bus. It
	// must not contain braces. If empty, "tether:" is used.
	KeyPrefix string
	// PresenceTTL is how long the presence members a node wrote outlive
	// its last refresh (every PresenceTTL/3): a node that crashed is out
	// of every presence count at most PresenceTTL + PresenceTTL/3 (the
	// janitors' period) plus one cleaning pass after its last refresh. If
	// zero, 15 seconds is used.
	PresenceTTL time.Duration
}

func (c RedisConfig) withDefaults() RedisConfig {
	c.Config = c.Config.withDefaults()
	if c.URL == "" {
		c.URL = "redis://127.0.0.1:6379/0"
	}
	if c.Linger == 0 {
		c.Linger = 3 * time.Second
	}
	if c.Shards <= 0 {
		c.Shards = 4
	}
	if c.QueueSize <= 0 {
		c.QueueSize = 10000
	}
	if c.CommandTimeout <= 0 {
		c.CommandTimeout = 2 * time.Second
	}
	if c.KeyPrefix == "" {
		c.KeyPrefix = "tether:"
	}
	if c.PresenceTTL <= 0 {
		c.PresenceTTL = 15 * time.Second
	}
	return c
}

// Tunables of the Redis bus that are not worth a config field.
const (
	// maxPublishBatch bounds the messages of one publish pipeline.
	maxPublishBatch = 1024
	// maxSubscribeBatch bounds the channels of one SUBSCRIBE command.
	maxSubscribeBatch = 512
	// maxRepairBatch bounds the history reads of one repair pipeline.
	maxRepairBatch = 256
	// maxRepairBuffer bounds the live messages a channel holds while its
	// gap is repaired; past it they are dropped and read from history.
	maxRepairBuffer = 1024
	// maxBackoff bounds the wait between reconnection attempts.
	maxBackoff = time.Second
)

// NewRedis returns a bus that shares channels with every other node using
// the same Redis (standalone at cfg.URL, or the Redis Cluster at
// cfg.ClusterAddrs). Offsets and history live in Redis. It fails when the
// configuration is invalid, not when Redis is unreachable: the bus then
// starts unhealthy and keeps reconnecting. ctx bounds nothing after
// NewRedis returns. set receives the bus's metrics; if nil, a private set
// is used.
func NewRedis(ctx context.Context, cfg RedisConfig, log *slog.Logger, set *metrics.Set) (*Bus, error) {
	cfg = cfg.withDefaults()
	if strings.ContainsAny(cfg.KeyPrefix, "{}") {
		return nil, fmt.Errorf("cannot use key prefix %q: it must not contain braces", cfg.KeyPrefix)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if set == nil {
		set = metrics.NewSet()
	}
	b := &redisBus{
		cfg:        cfg,
		log:        log,
		pubScript:  redis.NewScript(publishScript),
		idemScript: redis.NewScript(idempotentPublishScript),
		histScript: redis.NewScript(historyScript),
		ttlMillis:  strconv.FormatInt(cfg.HistoryTTL.Milliseconds(), 10),
		histSize:   strconv.Itoa(cfg.HistorySize),
		// A window under a millisecond is none.
		windowMillis: strconv.FormatInt(cfg.HistoryWindow.Milliseconds(), 10),
		maxBytes:     strconv.Itoa(cfg.HistoryMaxBytes),
		chans:        make(map[string]*redisChannel),
		links:        make(map[string]*link),
		queueWake:    make(chan struct{}, 1),
		repairWake:   make(chan struct{}, 1),
		routeWake:    make(chan struct{}, 1),
		done:         make(chan struct{}),
	}
	if w := cfg.IdempotencyWindow; w > 0 {
		b.idemMillis = strconv.FormatInt(max(w.Milliseconds(), 1), 10)
	}
	if b.cfg.HistoryTTL.Milliseconds() < 1 {
		b.ttlMillis = "1"
	}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	timeout := cfg.CommandTimeout
	noMaint := &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	if len(cfg.ClusterAddrs) > 0 {
		b.cluster = redis.NewClusterClient(&redis.ClusterOptions{
			Addrs:                    cfg.ClusterAddrs,
			Protocol:                 2,
			DisableIdentity:          true,
			MaxRetries:               -1,
			DialTimeout:              timeout,
			DialerRetries:            1,
			ReadTimeout:              timeout,
			WriteTimeout:             timeout,
			PoolTimeout:              timeout,
			ContextTimeoutEnabled:    true,
			MaintNotificationsConfig: noMaint,
		})
		b.client = b.cluster
		b.publishCmd = "SPUBLISH"
	} else {
		opt, err := redis.ParseURL(cfg.URL)
		if err != nil {
			return nil, fmt.Errorf("cannot parse redis url: %w", err)
		}
		opt.Protocol = 2
		opt.DisableIdentity = true
		opt.MaxRetries = -1
		opt.DialTimeout = timeout
		opt.DialerRetries = 1
		opt.ReadTimeout = timeout
		opt.WriteTimeout = timeout
		opt.PoolTimeout = timeout
		opt.ContextTimeoutEnabled = true
		opt.MaintNotificationsConfig = noMaint
		single := redis.NewClient(opt)
		b.client = single
		b.publishCmd = "PUBLISH"
		for i := range cfg.Shards {
			b.links[strconv.Itoa(i)] = b.newLink(strconv.Itoa(i), single, false)
		}
	}
	b.m = newRedisMetrics(set, b)
	b.needLoad.Store(true)
	// Learn at once whether Redis answers, so that Stats is right from the
	// start; failure is not fatal: the health loop keeps trying.
	pctx, cancel := context.WithTimeout(ctx, timeout)
	b.healthy.Store(b.ping(pctx) == nil)
	cancel()
	if !b.healthy.Load() {
		log.Warn("redis bus starting unhealthy: redis does not answer", "timeout", timeout)
	}
	b.start(b.flushLoop)
	b.start(b.healthLoop)
	b.start(b.repairLoop)
	b.start(b.janitorLoop)
	for _, l := range b.links {
		l.start()
	}
	b.pres = newRedisPresence(b)
	return &Bus{be: b, pres: b.pres}, nil
}

// redisBus is the Redis backend. Lock order: mu, then link.mu;
// redisChannel.mu is never held together with mu or link.mu; queueMu and
// repairMu are leaves.
type redisBus struct {
	// Immutable after NewRedis.
	cfg          RedisConfig
	log          *slog.Logger
	client       redis.UniversalClient
	cluster      *redis.ClusterClient // nil in standalone mode
	publishCmd   string               // PUBLISH or SPUBLISH
	pubScript    *redis.Script
	idemScript   *redis.Script // idempotentPublishScript
	idemMillis   string        // IdempotencyWindow in ms; "" when off
	histScript   *redis.Script
	ttlMillis    string
	histSize     string
	windowMillis string
	maxBytes     string
	m            redisMetrics
	ctx          context.Context // canceled by close
	cancel       context.CancelFunc
	done         chan struct{} // closed by close
	wg           sync.WaitGroup

	pres     *redisPresence // set once by NewRedis
	handler  atomic.Pointer[Handler]
	healthy  atomic.Bool // Redis answered the last command or ping
	needLoad atomic.Bool // the publish scripts may be missing from Redis

	queueMu   sync.Mutex // guards queue, queued and closed
	queue     []pubReq
	queued    int // messages in queue
	closed    bool
	queueWake chan struct{}

	mu        sync.Mutex // guards chans, links, unrouted, interest and the redisChannel/link fields it names
	chans     map[string]*redisChannel
	links     map[string]*link // by shard number, or by node address in cluster mode
	unrouted  map[*redisChannel]struct{}
	interest  int // channels with refs > 0
	routeWake chan struct{}

	repairMu    sync.Mutex // guards repairQueue
	repairQueue []*redisChannel
	repairWake  chan struct{}
}

// start runs fn on a goroutine counted by b.wg.
func (b *redisBus) start(fn func()) {
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		fn()
	}()
}

func (b *redisBus) setHandler(h Handler) { b.handler.Store(&h) }

func (b *redisBus) handlers() Handler {
	if h := b.handler.Load(); h != nil {
		return *h
	}
	return Handler{}
}

func (b *redisBus) isClosed() bool {
	select {
	case <-b.done:
		return true
	default:
		return false
	}
}

// unavailable wraps err as ErrUnavailable for operation op.
func unavailable(op string, err error) error {
	return fmt.Errorf("cannot %s: %w: %w", op, ErrUnavailable, err)
}

var (
	errQueueFull   = errors.New("publish queue full")
	errUnreachable = errors.New("redis unreachable")
)

// isNetErr reports whether err means the connection to Redis failed (as
// opposed to an error reply).
func isNetErr(err error) bool {
	if err == nil {
		return false
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, redis.ErrClosed) ||
		errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "connection pool")
}

// newEpochCandidate returns a fresh random epoch for a script that may have
// to start a channel's stream anew.
func newEpochCandidate() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// wake signals ch without blocking.
func wake(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// commandFailed records that a command failed with err: a network failure
// marks Redis unhealthy (publishes then fail fast until a ping succeeds) and
// fails the queued publishes at once.
func (b *redisBus) commandFailed(err error) {
	if !isNetErr(err) {
		return
	}
	b.needLoad.Store(true)
	if b.healthy.Swap(false) {
		b.log.Warn("redis bus unhealthy", "err", err)
	}
	b.failQueue(unavailable("publish", errUnreachable))
}

// ping checks that Redis (every master, in cluster mode) answers.
func (b *redisBus) ping(ctx context.Context) error {
	if b.cluster != nil {
		return b.cluster.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			return c.Ping(ctx).Err()
		})
	}
	return b.client.Ping(ctx).Err()
}

// healthLoop pings Redis: every CommandTimeout while healthy (capped at
// one second), and often while not, so that recovery is noticed quickly.
func (b *redisBus) healthLoop() {
	every := min(b.cfg.CommandTimeout, time.Second)
	t := time.NewTimer(every)
	defer t.Stop()
	for {
		select {
		case <-b.done:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(b.ctx, b.cfg.CommandTimeout)
		err := b.ping(ctx)
		cancel()
		switch {
		case err == nil && !b.healthy.Load():
			b.needLoad.Store(true)
			b.healthy.Store(true)
			b.log.Info("redis bus healthy again")
		case err != nil:
			if b.healthy.Load() {
				b.m.errPing.Inc()
			}
			b.commandFailed(err)
		}
		if b.healthy.Load() {
			t.Reset(every)
		} else {
			t.Reset(min(every, 100*time.Millisecond))
		}
	}
}

// stats implements backend.
func (b *redisBus) stats() Stats {
	b.queueMu.Lock()
	queued := b.queued
	b.queueMu.Unlock()
	b.mu.Lock()
	n := b.interest
	healthy := b.healthy.Load()
	for _, l := range b.links {
		if l.down.Load() {
			healthy = false
		}
	}
	b.mu.Unlock()
	return Stats{Healthy: healthy, Channels: n, Queued: queued}
}

// close implements backend.
func (b *redisBus) close() error {
	b.queueMu.Lock()
	if b.closed {
		b.queueMu.Unlock()
		return nil
	}
	b.closed = true
	b.queueMu.Unlock()
	b.pres.stop()
	close(b.done)
	b.cancel()
	b.mu.Lock()
	links := make([]*link, 0, len(b.links))
	for _, l := range b.links {
		links = append(links, l)
	}
	b.mu.Unlock()
	for _, l := range links {
		l.closePubSub()
	}
	b.wg.Wait()
	b.failQueue(ErrClosed)
	return b.client.Close()
}

// redisMetrics are the bus's metrics, created once in NewRedis.
type redisMetrics struct {
	publishDuration *metrics.Histogram
	batchPublish    *metrics.Histogram
	batchSubscribe  *metrics.Histogram
	batchRepair     *metrics.Histogram
	reconnects      *metrics.Counter
	gapRepaired     *metrics.Counter
	gapLost         *metrics.Counter
	errPublish      *metrics.Counter
	errHistory      *metrics.Counter
	historyNode     *metrics.Counter
	historyRedis    *metrics.Counter
	errSubscribe    *metrics.Counter
	errRepair       *metrics.Counter
	errDecode       *metrics.Counter
	errKeepalive    *metrics.Counter
	errPing         *metrics.Counter

	errPresence           *metrics.Counter
	presenceDuration      *metrics.Histogram
	presenceOwnersCleaned *metrics.Counter
}

func newRedisMetrics(set *metrics.Set, b *redisBus) redisMetrics {
	set.NewGauge("tether_bus_subscribed_channels", func() float64 {
		b.mu.Lock()
		defer b.mu.Unlock()
		return float64(b.interest)
	})
	return redisMetrics{
		publishDuration: set.NewHistogram("tether_bus_publish_duration_seconds"),
		batchPublish:    set.NewHistogram(`tether_bus_batch_size{op="publish"}`),
		batchSubscribe:  set.NewHistogram(`tether_bus_batch_size{op="subscribe"}`),
		batchRepair:     set.NewHistogram(`tether_bus_batch_size{op="repair"}`),
		reconnects:      set.NewCounter("tether_bus_reconnects_total"),
		gapRepaired:     set.NewCounter("tether_bus_gap_repaired_total"),
		gapLost:         set.NewCounter("tether_bus_gap_unrecoverable_total"),
		errPublish:      set.NewCounter(`tether_bus_errors_total{op="publish"}`),
		errHistory:      set.NewCounter(`tether_bus_errors_total{op="history"}`),
		historyNode:     set.NewCounter(`tether_bus_history_answers_total{from="node"}`),
		historyRedis:    set.NewCounter(`tether_bus_history_answers_total{from="redis"}`),
		errSubscribe:    set.NewCounter(`tether_bus_errors_total{op="subscribe"}`),
		errRepair:       set.NewCounter(`tether_bus_errors_total{op="repair"}`),
		errDecode:       set.NewCounter(`tether_bus_errors_total{op="decode"}`),
		errKeepalive:    set.NewCounter(`tether_bus_errors_total{op="keepalive"}`),
		errPing:         set.NewCounter(`tether_bus_errors_total{op="ping"}`),

		errPresence:           set.NewCounter(`tether_bus_errors_total{op="presence"}`),
		presenceDuration:      set.NewHistogram("tether_bus_presence_write_duration_seconds"),
		presenceOwnersCleaned: set.NewCounter("tether_bus_presence_owners_cleaned_total"),
	}
}
