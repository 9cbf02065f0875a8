package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"tether/internal/proto"
)

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
	refreshDue chan struct{} // capacity 1: the server sent refresh_due (refresh.go)

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
	exp      int64 // refreshed
	offset   uint64
	replayed bool      // ack of an idempotency key's first publish
	presence *Presence // the answer of a presence request
	err      error
}

// Subscription is a client's subscription to one channel.
type Subscription struct {
	// Immutable after Subscribe.
	c       *Client
	channel string
	fn      func(Message)

	server  bool        // made by the server (serversubs.go)
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
		refreshDue: make(chan struct{}, 1),
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
	r, err := c.publish(ctx, channel, p, "")
	return r.offset, err
}

// PublishIdempotent publishes data to channel like Publish, but at most
// once for key within the server's --idempotency-window: when the
// connection drops before the reply, it sends the publish again, with the
// same key, on the next connection, until ctx ends, so the message is
// stored once whichever attempt reached the server. replayed reports that
// the server had stored a message under key already (an earlier attempt,
// or another publish with the same key) and answered with its offset.
//
// key is 1 to 128 bytes, in the key space of the client's user (the
// token's sub; clients without a token share one), separate from the HTTP
// API's. A key used for another channel within the window fails with an
// *Error of code "conflict" (docs/protocol.md).
func (c *Client) PublishIdempotent(ctx context.Context, channel string, data any, key string) (offset uint64, replayed bool, err error) {
	if key == "" || len(key) > proto.MaxIdempotencyKeyLen {
		return 0, false, fmt.Errorf("cannot publish to %q: an idempotency key is 1 to %d bytes", channel, proto.MaxIdempotencyKeyLen)
	}
	p, err := json.Marshal(data)
	if err != nil {
		return 0, false, fmt.Errorf("cannot encode data for %q: %w", channel, err)
	}
	for {
		r, err := c.publish(ctx, channel, p, key)
		if !errors.Is(err, ErrDisconnected) || ctx.Err() != nil {
			return r.offset, r.replayed, err
		}
		// Lost before the reply: wait for the run goroutine to notice,
		// then send it again on the next connection.
		select {
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			return 0, false, err
		}
	}
}

// publish sends one publish frame, waiting for a connection, and returns
// the server's answer.
func (c *Client) publish(ctx context.Context, channel string, p []byte, key string) (reply, error) {
	for {
		c.mu.Lock()
		if c.closed {
			err := c.err
			c.mu.Unlock()
			return reply{}, err
		}
		conn := c.conn
		if conn == nil {
			up := c.up
			c.mu.Unlock()
			select {
			case <-up:
			case <-c.ctx.Done():
			case <-ctx.Done():
				return reply{}, ctx.Err()
			}
			continue
		}
		id := c.newIDLocked()
		req := &request{reply: make(chan reply, 1)}
		c.pending[id] = req
		c.mu.Unlock()

		f := outFrame{Op: proto.OpPublish, Channel: channel, Data: p, ID: id, IdempotencyKey: key}
		if err := conn.writeJSON(f); err != nil {
			c.forget(id)
			return reply{}, fmt.Errorf("cannot publish to %q: %w", channel, ErrDisconnected)
		}
		select {
		case r := <-req.reply:
			if r.err != nil {
				return reply{}, fmt.Errorf("cannot publish to %q: %w", channel, r.err)
			}
			return r, nil
		case <-ctx.Done():
			c.forget(id)
			return reply{}, ctx.Err()
		}
	}
}

// Subscription returns the client's subscription to channel, or nil. It
// finds the subscriptions the server made (EventSubscribed) as well as
// those made by Subscribe.
func (c *Client) Subscription(channel string) *Subscription {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.subs[channel]
}

// Channel returns the subscription's channel.
func (s *Subscription) Channel() string { return s.channel }

// Server reports whether the server made the subscription on its own (the
// application's POST /api/subscribe; EventSubscribed). Its messages go to
// Options.OnServerMessage.
func (s *Subscription) Server() bool { return s.server }

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
