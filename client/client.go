package client

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"tether/internal/proto"
)

// Options configures a Client. The zero value connects without credentials
// and uses the documented defaults.
type Options struct {
	// Token is sent as "Authorization: Bearer <Token>" in every upgrade
	// request. If empty (and GetToken is nil), no credentials are sent.
	Token string
	// GetToken, if set, is called before every connection attempt and its
	// token is used instead of Token. After the server refuses a token
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

// EventType names a state event. The names match tether.js's events.
type EventType string

// State events.
const (
	// EventConnecting: an attempt to connect starts (Attempt).
	EventConnecting EventType = "connecting"
	// EventConnected: the server's welcome arrived (Node, Conn,
	// PingInterval). Subscriptions are being restored.
	EventConnected EventType = "connected"
	// EventDisconnected: a connection ended or an attempt failed (Err);
	// the next attempt follows after Delay unless Final is set.
	EventDisconnected EventType = "disconnected"
	// EventRecovered: after a reconnect, every message the channel missed
	// will be delivered before live ones (Channel, Offset, Epoch).
	EventRecovered EventType = "recovered"
	// EventResyncNeeded: messages of Channel were lost; refetch its state
	// by other means (Reason; After for a server resync). Delivery
	// continues from Offset/Epoch.
	EventResyncNeeded EventType = "resync_needed"
	// EventSubscribeFailed: the server refused to restore a subscription
	// after a reconnect (Channel, Err); it has been removed.
	EventSubscribeFailed EventType = "subscribe_failed"
)

// Reasons of an EventResyncNeeded.
const (
	// ReasonNotRecovered: history no longer covers the gap after a
	// reconnect (subscribed with recovered:false).
	ReasonNotRecovered = "not_recovered"
	// ReasonResync: the server sent a resync frame.
	ReasonResync = "resync"
	// ReasonGap: an offset was skipped.
	ReasonGap = "gap"
)

// Event is a state change of a Client. Only the fields listed for its Type
// are set.
type Event struct {
	Type EventType
	// Attempt counts attempts since the last successful connection,
	// starting at 1 (EventConnecting).
	Attempt int
	// Node and Conn identify the connection; PingInterval is the server's
	// ping interval (EventConnected).
	Node, Conn   string
	PingInterval time.Duration
	// Err says why (EventDisconnected, EventSubscribeFailed).
	Err error
	// Delay is the wait before the next attempt (EventDisconnected).
	Delay time.Duration
	// Final reports that the client will not reconnect: it was closed, or
	// its credentials were refused and GetToken is nil (EventDisconnected).
	Final bool
	// Channel, Offset and Epoch are the channel and its position after the
	// event (EventRecovered, EventResyncNeeded, EventSubscribeFailed).
	Channel string
	Offset  uint64
	Epoch   string
	// Reason is ReasonNotRecovered, ReasonResync or ReasonGap
	// (EventResyncNeeded).
	Reason string
	// After is the server's advice to wait before refetching (jitter),
	// zero unless Reason is ReasonResync.
	After time.Duration
}

// Message is one message of a subscribed channel.
type Message struct {
	Channel string
	// Offset is the message's position in the channel; offsets grow by one
	// per message within an Epoch.
	Offset uint64
	Epoch  string
	// Data is the published JSON value. The handler may keep it.
	Data json.RawMessage
}

// Client is a connection to a tether node that reconnects by itself,
// restores its subscriptions and recovers missed messages. Its methods are
// safe for concurrent use.
//
// Handlers and OnEvent run on one delivery goroutine, in order, apart from
// the goroutines that read the connection, run the watchdog and reconnect.
// They may call Publish, Subscribe and Unsubscribe, but not Close (which
// waits for the delivery goroutine). A handler that blocks stalls delivery
// only; handlers that fall more than Options.QueueSize messages behind make
// the client drop the connection and recover later (ErrSlowHandler).
type Client struct {
	// Immutable after newClient.
	url        *url.URL
	opts       Options
	log        *slog.Logger
	ctx        context.Context // cancelled by Close or when the client stops
	cancel     context.CancelFunc
	done       chan struct{} // closed when the client's goroutines have exited
	runDone    chan struct{} // closed when the run goroutine is about to exit
	dispatched chan struct{} // closed when the dispatch goroutine exits

	// Owned by the run goroutine.
	token    string // token of the current or last connection
	refused  bool   // the server refused rejected and no token since
	rejected string // token the server refused last

	// Owned by the dispatch goroutine.
	batch []delivery // deliveries being handed out

	mu      sync.Mutex // guards the fields below
	conn    *wsConn
	up      chan struct{} // closed while conn != nil; replaced on disconnect
	subs    map[string]*Subscription
	pending map[uint64]*request // requests sent on conn awaiting a reply
	nextID  uint64
	closed  bool
	err     error         // why the client stopped, once closed
	queue   []delivery    // deliveries for the run goroutine
	ready   chan struct{} // capacity 1: signals a non-empty queue
}

// request is a frame awaiting the server's reply.
type request struct {
	sub   *Subscription // set for subscribe requests
	since bool          // the subscribe carried since
	reply chan reply    // capacity 1; nil when nobody waits
}

type reply struct {
	offset uint64
	err    error
}

// delivery is a message for a handler or an event for OnEvent.
type delivery struct {
	sub *Subscription
	msg Message
	ev  *Event
}

// Subscription is a client's subscription to one channel.
type Subscription struct {
	// Immutable after Subscribe.
	c       *Client
	channel string
	fn      func(Message)

	removed atomic.Bool // set by Unsubscribe or a refused subscribe

	// Guarded by c.mu.
	active bool     // confirmed on the current connection
	hasPos bool     // pos is known
	pos    position // last message queued for delivery
}

// Dial connects to the tether node at rawURL (ws:// or wss://; an empty path
// means /ws) and returns once the server's welcome arrived. ctx bounds this
// first attempt only. From then on the client reconnects by itself until
// Close.
func Dial(ctx context.Context, rawURL string, opts Options) (*Client, error) {
	c, err := newClient(rawURL, opts)
	if err != nil {
		return nil, err
	}
	c.emit(Event{Type: EventConnecting, Attempt: 1})
	token, err := c.getToken(ctx)
	if err != nil {
		c.abandon()
		return nil, fmt.Errorf("cannot get a token: %w", err)
	}
	hctx, cancel := context.WithTimeout(ctx, c.opts.handshakeTimeout())
	conn, err := handshake(hctx, c.url, token, &c.opts)
	cancel()
	if err != nil {
		c.abandon()
		return nil, fmt.Errorf("cannot connect to %s: %w", c.url.Redacted(), err)
	}
	c.token = token
	c.emitConnected(conn)
	// Attached before Dial returns, so that the caller's first Subscribe
	// waits for the server's confirmation.
	reqs := c.attach(conn)
	go c.run(conn, reqs)
	return c, nil
}

// Connect returns a client that connects to rawURL in the background and
// keeps reconnecting until Close. It fails only on a malformed URL.
// Subscriptions and publishes made before the connection is up wait for it.
func Connect(rawURL string, opts Options) (*Client, error) {
	c, err := newClient(rawURL, opts)
	if err != nil {
		return nil, err
	}
	go c.run(nil, nil)
	return c, nil
}

func newClient(rawURL string, opts Options) (*Client, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("cannot parse url %q: %w", rawURL, err)
	}
	switch u.Scheme {
	case "ws", "wss":
	case "http":
		u.Scheme = "ws"
	case "https":
		u.Scheme = "wss"
	default:
		return nil, fmt.Errorf("cannot use url %q: scheme must be ws or wss", rawURL)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("cannot use url %q: no host", rawURL)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/ws"
	}
	c := &Client{
		url:        u,
		opts:       opts,
		log:        opts.Logger,
		done:       make(chan struct{}),
		runDone:    make(chan struct{}),
		dispatched: make(chan struct{}),
		up:         make(chan struct{}),
		subs:       make(map[string]*Subscription),
		pending:    make(map[uint64]*request),
		ready:      make(chan struct{}, 1),
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	go c.dispatchLoop()
	return c, nil
}

// abandon stops a client whose run goroutine never started.
func (c *Client) abandon() {
	c.cancel()
	c.finish()
}

// finish ends the run goroutine's part and waits for the dispatch
// goroutine to deliver what is queued.
func (c *Client) finish() {
	close(c.runDone)
	<-c.dispatched
	close(c.done)
}

// Close closes the connection and stops reconnecting. Pending publishes
// fail with ErrDisconnected; later calls fail with ErrClosed. Close sends a
// close frame and waits for the server's answer for at most 1s (or
// Options.HandshakeTimeout if shorter), waits for the client's goroutines
// to exit, and is idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	if !c.closed {
		c.closed, c.err = true, ErrClosed
	}
	c.mu.Unlock()
	c.cancel()
	<-c.done
	return nil
}

// Done returns a channel closed once the client has stopped: after Close,
// or when the server refused its credentials and GetToken is nil.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns why the client stopped (ErrClosed, or an error matching
// ErrUnauthorized), or nil while it runs.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Subscribe subscribes fn to channel. While connected it returns once the
// server has confirmed the subscription (a refusal is returned as an
// *Error); while disconnected it returns at once and the subscription is
// made on the next connection. From then on fn receives every message of
// channel exactly once, in offset order, across reconnects; see
// EventRecovered and EventResyncNeeded for the cases where history could
// not cover a gap.
func (c *Client) Subscribe(channel string, fn func(Message)) (*Subscription, error) {
	if err := proto.CheckChannel(channel); err != nil {
		return nil, fmt.Errorf("cannot subscribe to %q: %w", channel, &Error{Code: proto.CodeBadRequest, Message: err.Error()})
	}
	if fn == nil {
		return nil, fmt.Errorf("cannot subscribe to %q: nil handler", channel)
	}
	c.mu.Lock()
	if c.closed {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	if c.subs[channel] != nil {
		c.mu.Unlock()
		return nil, fmt.Errorf("cannot subscribe to %q: %w", channel, ErrAlreadySubscribed)
	}
	s := &Subscription{c: c, channel: channel, fn: fn}
	c.subs[channel] = s
	conn := c.conn
	if conn == nil {
		c.mu.Unlock()
		return s, nil
	}
	id := c.newIDLocked()
	req := &request{sub: s, reply: make(chan reply, 1)}
	c.pending[id] = req
	c.mu.Unlock()

	if err := conn.writeJSON(outFrame{Op: proto.OpSubscribe, Channel: channel, ID: id}); err != nil {
		// The connection is failing; the subscription is made again on the
		// next one.
		return s, nil
	}
	if r := <-req.reply; r.err != nil && !errors.Is(r.err, ErrDisconnected) {
		return nil, fmt.Errorf("cannot subscribe to %q: %w", channel, r.err)
	}
	return s, nil
}

// Publish publishes data (encoded with encoding/json) to channel and returns
// the message's offset once the server has stored it. While disconnected it
// waits for the next connection. A refusal is returned as an *Error; if the
// connection drops before the reply, the error is ErrDisconnected and the
// message may or may not have been published.
func (c *Client) Publish(ctx context.Context, channel string, data any) (uint64, error) {
	p, err := json.Marshal(data)
	if err != nil {
		return 0, fmt.Errorf("cannot encode data for %q: %w", channel, err)
	}
	for {
		c.mu.Lock()
		if c.closed {
			err := c.err
			c.mu.Unlock()
			return 0, err
		}
		conn := c.conn
		if conn == nil {
			up := c.up
			c.mu.Unlock()
			select {
			case <-up:
			case <-c.ctx.Done():
			case <-ctx.Done():
				return 0, ctx.Err()
			}
			continue
		}
		id := c.newIDLocked()
		req := &request{reply: make(chan reply, 1)}
		c.pending[id] = req
		c.mu.Unlock()

		if err := conn.writeJSON(outFrame{Op: proto.OpPublish, Channel: channel, Data: p, ID: id}); err != nil {
			c.forget(id)
			return 0, fmt.Errorf("cannot publish to %q: %w", channel, ErrDisconnected)
		}
		select {
		case r := <-req.reply:
			if r.err != nil {
				return 0, fmt.Errorf("cannot publish to %q: %w", channel, r.err)
			}
			return r.offset, nil
		case <-ctx.Done():
			c.forget(id)
			return 0, ctx.Err()
		}
	}
}

// Channel returns the subscription's channel.
func (s *Subscription) Channel() string { return s.channel }

// Position returns the offset and epoch of the last message queued for the
// handler (or, before any, the position the server reported on
// subscribing).
func (s *Subscription) Position() (offset uint64, epoch string) {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.pos.Offset, s.pos.Epoch
}

// Unsubscribe ends the subscription: the handler is not called again, except
// for a call already in progress. It does not wait for the server, and
// calling it again does nothing.
func (s *Subscription) Unsubscribe() {
	c := s.c
	c.mu.Lock()
	if s.removed.Swap(true) {
		c.mu.Unlock()
		return
	}
	if c.subs[s.channel] == s {
		delete(c.subs, s.channel)
	}
	conn := c.conn
	c.mu.Unlock()
	if conn != nil {
		// The server forgets subscriptions of a failing connection anyway.
		conn.writeJSON(outFrame{Op: proto.OpUnsubscribe, Channel: s.channel})
	}
}

func (c *Client) newIDLocked() uint64 {
	c.nextID++
	return c.nextID
}

// forget drops a request nobody waits for any more.
func (c *Client) forget(id uint64) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

// getToken returns the token for the next attempt.
func (c *Client) getToken(ctx context.Context) (string, error) {
	if c.opts.GetToken == nil {
		return c.opts.Token, nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.handshakeTimeout())
	defer cancel()
	return c.opts.GetToken(ctx)
}

// emit queues ev for OnEvent, in order with message deliveries.
func (c *Client) emit(ev Event) {
	if c.opts.OnEvent == nil {
		return
	}
	c.mu.Lock()
	c.enqueueLocked(delivery{ev: &ev})
	c.mu.Unlock()
}

func (c *Client) emitConnected(conn *wsConn) {
	w := &conn.welcome
	c.log.Debug("tether connected", "url", c.url.Redacted(), "node", w.Node, "conn", w.Conn)
	c.emit(Event{Type: EventConnected, Node: w.Node, Conn: w.Conn, PingInterval: w.pingInterval(0)})
}

// run is the client's lifecycle goroutine: it serves each connection (and
// runs its watchdog), and waits and reconnects in between. conn is the connection Dial made
// (attached, with reqs restoring subscriptions), or nil.
func (c *Client) run(conn *wsConn, reqs []outFrame) {
	defer c.finish()
	var (
		err      error         // why the last connection or attempt failed
		wait     time.Duration // before the next attempt
		failures int           // consecutive failed attempts
	)
	for {
		if conn != nil {
			var keep bool
			err, wait, keep = c.serve(conn, reqs)
			conn = nil
			if keep {
				wait = fullJitter(backoffWindow(c.opts.minBackoff(), c.opts.maxBackoff(), failures))
			} else {
				failures = 0
			}
		}
		if c.ctx.Err() != nil {
			c.stop(ErrClosed, err)
			return
		}
		if errors.Is(err, ErrUnauthorized) {
			if c.opts.GetToken == nil {
				c.log.Warn("tether token refused; not reconnecting", "url", c.url.Redacted(), "err", err)
				c.stop(err, err)
				return
			}
			c.refused, c.rejected = true, c.token
		}
		if err != nil {
			c.log.Debug("tether disconnected", "url", c.url.Redacted(), "err", err, "retry_in", wait)
			c.emit(Event{Type: EventDisconnected, Err: err, Delay: wait})
		}
		if !c.sleep(wait) {
			c.stop(ErrClosed, nil)
			return
		}
		failures++
		c.emit(Event{Type: EventConnecting, Attempt: failures})
		conn, err = c.attempt()
		switch {
		case err == nil:
			c.refused, c.rejected = false, ""
			c.emitConnected(conn)
			reqs = c.attach(conn)
		case c.ctx.Err() != nil:
			err = nil
		default:
			wait = fullJitter(backoffWindow(c.opts.minBackoff(), c.opts.maxBackoff(), failures))
			var he *HandshakeError
			if errors.As(err, &he) && he.RetryAfter > 0 {
				// The server already spread its advice; the jitter spreads
				// clients within its one-second resolution.
				wait = he.RetryAfter + fullJitter(time.Second)
			}
		}
	}
}

// attempt makes one connection attempt.
func (c *Client) attempt() (*wsConn, error) {
	token, err := c.getToken(c.ctx)
	if err != nil {
		return nil, fmt.Errorf("cannot get a token: %w", err)
	}
	if c.refused && token == c.rejected {
		return nil, fmt.Errorf("%w: GetToken returned the refused token", ErrUnauthorized)
	}
	c.token = token
	ctx, cancel := context.WithTimeout(c.ctx, c.opts.handshakeTimeout())
	defer cancel()
	return handshake(ctx, c.url, token, &c.opts)
}

// sleep waits d or until the client is closed, reporting whether it slept.
func (c *Client) sleep(d time.Duration) bool {
	if d <= 0 {
		return c.ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.ctx.Done():
		return false
	}
}

// stop marks the client stopped with err and reports the final
// disconnection (cause is what ended the last connection, if anything).
func (c *Client) stop(err, cause error) {
	c.mu.Lock()
	if !c.closed {
		c.closed, c.err = true, err
	}
	c.mu.Unlock()
	c.cancel()
	if cause == nil {
		cause = err
	}
	c.emit(Event{Type: EventDisconnected, Err: cause, Final: true})
}

// serve runs one attached connection until it ends; reqs restore the
// subscriptions. It returns why the connection ended, how long to wait
// before reconnecting, and whether the backoff should keep growing (the
// connection failed for a reason a quick retry would not fix).
func (c *Client) serve(conn *wsConn, reqs []outFrame) (err error, wait time.Duration, keep bool) {
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		conn.err = c.readLoop(conn)
	}()
	for _, f := range reqs {
		if conn.writeJSON(f) != nil {
			break // the reader sees the failure
		}
	}

	interval := conn.welcome.pingInterval(25 * time.Second)
	grace := c.opts.watchdogGrace()
	timer := time.NewTimer(interval)
	defer timer.Stop()
	var pingedFor int64 // lastFrame value our ping answered to
loop:
	for {
		select {
		case <-timer.C:
			if grace < 0 {
				continue
			}
			last := conn.lastFrame.Load()
			idle := time.Since(time.Unix(0, last))
			switch {
			case idle >= interval+grace:
				err = ErrWatchdog
				// The path looks dead: do not wait for an answer.
				conn.close(proto.CloseHeartbeatTimeout, "watchdog", watchdogCloseWait)
				break loop
			case idle >= interval:
				if pingedFor != last {
					pingedFor = last
					conn.writeText(pingJSON)
				}
				timer.Reset(interval + grace - idle)
			default:
				timer.Reset(interval - idle)
			}
		case <-readerDone:
			break loop
		case <-c.ctx.Done():
			err = ErrClosed
			conn.close(proto.CloseNormal, "", conn.closeWait())
			break loop
		}
	}
	conn.nc.Close()
	<-readerDone
	c.detach(conn)
	if err == nil {
		err = conn.err
	}
	if at := conn.reconnectAt.Load(); at != 0 {
		wait = max(0, time.Until(time.Unix(0, at)))
	} else {
		wait = fullJitter(c.opts.minBackoff())
	}
	var pe *Error
	keep = errors.As(err, &pe) && pe.temporary()
	return err, wait, keep
}

// attach makes conn the current connection and returns the subscribe frames
// that restore every subscription, registered as pending requests.
func (c *Client) attach(conn *wsConn) []outFrame {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.conn = conn
	close(c.up)
	frames := make([]outFrame, 0, len(c.subs))
	for _, s := range c.subs {
		id := c.newIDLocked()
		f := outFrame{Op: proto.OpSubscribe, Channel: s.channel, ID: id}
		if s.hasPos {
			f.Since = &position{Offset: s.pos.Offset, Epoch: s.pos.Epoch}
		}
		c.pending[id] = &request{sub: s, since: s.hasPos}
		frames = append(frames, f)
	}
	return frames
}

// detach ends conn's tenure as the current connection: waiting requests
// fail with ErrDisconnected and every subscription awaits its restore.
func (c *Client) detach(conn *wsConn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != conn {
		return
	}
	c.conn = nil
	c.up = make(chan struct{})
	for id, req := range c.pending {
		if req.reply != nil {
			req.reply <- reply{err: ErrDisconnected}
		}
		delete(c.pending, id)
	}
	for _, s := range c.subs {
		s.active = false
	}
}

// dispatchLoop is the client's delivery goroutine: it hands queued messages
// to handlers and events to OnEvent, so that user code never stalls the
// connection's reader, watchdog or reconnects. It drains the queue and exits
// once the run goroutine has.
func (c *Client) dispatchLoop() {
	defer close(c.dispatched)
	for {
		select {
		case <-c.ready:
			c.dispatch()
		case <-c.runDone:
			c.dispatch()
			return
		}
	}
}

// dispatch hands out everything queued. It runs on the dispatch goroutine.
func (c *Client) dispatch() {
	for {
		c.mu.Lock()
		c.batch, c.queue = c.queue, c.batch[:0]
		c.mu.Unlock()
		if len(c.batch) == 0 {
			return
		}
		for i := range c.batch {
			d := &c.batch[i]
			if d.ev != nil {
				if c.opts.OnEvent != nil {
					c.opts.OnEvent(*d.ev)
				}
			} else if !d.sub.removed.Load() {
				d.sub.fn(d.msg)
			}
		}
		clear(c.batch)
	}
}

// enqueueLocked queues a delivery for the run goroutine. c.mu must be held.
func (c *Client) enqueueLocked(d delivery) {
	c.queue = append(c.queue, d)
	select {
	case c.ready <- struct{}{}:
	default:
	}
}

// readLoop reads conn's frames until it fails and applies them; it returns
// why the connection ended. It runs on the connection's reader goroutine
// and never calls user code.
func (c *Client) readLoop(conn *wsConn) error {
	for {
		f, err := conn.next()
		if err != nil {
			return err
		}
		if err := c.apply(conn, f); err != nil {
			conn.close(proto.CloseNormal, "", conn.closeWait())
			return err
		}
	}
}

// apply applies one server frame. A non-nil error ends the connection.
func (c *Client) apply(conn *wsConn, f *inFrame) error {
	switch f.Op {
	case proto.OpMessage:
		return c.applyMessage(f)
	case proto.OpSubscribed:
		c.applySubscribed(f)
	case proto.OpAck:
		c.answer(f.ID, reply{offset: f.Offset})
	case proto.OpError:
		return c.applyError(f)
	case proto.OpResync:
		c.mu.Lock()
		if s := c.subs[f.Channel]; s != nil && s.active {
			s.pos = position{Offset: f.Offset, Epoch: f.Epoch}
			c.enqueueLocked(delivery{ev: &Event{
				Type: EventResyncNeeded, Channel: s.channel, Offset: f.Offset, Epoch: f.Epoch,
				Reason: ReasonResync, After: time.Duration(f.AfterMS) * time.Millisecond,
			}})
		}
		c.mu.Unlock()
	case proto.OpReconnect:
		conn.reconnectAt.Store(time.Now().Add(time.Duration(max(0, f.AfterMS)) * time.Millisecond).UnixNano())
	case proto.OpPing:
		if err := conn.writeText(pongJSON); err != nil {
			return err
		}
	}
	// pong, unsubscribed and unknown ops need nothing.
	return nil
}

func (c *Client) applyMessage(f *inFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.subs[f.Channel]
	if s == nil || !s.active || f.Offset <= s.pos.Offset {
		// Not ours (any more), sent before the subscribe took effect, or
		// already delivered.
		return nil
	}
	if len(c.queue) >= c.opts.queueSize() {
		return fmt.Errorf("cannot queue message of %q: %w", f.Channel, ErrSlowHandler)
	}
	if f.Offset != s.pos.Offset+1 {
		c.enqueueLocked(delivery{ev: &Event{
			Type: EventResyncNeeded, Channel: s.channel, Offset: f.Offset, Epoch: s.pos.Epoch, Reason: ReasonGap,
		}})
	}
	s.pos.Offset = f.Offset
	c.enqueueLocked(delivery{sub: s, msg: Message{Channel: s.channel, Offset: f.Offset, Epoch: s.pos.Epoch, Data: f.Data}})
	return nil
}

func (c *Client) applySubscribed(f *inFrame) {
	c.mu.Lock()
	req := c.pending[f.ID]
	if req == nil || req.sub == nil {
		c.mu.Unlock()
		return
	}
	delete(c.pending, f.ID)
	s := req.sub
	if !s.removed.Load() {
		s.active = true
		switch {
		case req.since && f.Recovered && f.Epoch == s.pos.Epoch:
			// Every message after s.pos follows; older ones are dropped.
			c.enqueueLocked(delivery{ev: &Event{Type: EventRecovered, Channel: s.channel, Offset: s.pos.Offset, Epoch: s.pos.Epoch}})
		case req.since:
			s.pos = position{Offset: f.Offset, Epoch: f.Epoch}
			c.enqueueLocked(delivery{ev: &Event{
				Type: EventResyncNeeded, Channel: s.channel, Offset: f.Offset, Epoch: f.Epoch, Reason: ReasonNotRecovered,
			}})
		default:
			s.pos = position{Offset: f.Offset, Epoch: f.Epoch}
			s.hasPos = true
		}
	}
	c.mu.Unlock()
	if req.reply != nil {
		req.reply <- reply{}
	}
}

func (c *Client) applyError(f *inFrame) error {
	perr := &Error{Code: f.Code, Message: f.Message}
	c.mu.Lock()
	req := c.pending[f.ID]
	if req == nil {
		c.mu.Unlock()
		c.log.Debug("tether error frame", "url", c.url.Redacted(), "code", f.Code, "message", f.Message)
		return nil
	}
	delete(c.pending, f.ID)
	s := req.sub
	if s == nil {
		c.mu.Unlock()
		req.reply <- reply{err: perr}
		return nil
	}
	if req.reply == nil && perr.temporary() {
		// A restore the server cannot serve now: reconnect with backoff
		// and try again rather than lose the subscription.
		c.mu.Unlock()
		return fmt.Errorf("cannot restore subscription to %q: %w", s.channel, perr)
	}
	if !s.removed.Swap(true) {
		if c.subs[s.channel] == s {
			delete(c.subs, s.channel)
		}
		if req.reply == nil {
			c.enqueueLocked(delivery{ev: &Event{
				Type: EventSubscribeFailed, Channel: s.channel, Offset: s.pos.Offset, Epoch: s.pos.Epoch, Err: perr,
			}})
		}
	}
	c.mu.Unlock()
	if req.reply != nil {
		req.reply <- reply{err: perr}
	}
	return nil
}

// answer completes the request id with r.
func (c *Client) answer(id uint64, r reply) {
	c.mu.Lock()
	req := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	if req != nil && req.reply != nil {
		req.reply <- r
	}
}
