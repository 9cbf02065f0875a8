package server

import (
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"syscall"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// Config configures a Server. The zero value of every field selects the
// documented default; negative values of the bounds marked so disable them.
type Config struct {
	// Listen is the TCP address to serve WebSocket and HTTP on.
	// If empty, ":8080" is used; "127.0.0.1:0" picks a free port (see Addr).
	Listen string
	// APIListen, if set, is a second TCP address, meant to be private, that
	// serves the HTTP API (/api/), /metrics, /healthz and /readyz; Listen
	// then serves only /ws and StaticFS, so a load balancer in front of it
	// cannot expose them. If empty, Listen serves everything.
	APIListen string
	// TLSCert and TLSKey, if set, are PEM files of the certificate chain
	// and its key: Listen then serves HTTPS and wss:// (TLS 1.2 or later).
	// Both or neither. Server.ReloadTLS reads them again.
	TLSCert string
	TLSKey  string
	// NodeID names this node in welcome frames and metrics.
	// If empty, the host name plus a random suffix is used.
	NodeID string

	// MaxConns bounds concurrent WebSocket connections; upgrades over it are
	// refused with 503. If zero, the soft RLIMIT_NOFILE minus a reserve for
	// listeners, API requests and Redis (1/64 of the limit, between 128 and
	// 4,096) is used. Negative means no bound.
	MaxConns int
	// AcceptRate bounds WebSocket upgrades per second (token bucket); upgrades
	// over it are refused with 503 and a jittered Retry-After. If zero,
	// 10,000/s is used. Negative means no bound.
	AcceptRate float64
	// AcceptBurst is the token bucket depth of AcceptRate. If zero,
	// AcceptRate/2 (at least 1) is used.
	AcceptBurst int
	// HandshakeTimeout bounds how long a new TCP connection may take to send
	// its upgrade request and read the answer. If zero, 10s is used.
	HandshakeTimeout time.Duration
	// MaxHandshakes bounds the sockets held before their upgrade: sockets
	// whose request is still being read, and API requests being read or
	// answered. A socket accepted over it is closed at once. With
	// MaxHeaderBytes it bounds what clients that never authenticate can
	// make the node hold: MaxHandshakes × (MaxHeaderBytes + ~1 KiB).
	// If zero, 4,096 is used.
	MaxHandshakes int
	// MaxHeaderBytes bounds an HTTP request head (request line and header
	// fields); a longer one is refused with 431 before anything else is
	// read. If zero, 16 KiB is used.
	MaxHeaderBytes int
	// MaxAPIBody bounds the body of one HTTP API request; a request
	// declaring more is refused with 413 before its body is read. If zero,
	// 4 MiB or four messages of MaxMessageSize, whichever is more, is used.
	MaxAPIBody int

	// MaxMessageSize bounds a publish payload (the JSON data) in bytes; a
	// client frame larger than MaxMessageSize+1KiB is closed with 1009.
	// If zero, 64 KiB is used.
	MaxMessageSize int
	// MaxConnBuffer bounds the bytes waiting to be written to one
	// connection, both in tether's queue and in the engine's write buffer
	// (so at most twice this per connection); a connection over it is a slow
	// consumer and is closed with 4009. If zero, 1 MiB is used; at most
	// 1 GiB.
	MaxConnBuffer int
	// MaxConnsPerUser bounds the connections one user (a token's sub) may
	// hold open on this node; an upgrade over it is refused with 429 and a
	// JSON error (code "limit"). The bound is node-local: across N nodes a
	// user may hold up to N times as many. If zero, there is no bound.
	MaxConnsPerUser int
	// ClusterTimeout bounds how long a cluster-wide API command (api_cluster.go)
	// waits for every node's answer; the nodes that did not answer by then
	// are listed as missing. If zero, 2s is used.
	ClusterTimeout time.Duration
	// MaxSubsPerConn bounds subscriptions per connection.
	// If zero, 100 is used. Negative means no bound.
	MaxSubsPerConn int
	// ClientMsgRate bounds frames per second a client may send (token bucket
	// with a burst of ClientMsgBurst); over it the client gets a
	// rate_limited error and, if it keeps going, close 4029.
	// If zero, 50/s is used. Negative means no bound.
	ClientMsgRate float64
	// ClientMsgBurst is the bucket depth of ClientMsgRate.
	// If zero, 2×ClientMsgRate (at least 1) is used.
	ClientMsgBurst int

	// PingInterval is how often the server pings each connection. If zero,
	// 25s is used: well inside the 60s idle timeout common in load balancers.
	PingInterval time.Duration
	// PongTimeout is how long after a missed ping a silent connection is
	// closed with 4008 (no inbound frame for PingInterval+PongTimeout).
	// If zero, 10s is used.
	PongTimeout time.Duration

	// DrainDelay is how long Drain keeps accepting upgrades after /readyz
	// has turned 503, so that load balancers take the node out of rotation
	// before it refuses anyone: make it at least two health-check
	// intervals. If zero, 3s is used. Negative means no delay: upgrades are
	// refused as soon as Drain starts.
	DrainDelay time.Duration
	// DrainWindow is the time over which Drain spreads the closing of live
	// connections. If zero, 30s is used.
	DrainWindow time.Duration
	// ReconnectJitter bounds the random after_ms advice sent in reconnect
	// and resync frames and the Retry-After of refused upgrades.
	// If zero, 5s is used.
	ReconnectJitter time.Duration

	// JWTSecret enables auth: every upgrade needs a valid HS256 token signed
	// with it. If empty, the server is open (development mode).
	JWTSecret []byte
	// RefreshWindow is how long before its token expires a connection is
	// sent {"op":"refresh_due"}: at a moment drawn per connection between
	// RefreshWindow and RefreshWindow/2 before exp, so that tokens issued
	// together are refreshed apart (refresh.go). A token with less than
	// that left when it arrives is told at the next heartbeat tick.
	// If zero, 60s is used. Negative means no refresh_due frames (clients
	// may still refresh; an expired token still closes with 4001).
	RefreshWindow time.Duration
	// AllowClientPublish lets clients of an open server publish. With
	// JWTSecret set, the token's publish claim decides instead.
	AllowClientPublish bool
	// AllowedOrigins lists the Origin values allowed to upgrade ("*" allows
	// any). If empty, only same-origin requests and requests without an
	// Origin header (non-browser clients) are allowed.
	AllowedOrigins []string
	// APIKey protects the HTTP API (Authorization: Bearer <key>). If empty,
	// the API answers only loopback callers.
	APIKey string

	// StaticFS, if set, is served at "/" ("/" → demo/index.html).
	StaticFS fs.FS
	// Metrics receives the server's metrics. If nil, a new set is used.
	// Pass the set the bus registers into so /metrics shows both.
	Metrics *metrics.Set

	// Pollers is the number of epoll loops. If zero, GOMAXPROCS is used.
	Pollers int
	// Flushers is the number of write goroutines. If zero, GOMAXPROCS is used.
	Flushers int
	// FanoutChunk is the number of subscribers above which a broadcast is
	// split across fan-out workers. If zero, 2,048 is used.
	FanoutChunk int

	// Presence lists glob patterns (as in token claims) of the channels
	// whose subscribers are tracked as presence members (presence.go). If
	// empty, no channel has presence but those of JoinLeave.
	Presence []string
	// JoinLeave lists glob patterns of the channels whose joins and leaves
	// are announced to their subscribers; they have presence too. If
	// empty, none are.
	JoinLeave []string
	// PresenceMaxMembers bounds the members listed by a presence answer
	// (the counts are always exact). If zero, 100 is used; negative lists
	// none.
	PresenceMaxMembers int
	// JoinLeaveMax is the presence count above which a channel's joins and
	// leaves are no longer sent to its subscribers (counted in
	// tether_join_leave_events_total{result="suppressed"}). If zero, 1,000
	// is used. Negative means no bound.
	JoinLeaveMax int
}

func (c Config) withDefaults() (Config, error) {
	if c.Listen == "" {
		c.Listen = ":8080"
	}
	if c.NodeID == "" {
		host, _ := os.Hostname()
		if host == "" {
			host = "tether"
		}
		c.NodeID = fmt.Sprintf("%s-%04x", host, randUint64()&0xffff)
	}
	if c.MaxConns == 0 {
		c.MaxConns = 1024
		var rl syscall.Rlimit
		if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil && rl.Cur > 1024 {
			limit := int(min(rl.Cur, 1<<30))
			c.MaxConns = limit - min(max(limit/64, 128), 4096)
		}
	}
	if c.AcceptRate == 0 {
		c.AcceptRate = 10000
	}
	if c.AcceptBurst <= 0 {
		c.AcceptBurst = max(1, int(c.AcceptRate/2))
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = 10 * time.Second
	}
	if c.MaxMessageSize <= 0 {
		c.MaxMessageSize = 64 << 10
	}
	if c.MaxHandshakes <= 0 {
		c.MaxHandshakes = 4096
	}
	if c.MaxHeaderBytes <= 0 {
		c.MaxHeaderBytes = 16 << 10
	}
	if c.MaxAPIBody <= 0 {
		c.MaxAPIBody = max(4<<20, 4*(c.MaxMessageSize+1024))
	}
	if c.MaxConnBuffer <= 0 {
		c.MaxConnBuffer = 1 << 20
	}
	if c.ClusterTimeout <= 0 {
		c.ClusterTimeout = 2 * time.Second
	}
	if c.MaxSubsPerConn == 0 {
		c.MaxSubsPerConn = 100
	}
	if c.ClientMsgRate == 0 {
		c.ClientMsgRate = 50
	}
	if c.ClientMsgBurst <= 0 {
		c.ClientMsgBurst = max(1, int(2*c.ClientMsgRate))
	}
	if c.PingInterval <= 0 {
		c.PingInterval = 25 * time.Second
	}
	if c.PongTimeout <= 0 {
		c.PongTimeout = 10 * time.Second
	}
	if c.DrainDelay == 0 {
		c.DrainDelay = 3 * time.Second
	}
	if c.RefreshWindow == 0 {
		c.RefreshWindow = 60 * time.Second
	}
	if c.DrainWindow <= 0 {
		c.DrainWindow = 30 * time.Second
	}
	if c.ReconnectJitter <= 0 {
		c.ReconnectJitter = 5 * time.Second
	}
	if c.Metrics == nil {
		c.Metrics = metrics.NewSet()
	}
	if c.Pollers <= 0 {
		c.Pollers = runtime.GOMAXPROCS(0)
	}
	if c.Flushers <= 0 {
		c.Flushers = runtime.GOMAXPROCS(0)
	}
	if c.FanoutChunk <= 0 {
		c.FanoutChunk = 2048
	}
	if c.PresenceMaxMembers == 0 {
		c.PresenceMaxMembers = 100
	}
	if c.JoinLeaveMax == 0 {
		c.JoinLeaveMax = 1000
	}
	if c.MaxConnBuffer > 1<<30 {
		return c, fmt.Errorf("%w: max conn buffer (%d) must be at most 1 GiB", ErrInvalidConfig, c.MaxConnBuffer)
	}
	if c.MaxConnBuffer < c.MaxMessageSize+4096 {
		return c, fmt.Errorf("%w: max conn buffer (%d) must exceed max message size (%d) by 4 KiB", ErrInvalidConfig, c.MaxConnBuffer, c.MaxMessageSize)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return c, fmt.Errorf("%w: a TLS certificate needs its key and a key its certificate", ErrInvalidConfig)
	}
	return c, nil
}
