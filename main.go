// Command tether is a high-density WebSocket fan-out server.
//
//	tether [flags]          run a node (see -h)
//	tether bench …          run the load tool (see tether bench -h)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"tether/bench"
	"tether/bus"
	"tether/server"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // runtime failure, or a forced stop by a second signal
	exitUsage   = 2 // bad flags or configuration
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "bench" {
		os.Exit(bench.Main(os.Args[2:]))
	}
	os.Exit(run(os.Args[1:], os.Stderr))
}

// options are the parsed command line.
type options struct {
	cfg        server.Config
	busCfg     bus.Config
	logLevel   string
	logFormat  string
	jwtFile    string
	apiKeyFile string
	origins    string
	redisURL   string
	redisNodes string
	busLinger  time.Duration
	busShards  int
	busQueue   int
	presence   string
	joinLeave  string
	presTTL    time.Duration
	runtime    runtimeOptions
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("tether", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &o.cfg
	fs.StringVar(&c.Listen, "listen", ":8080", "TCP address for WebSocket (/ws) and HTTP")
	fs.StringVar(&c.APIListen, "api-listen", "", "private TCP address for /api/, /metrics, /healthz, /readyz; when set, --listen serves only /ws and /")
	fs.StringVar(&c.TLSCert, "tls-cert", "", "PEM certificate chain: --listen serves https and wss:// (TLS 1.2+); reloaded on SIGHUP")
	fs.StringVar(&c.TLSKey, "tls-key", "", "PEM private key of --tls-cert")
	fs.StringVar(&c.NodeID, "node-id", "", "node name in welcome frames and metrics (default: host name + random suffix)")
	fs.IntVar(&c.MaxConns, "max-conns", 0, "max concurrent connections; 0 = the file limit minus a 1/64 reserve (128…4096), -1 = no bound")
	fs.Float64Var(&c.AcceptRate, "accept-rate", 10000, "max upgrades per second (token bucket); over it 503 + jittered Retry-After; -1 = no bound")
	fs.IntVar(&c.AcceptBurst, "accept-burst", 0, "burst of --accept-rate; 0 = half the rate")
	fs.DurationVar(&c.HandshakeTimeout, "handshake-timeout", 10*time.Second, "time a new TCP connection has to complete the upgrade")
	fs.IntVar(&c.MaxHandshakes, "max-handshakes", 4096, "max sockets before their upgrade (request being read, API request being answered); more are closed at accept")
	fs.IntVar(&c.MaxHeaderBytes, "max-header-bytes", 16<<10, "max bytes of an HTTP request head; longer ones get 431 before anything else is read")
	fs.IntVar(&c.MaxAPIBody, "max-api-body", 0, "max bytes of an HTTP API request body; larger ones get 413 before the body is read; 0 = 4 MiB or 4 × --max-message-size")
	fs.IntVar(&c.MaxMessageSize, "max-message-size", 64<<10, "max publish payload in bytes; larger client frames are closed with 1009")
	fs.IntVar(&c.MaxConnBuffer, "max-conn-buffer", 1<<20, "max bytes pending per connection before it is closed as a slow consumer (4009)")
	fs.IntVar(&c.MaxSubsPerConn, "max-subs-per-conn", 100, "max subscriptions per connection; -1 = no bound")
	fs.IntVar(&c.MaxConnsPerUser, "max-conns-per-user", 0, "max connections of one user (token sub) on this node; over it the upgrade gets 429; 0 = no bound")
	fs.DurationVar(&c.ClusterTimeout, "cluster-timeout", 2*time.Second, "how long a cluster-wide API command waits for every node's answer before answering partial; 0 = 2s")
	fs.Float64Var(&c.ClientMsgRate, "client-msg-rate", 50, "max frames per second per client; over it an error, then close 4029; -1 = no bound")
	fs.IntVar(&c.ClientMsgBurst, "client-msg-burst", 0, "burst of --client-msg-rate; 0 = twice the rate")
	fs.IntVar(&o.busCfg.HistorySize, "history-size", 100, "messages kept per channel for recovery; -1 = none")
	fs.DurationVar(&o.busCfg.HistoryWindow, "history-window", 30*time.Second, "also keep every message younger than this, beyond --history-size (continuity across a drain: ≥ 2 × (--reconnect-jitter + max Retry-After)); 0 = 30s, negative = by count only")
	fs.IntVar(&o.busCfg.HistoryMaxBytes, "history-max-bytes", 1<<20, "per-channel cap on the data bytes --history-window keeps (the last --history-size messages are kept regardless); 0 = 1 MiB, -1 = by count only")
	fs.DurationVar(&o.busCfg.HistoryTTL, "history-ttl", 5*time.Minute, "how long a channel's history outlives its last publish")
	fs.DurationVar(&o.busCfg.IdempotencyWindow, "idempotency-window", 5*time.Minute, "a publish whose idempotency_key was seen this long ago or less gets the first result instead of publishing again (across nodes with Redis); 0 = off (keys ignored)")
	fs.IntVar(&o.busCfg.IdempotencyMaxKeys, "idempotency-max-keys", 100000, "without Redis: max idempotency keys remembered; when full the oldest is forgotten early; 0 = 100000 (with Redis the keys live in Redis)")
	fs.DurationVar(&c.PingInterval, "ping-interval", 25*time.Second, "server ping interval (keep well inside load balancer idle timeouts)")
	fs.DurationVar(&c.PongTimeout, "pong-timeout", 10*time.Second, "a connection silent for ping-interval + pong-timeout is closed (4008)")
	fs.DurationVar(&c.DrainDelay, "drain-delay", 3*time.Second, "on SIGTERM, /readyz turns 503 at once but upgrades are accepted this long (≥ 2 LB check intervals); negative = refuse at once")
	fs.DurationVar(&c.DrainWindow, "drain-window", 30*time.Second, "on SIGTERM, connections are closed spread over this window")
	fs.DurationVar(&c.ReconnectJitter, "reconnect-jitter", 5*time.Second, "upper bound of the reconnect advice (after_ms, Retry-After)")
	fs.DurationVar(&c.RefreshWindow, "refresh-window", 60*time.Second, "send refresh_due between this long and half this long before a token's exp, spread per connection (0 = 60s, negative = never)")
	fs.StringVar(&o.jwtFile, "jwt-secret-file", "", "file holding the HS256 secret; enables auth (or set TETHER_JWT_SECRET)")
	fs.BoolVar(&c.AllowClientPublish, "allow-client-publish", false, "without auth: let clients publish")
	fs.StringVar(&o.origins, "allowed-origins", "", "comma-separated Origins allowed to upgrade, * for any; empty = same origin or no Origin")
	fs.StringVar(&o.apiKeyFile, "api-key-file", "", "file holding the HTTP API key (or set TETHER_API_KEY); without one the API answers only loopback")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "text", "text or json")
	fs.StringVar(&o.redisURL, "redis", "", "redis://host:port/db: share channels with other nodes through Redis")
	fs.StringVar(&o.redisNodes, "redis-cluster", "", "host:port,host:port,…: share channels through Redis Cluster (sharded pub/sub)")
	fs.DurationVar(&o.busLinger, "bus-linger", 3*time.Second, "keep a channel subscribed in Redis this long after its last local subscriber leaves")
	fs.IntVar(&o.busShards, "bus-shards", 4, "Redis pub/sub connections, chosen by channel hash")
	fs.IntVar(&o.busQueue, "bus-queue", 10000, "max publishes waiting for Redis; beyond it publishes fail fast with 503")
	fs.StringVar(&o.presence, "presence", "", "comma-separated channel globs with presence (members and counts, the presence op, GET /api/presence); empty = none")
	fs.StringVar(&o.joinLeave, "join-leave", "", "comma-separated channel globs whose joins and leaves are sent to subscribers (they have presence too); empty = none")
	fs.IntVar(&c.PresenceMaxMembers, "presence-max-members", 100, "max members listed in a presence answer (counts stay exact); 0 = 100, -1 = none")
	fs.IntVar(&c.JoinLeaveMax, "join-leave-max", 1000, "presence count above which a channel's joins and leaves are no longer sent (counted as suppressed); 0 = 1000, -1 = no bound")
	fs.DurationVar(&o.presTTL, "presence-ttl", 15*time.Second, "with Redis: a crashed node's presence members are gone within 4/3 of this plus one cleaning pass; 0 = 15s")
	fs.Var(&o.runtime.memoryLimit, "memory-limit", "soft limit of the Go runtime's memory (debug.SetMemoryLimit), e.g. 2GiB: GC runs earlier to stay under it; 0 = GOMEMLIMIT or none")
	fs.IntVar(&o.runtime.gcPercent, "gc-percent", 0, "heap growth between GC cycles in percent (GOGC); 25 keeps RSS near the live heap; 0 = GOGC or 100")
	fs.DurationVar(&o.runtime.memoryRelease, "memory-release", 30*time.Second, "return heap memory to the kernel when it stayed free for this long (after a connection peak); 0 = 30s, negative = never (the Go runtime's scavenger alone)")
	fs.StringVar(&o.runtime.pprofListen, "pprof-listen", "", "private TCP address serving /debug/pprof/ (profiles); empty = off")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.origins != "" {
		for _, s := range strings.Split(o.origins, ",") {
			if s = strings.TrimSpace(s); s != "" {
				c.AllowedOrigins = append(c.AllowedOrigins, s)
			}
		}
	}
	c.Presence, c.JoinLeave = splitList(o.presence), splitList(o.joinLeave)
	secret, err := secretFrom(o.jwtFile, "TETHER_JWT_SECRET")
	if err != nil {
		return nil, err
	}
	c.JWTSecret = []byte(secret)
	if c.APIKey, err = secretFrom(o.apiKeyFile, "TETHER_API_KEY"); err != nil {
		return nil, err
	}
	if o.redisURL != "" && o.redisNodes != "" {
		return nil, errors.New("give --redis or --redis-cluster, not both")
	}
	return o, nil
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// secretFrom reads a secret from file, or else from the environment.
func secretFrom(file, env string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("cannot read secret: %w", err)
		}
		s := strings.TrimSpace(string(b))
		if s == "" {
			return "", fmt.Errorf("cannot use secret: %s is empty", file)
		}
		return s, nil
	}
	return strings.TrimSpace(os.Getenv(env)), nil
}

func newLogger(level, format string, w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("cannot parse --log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("cannot use --log-format %q: want text or json", format)
}

func run(args []string, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		fmt.Fprintln(stderr, "tether:", err)
		return exitUsage
	}
	log, err := newLogger(o.logLevel, o.logFormat, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "tether:", err)
		return exitUsage
	}
	useNbioLogger(log)
	o.runtime.apply(log)
	if o.runtime.pprofListen != "" {
		if err := servePprof(o.runtime.pprofListen, log); err != nil {
			log.Error("cannot serve pprof", "err", err)
			return exitFailure
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	set := metrics.NewSet()
	o.cfg.Metrics = set
	o.runtime.startRelease(set, log, ctx.Done())
	o.cfg.StaticFS = staticFS()
	b, err := newBus(ctx, o, log, set)
	if err != nil {
		log.Error("cannot start bus", "err", err)
		return exitFailure
	}
	defer b.Close()

	srv, err := server.New(o.cfg, b, log)
	if err != nil {
		log.Error("cannot configure server", "err", err)
		return exitUsage
	}
	if len(o.cfg.JWTSecret) == 0 {
		log.Warn("no JWT secret: running open, any client may subscribe to any channel (development mode)",
			"client_publish", o.cfg.AllowClientPublish)
	}
	if err := srv.Start(); err != nil {
		log.Error("cannot start server", "err", err)
		return exitFailure
	}
	sdNotify(log, "READY=1\nSTATUS=serving on "+srv.Addr().String())
	if o.cfg.TLSCert != "" {
		go reloadOnHUP(ctx, srv, log)
	}

	<-ctx.Done()
	stop() // a second signal now kills the process the default way…
	force := make(chan os.Signal, 1)
	signal.Notify(force, syscall.SIGTERM, syscall.SIGINT) // …but we exit ourselves, at once
	sdNotify(log, "STOPPING=1\nSTATUS=draining")
	log.Info("signal received: draining; a second signal exits at once")
	drainCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	drained := make(chan error, 1)
	go func() { drained <- srv.Drain(drainCtx) }()
	select {
	case <-force:
		log.Warn("second signal: exiting now")
		return exitFailure
	case err := <-drained:
		if err != nil {
			log.Error("cannot drain", "err", err)
		}
	}
	shutCtx, cancelShut := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelShut()
	if err := srv.Shutdown(shutCtx); err != nil {
		log.Error("cannot shut down cleanly", "err", err)
		return exitFailure
	}
	log.Info("drained and stopped")
	return exitOK
}

// reloadOnHUP reads the TLS certificate again on every SIGHUP until ctx
// ends. Open connections keep their session; new handshakes get the new
// certificate. A bad file is logged and the old certificate kept.
func reloadOnHUP(ctx context.Context, srv *server.Server, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			if err := srv.ReloadTLS(); err != nil {
				log.Error("cannot reload the TLS certificate; keeping the old one", "err", err)
			}
		}
	}
}

func newBus(ctx context.Context, o *options, log *slog.Logger, set *metrics.Set) (*bus.Bus, error) {
	if o.redisURL == "" && o.redisNodes == "" {
		return bus.NewLocal(o.busCfg), nil
	}
	return newRedisBus(ctx, o, log, set)
}

// sdNotify tells systemd (Type=notify) about state changes. It does
// nothing when not run by systemd.
func sdNotify(log *slog.Logger, state string) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		log.Warn("cannot notify systemd", "err", err)
		return
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		log.Warn("cannot notify systemd", "err", err)
	}
}
