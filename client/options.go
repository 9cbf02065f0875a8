package client

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"time"
)

// Options configures a Client. The zero value connects without credentials
// and uses the documented defaults.
type Options struct {
	// Token is sent as "Authorization: Bearer <Token>" in every upgrade
	// request. If empty (and GetToken is nil), no credentials are sent.
	Token string
	// GetToken, if set, is called before every connection attempt and its
	// token is used instead of Token. It is also called on the server's
	// refresh_due, a while before the token expires: its token then
	// replaces the old one on the open connection (EventTokenRefreshed,
	// EventRefreshFailed), with no reconnect. After the server refuses a token
	// (HTTP 401 or close 4001) the client keeps asking GetToken, with
	// backoff, until it returns a different one. If nil, a refused Token
	// stops the client for good (Err reports ErrUnauthorized).
	GetToken func(ctx context.Context) (string, error)
	// Header is added to every upgrade request: Origin, a cookie, or
	// credentials of another scheme (an Authorization header here is sent
	// as is, unless Token or GetToken provides one). A Host entry replaces
	// the URL's host in the request. If nil, only the WebSocket headers and
	// the token are sent.
	Header http.Header
	// Proxy returns the HTTP proxy to reach the node through, for a request
	// to the node's URL with the scheme http (ws://) or https (wss://), or
	// nil for a direct connection. The client asks the proxy for a tunnel
	// with CONNECT, for ws:// and wss:// alike (RFC 6455, section 4.1); the
	// proxy's URL may be http:// or https:// and carry user:password for
	// Basic proxy authentication. If nil, http.ProxyFromEnvironment is used
	// (HTTP_PROXY for ws://, HTTPS_PROXY for wss://, NO_PROXY; never for
	// localhost or loopback addresses); a func that returns nil, nil turns
	// proxies off.
	Proxy func(*http.Request) (*url.URL, error)
	// Dialer opens TCP connections, to the node or to the proxy. If nil, a
	// zero net.Dialer is used.
	Dialer func(ctx context.Context, network, addr string) (net.Conn, error)
	// TLSConfig configures wss:// connections, and the connection to an
	// https:// proxy. If nil, the default configuration is used; an empty
	// ServerName is the host being reached.
	TLSConfig *tls.Config

	// MinBackoff is the backoff window of the first reconnect attempt: the
	// client waits a uniformly random time in [0, MinBackoff) (full
	// jitter). Each failed attempt doubles the window, up to MaxBackoff.
	// If zero, 500ms is used.
	MinBackoff time.Duration
	// MaxBackoff caps the backoff window. If zero, 30s is used.
	MaxBackoff time.Duration
	// WatchdogGrace is how long past the server's ping interval the client
	// waits for any frame before it closes the connection as dead and
	// reconnects (it sends its own ping once the interval has passed in
	// silence). If zero, 5s is used; negative disables the watchdog.
	WatchdogGrace time.Duration
	// HandshakeTimeout bounds one connection attempt: dial, proxy tunnel,
	// TLS, upgrade and the welcome frame. It also bounds every write. If zero, 10s is used.
	HandshakeTimeout time.Duration
	// QueueSize bounds the messages received but not yet handed to
	// handlers. A client whose handlers fall further behind drops the
	// connection and recovers the rest after reconnecting.
	// If zero, 4,096 is used.
	QueueSize int
	// MaxMessageSize bounds one message from the server in bytes; a larger
	// one fails the connection with 1009. If zero, 16 MiB is used.
	MaxMessageSize int

	// OnEvent, if set, receives state events. Calls are made one at a time
	// from the client's delivery goroutine, in order with message
	// deliveries; it must return promptly.
	OnEvent func(Event)
	// OnServerMessage, if set, receives the messages of the channels the
	// server subscribed the client to on its own (the application's POST
	// /api/subscribe; EventSubscribed), from the delivery goroutine like
	// any handler. If nil, those subscriptions are kept, and restored after
	// a reconnect, but their messages are dropped.
	OnServerMessage func(Message)
	// Logger receives connection-level diagnostics at Debug level.
	// If nil, nothing is logged.
	Logger *slog.Logger
}

// dialFunc opens a network connection, as net.Dialer.DialContext does.
type dialFunc = func(ctx context.Context, network, addr string) (net.Conn, error)

func (o *Options) dialer() dialFunc {
	if o.Dialer == nil {
		var d net.Dialer
		return d.DialContext
	}
	return o.Dialer
}

func (o *Options) proxy() func(*http.Request) (*url.URL, error) {
	if o.Proxy == nil {
		return http.ProxyFromEnvironment
	}
	return o.Proxy
}

func (o *Options) minBackoff() time.Duration {
	if o.MinBackoff <= 0 {
		return 500 * time.Millisecond
	}
	return o.MinBackoff
}

func (o *Options) maxBackoff() time.Duration {
	if o.MaxBackoff <= 0 {
		return max(30*time.Second, o.minBackoff())
	}
	return max(o.MaxBackoff, o.minBackoff())
}

func (o *Options) handshakeTimeout() time.Duration {
	if o.HandshakeTimeout <= 0 {
		return 10 * time.Second
	}
	return o.HandshakeTimeout
}

func (o *Options) watchdogGrace() time.Duration {
	if o.WatchdogGrace == 0 {
		return 5 * time.Second
	}
	return o.WatchdogGrace
}

func (o *Options) queueSize() int {
	if o.QueueSize <= 0 {
		return 4096
	}
	return o.QueueSize
}

func (o *Options) maxMessageSize() int {
	if o.MaxMessageSize <= 0 {
		return 16 << 20
	}
	return o.MaxMessageSize
}
