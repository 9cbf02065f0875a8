package client_test

// Acceptance tests of the Go client against real tether nodes.

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tether/bus"
	"tether/client"
	"tether/internal/testutil"
	"tether/server"
)

// events records a client's state events.
type events struct {
	mu  sync.Mutex
	evs []timedEvent
}

type timedEvent struct {
	at time.Time
	client.Event
}

func (r *events) add(ev client.Event) {
	r.mu.Lock()
	r.evs = append(r.evs, timedEvent{time.Now(), ev})
	r.mu.Unlock()
}

// of returns the recorded events of type typ.
func (r *events) of(typ client.EventType) []timedEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []timedEvent
	for _, e := range r.evs {
		if e.Type == typ {
			out = append(out, e)
		}
	}
	return out
}

func (r *events) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := ""
	for _, e := range r.evs {
		s += fmt.Sprintf("\n  %s %s attempt=%d err=%v delay=%v ch=%s off=%d reason=%s",
			e.at.Format("15:04:05.000"), e.Type, e.Attempt, e.Err, e.Delay, e.Channel, e.Offset, e.Reason)
	}
	return s
}

// inbox collects the messages a handler receives.
type inbox struct {
	mu   sync.Mutex
	msgs []client.Message
}

func (b *inbox) handle(m client.Message) {
	b.mu.Lock()
	b.msgs = append(b.msgs, m)
	b.mu.Unlock()
}

func (b *inbox) snapshot() []client.Message {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.msgs)
}

func (b *inbox) len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.msgs)
}

func (b *inbox) lastOffset() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.msgs) == 0 {
		return 0
	}
	return b.msgs[len(b.msgs)-1].Offset
}

func dial(t testing.TB, url string, opts client.Options) *client.Client {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, url, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// publisher publishes the sequence numbers 1, 2, … to channel until stopped,
// one every pace, and remembers which were acknowledged at which offset.
type publisher struct {
	c       *client.Client
	channel string
	pace    time.Duration

	mu        sync.Mutex
	acked     map[int]uint64 // sequence number → offset
	ambiguous int            // publishes whose fate is unknown (connection lost)
	maxOffset uint64

	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
}

func startPublisher(c *client.Client, channel string, pace time.Duration) *publisher {
	p := &publisher{c: c, channel: channel, pace: pace, acked: make(map[int]uint64),
		stop: make(chan struct{}), done: make(chan struct{})}
	go p.run()
	return p
}

func (p *publisher) run() {
	defer close(p.done)
	tick := time.NewTicker(p.pace)
	defer tick.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-p.stop
		cancel()
	}()
	for seq := 1; ; seq++ {
		select {
		case <-p.stop:
			return
		case <-tick.C:
		}
		off, err := p.c.Publish(ctx, p.channel, seq)
		p.mu.Lock()
		switch {
		case err == nil:
			p.acked[seq] = off
			p.maxOffset = max(p.maxOffset, off)
		case errors.Is(err, client.ErrDisconnected):
			p.ambiguous++
		}
		p.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
	}
}

func (p *publisher) ackedCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.acked)
}

// halt stops the publisher and waits for it; it is idempotent.
func (p *publisher) halt() {
	p.stopOnce.Do(func() { close(p.stop) })
	<-p.done
}

// checkExactlyOnce verifies that msgs hold offsets first, first+1, … with no
// gap or duplicate, that the sequence numbers grow, and that every
// acknowledged publish is there at its offset.
func checkExactlyOnce(t testing.TB, msgs []client.Message, p *publisher) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(msgs) == 0 {
		t.Fatal("no messages received")
	}
	bySeq := make(map[int]uint64, len(msgs))
	lastSeq := 0
	for i, m := range msgs {
		if i > 0 && m.Offset != msgs[i-1].Offset+1 {
			t.Fatalf("message %d: offset %d after %d", i, m.Offset, msgs[i-1].Offset)
		}
		if i > 0 && m.Epoch != msgs[i-1].Epoch {
			t.Fatalf("message %d: epoch %s after %s", i, m.Epoch, msgs[i-1].Epoch)
		}
		seq, err := strconv.Atoi(string(m.Data))
		if err != nil {
			t.Fatalf("message %d: data %s", i, m.Data)
		}
		if seq <= lastSeq {
			t.Fatalf("message %d: sequence %d after %d", i, seq, lastSeq)
		}
		lastSeq = seq
		bySeq[seq] = m.Offset
	}
	for seq, off := range p.acked {
		if off < msgs[0].Offset {
			continue
		}
		if got, ok := bySeq[seq]; !ok || got != off {
			t.Fatalf("acknowledged publish %d at offset %d: received at %d (present %v)", seq, off, got, ok)
		}
	}
}

// TestRecoveryAcrossDrainRestart drains a node while a publisher keeps
// publishing, restarts it on the same bus behind the same address, and
// checks that the subscriber got every message exactly once, in order.
func TestRecoveryAcrossDrainRestart(t *testing.T) {
	testutil.CheckGoroutines(t)
	b := newBus(t)
	cfg := server.Config{
		AllowClientPublish: true,
		DrainWindow:        200 * time.Millisecond,
		ReconnectJitter:    500 * time.Millisecond,
	}
	a := startServer(t, cfg, b)
	px := startProxy(t, a.Addr().String())
	url := "ws://" + px.Addr() + "/ws"
	opts := client.Options{MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond}

	var subEvents events
	subOpts := opts
	subOpts.OnEvent = subEvents.add
	sub := dial(t, url, subOpts)
	var in inbox
	if _, err := sub.Subscribe("restart.test", in.handle); err != nil {
		t.Fatal(err)
	}
	pub := startPublisher(dial(t, url, opts), "restart.test", 2*time.Millisecond)
	defer pub.halt()
	testutil.Eventually(t, 10*time.Second, func() bool { return in.len() >= 50 }, "first messages")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	a2 := startServer(t, cfg, b)
	px.SetTarget(a2.Addr().String())
	before := pub.ackedCount()
	testutil.Eventually(t, 15*time.Second, func() bool { return pub.ackedCount() >= before+100 }, "publishes after the restart")
	pub.halt()

	testutil.Eventually(t, 10*time.Second, func() bool { return in.lastOffset() >= pub.maxOffset },
		fmt.Sprintf("subscriber to catch up with offset %d", pub.maxOffset))
	msgs := in.snapshot()
	checkExactlyOnce(t, msgs, pub)
	if len(subEvents.of(client.EventRecovered)) == 0 || len(subEvents.of(client.EventResyncNeeded)) != 0 {
		t.Fatalf("want recovered and no resync_needed events:%s", subEvents.String())
	}
	t.Logf("%d messages, offsets %d..%d, %d publishes lost with the connection", len(msgs), msgs[0].Offset, msgs[len(msgs)-1].Offset, pub.ambiguous)
}

// TestRecoveryAcrossNodes runs two nodes on one Redis. The subscriber's
// node is drained while a publisher on the other node keeps publishing; the
// subscriber lands on the other node and recovers from Redis history every
// message exactly once, in order.
func TestRecoveryAcrossNodes(t *testing.T) {
	testutil.CheckGoroutines(t)
	r := testutil.StartRedis(t)
	newRedisBus := func() *bus.Bus {
		b, err := bus.NewRedis(context.Background(), bus.RedisConfig{URL: r.URL(), Config: bus.Config{HistorySize: 10000}}, testLogger(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return b
	}
	cfg := server.Config{
		AllowClientPublish: true,
		DrainWindow:        200 * time.Millisecond,
		ReconnectJitter:    500 * time.Millisecond,
	}
	cfgA, cfgB := cfg, cfg
	cfgA.NodeID, cfgB.NodeID = "node-a", "node-b"
	a := startServer(t, cfgA, newRedisBus())
	b := startServer(t, cfgB, newRedisBus())
	px := startProxy(t, a.Addr().String()) // the load balancer in front of the subscriber

	var subEvents events
	sub := dial(t, "ws://"+px.Addr()+"/ws", client.Options{
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond, OnEvent: subEvents.add,
	})
	var in inbox
	if _, err := sub.Subscribe("nodes.test", in.handle); err != nil {
		t.Fatal(err)
	}
	pub := startPublisher(dial(t, wsURL(b), client.Options{}), "nodes.test", 2*time.Millisecond)
	defer pub.halt()
	testutil.Eventually(t, 10*time.Second, func() bool { return in.len() >= 50 }, "first messages")

	px.SetTarget(b.Addr().String()) // node-a leaves the pool, then drains
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	before := pub.ackedCount()
	testutil.Eventually(t, 15*time.Second, func() bool { return pub.ackedCount() >= before+100 }, "publishes after the drain")
	pub.halt()

	testutil.Eventually(t, 10*time.Second, func() bool { return in.lastOffset() >= pub.maxOffset },
		fmt.Sprintf("subscriber to catch up with offset %d", pub.maxOffset))
	msgs := in.snapshot()
	checkExactlyOnce(t, msgs, pub)
	connected := subEvents.of(client.EventConnected)
	if len(connected) != 2 || connected[0].Node != "node-a" || connected[1].Node != "node-b" {
		t.Fatalf("want a connection to node-a, then node-b:%s", subEvents.String())
	}
	if len(subEvents.of(client.EventRecovered)) != 1 || len(subEvents.of(client.EventResyncNeeded)) != 0 {
		t.Fatalf("want one recovered and no resync_needed event:%s", subEvents.String())
	}
	if pub.ambiguous != 0 {
		t.Fatalf("%d publishes on the undrained node lost their connection", pub.ambiguous)
	}
	t.Logf("%d messages, offsets %d..%d", len(msgs), msgs[0].Offset, msgs[len(msgs)-1].Offset)
}

// TestWatchdogFrozenPath freezes the TCP path between client and node
// (no FIN, no RST, no bytes): the client must notice within the ping
// interval plus its grace, reconnect, and recover what it missed.
func TestWatchdogFrozenPath(t *testing.T) {
	testutil.CheckGoroutines(t)
	const interval, grace = 300 * time.Millisecond, 300 * time.Millisecond
	srv := startServer(t, server.Config{AllowClientPublish: true, PingInterval: interval, PongTimeout: 5 * time.Second}, newBus(t))
	px := startProxy(t, srv.Addr().String())

	var evs events
	c := dial(t, "ws://"+px.Addr()+"/ws", client.Options{
		WatchdogGrace: grace, MinBackoff: 20 * time.Millisecond, OnEvent: evs.add,
	})
	var in inbox
	if _, err := c.Subscribe("frozen.path", in.handle); err != nil {
		t.Fatal(err)
	}
	pub := dial(t, wsURL(srv), client.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	publish := func(n int) {
		for i := 0; i < n; i++ {
			if _, err := pub.Publish(ctx, "frozen.path", i); err != nil {
				t.Fatal(err)
			}
		}
	}
	publish(3)
	testutil.Eventually(t, 5*time.Second, func() bool { return in.len() == 3 }, "messages before the freeze")

	frozenAt := time.Now()
	if px.FreezeAll() != 1 {
		t.Fatal("want one proxied connection")
	}
	publish(5) // lost on the frozen path
	testutil.Eventually(t, 10*time.Second, func() bool { return len(evs.of(client.EventDisconnected)) > 0 }, "watchdog")
	d := evs.of(client.EventDisconnected)[0]
	if !errors.Is(d.Err, client.ErrWatchdog) {
		t.Fatalf("disconnected with %v, want ErrWatchdog", d.Err)
	}
	// The bound is the protocol's: silence longer than interval + grace.
	// The slack only absorbs scheduling on a loaded machine.
	took := d.at.Sub(frozenAt)
	if took > interval+grace+time.Second {
		t.Fatalf("watchdog fired %v after the freeze, want within %v + slack", took, interval+grace)
	}
	t.Logf("watchdog fired %v after the freeze (ping interval %v + grace %v)", took.Round(time.Millisecond), interval, grace)
	testutil.Eventually(t, 10*time.Second, func() bool { return in.len() == 8 }, "recovered messages")
	msgs := in.snapshot()
	for i, m := range msgs {
		if m.Offset != uint64(i+1) {
			t.Fatalf("message %d has offset %d", i, m.Offset)
		}
	}
	if len(evs.of(client.EventRecovered)) != 1 {
		t.Fatalf("want one recovered event:%s", evs.String())
	}
}

// TestReconnectJitter drops 200 clients at once and checks that their
// reconnects spread uniformly over the first backoff window (full jitter)
// instead of arriving together: a Kolmogorov–Smirnov test, against the
// uniform distribution, of the waits the clients chose (EventDisconnected's
// Delay). The arrival times at the proxy are logged beside it: they add
// detection, scheduling and dial latency, which on a loaded machine (CI
// runs every package at once) bunch arrivals that were spread when chosen.
func TestReconnectJitter(t *testing.T) {
	testutil.CheckGoroutines(t)
	const n, window = 200, 2 * time.Second
	srv := startServer(t, server.Config{}, newBus(t))
	px := startProxy(t, srv.Addr().String())

	var connected atomic.Int64
	var mu sync.Mutex
	var delays []time.Duration
	clients := make([]*client.Client, n)
	for i := range clients {
		c, err := client.Connect("ws://"+px.Addr()+"/ws", client.Options{
			MinBackoff: window, MaxBackoff: 4 * window,
			OnEvent: func(ev client.Event) {
				switch ev.Type {
				case client.EventConnected:
					connected.Add(1)
				case client.EventDisconnected:
					mu.Lock()
					delays = append(delays, ev.Delay)
					mu.Unlock()
				}
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		clients[i] = c
	}
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	testutil.Eventually(t, 20*time.Second, func() bool { return connected.Load() == n }, "clients to connect")

	droppedAt := time.Now()
	if got := px.DropAll(); got != n {
		t.Fatalf("dropped %d connections, want %d", got, n)
	}
	testutil.Eventually(t, 20*time.Second, func() bool { return connected.Load() == 2*n }, "clients to reconnect")
	arrivals := px.Accepted(droppedAt)
	if len(arrivals) != n {
		t.Fatalf("%d reconnects, want %d", len(arrivals), n)
	}
	x := make([]float64, n)
	for i, at := range arrivals {
		x[i] = float64(at.Sub(droppedAt)) / float64(window)
	}
	slices.Sort(x)
	t.Logf("arrivals from %.3f to %.3f of the window, KS distance to uniform %.3f", x[0], x[n-1], ksUniform(x))

	mu.Lock()
	defer mu.Unlock()
	if len(delays) != n {
		t.Fatalf("%d disconnect events, want %d", len(delays), n)
	}
	w := make([]float64, n)
	for i, d := range delays {
		w[i] = float64(d) / float64(window)
	}
	slices.Sort(w)
	d := ksUniform(w)
	// Critical value of D for n=200 at α=0.001 is about 0.138.
	t.Logf("waits chosen from %.3f to %.3f of the window, KS distance to uniform %.3f", w[0], w[n-1], d)
	if w[n-1] > 1 || d > 0.138 {
		t.Fatalf("the waits are not uniform over the backoff window: KS distance %.3f; sorted fractions %.2f", d, w)
	}
}

// ksUniform returns the Kolmogorov–Smirnov distance between the sorted
// sample x and the uniform distribution on [0, 1).
func ksUniform(x []float64) float64 {
	n := float64(len(x))
	d := 0.0
	for i, v := range x {
		v = math.Min(math.Max(v, 0), 1)
		d = math.Max(d, math.Max(float64(i+1)/n-v, v-float64(i)/n))
	}
	return d
}

// TestRetryAfter fills a node (MaxConns 1): the refused client must wait at
// least the 503's Retry-After before trying again, then connect once there
// is room.
func TestRetryAfter(t *testing.T) {
	testutil.CheckGoroutines(t)
	srv := startServer(t, server.Config{MaxConns: 1, ReconnectJitter: time.Second}, newBus(t))
	first := dial(t, wsURL(srv), client.Options{})

	var evs events
	second, err := client.Connect(wsURL(srv), client.Options{MinBackoff: time.Millisecond, OnEvent: evs.add, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	testutil.Eventually(t, 10*time.Second, func() bool { return len(evs.of(client.EventConnecting)) >= 2 }, "a second attempt")
	d := evs.of(client.EventDisconnected)[0]
	var he *client.HandshakeError
	if !errors.As(d.Err, &he) || he.StatusCode != 503 || he.RetryAfter < time.Second {
		t.Fatalf("refused with %v, want a 503 with Retry-After", d.Err)
	}
	if d.Delay < he.RetryAfter {
		t.Fatalf("waits %v, less than Retry-After %v", d.Delay, he.RetryAfter)
	}
	attempts := evs.of(client.EventConnecting)
	if gap := attempts[1].at.Sub(attempts[0].at); gap < he.RetryAfter {
		t.Fatalf("second attempt %v after the first, before Retry-After %v", gap, he.RetryAfter)
	}
	first.Close()
	testutil.Eventually(t, 10*time.Second, func() bool { return len(evs.of(client.EventConnected)) == 1 }, "connect once there is room")
}

// signToken returns an HS256 JWT for sub that expires at exp and may
// subscribe and publish everywhere.
func signToken(secret []byte, sub string, exp time.Time) string {
	enc := base64.RawURLEncoding
	head := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))
	claims, _ := json.Marshal(map[string]any{"sub": sub, "exp": exp.Unix(), "channels": []string{"*"}, "publish": []string{"*"}})
	msg := head + "." + enc.EncodeToString(claims)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(msg))
	return msg + "." + enc.EncodeToString(mac.Sum(nil))
}

// TestTokenExpiry lets tokens expire: the server closes with 4001; a client
// with GetToken reconnects with a fresh token and recovers, a client with a
// fixed token stops.
func TestTokenExpiry(t *testing.T) {
	testutil.CheckGoroutines(t)
	secret := []byte("test-secret")
	srv := startServer(t, server.Config{JWTSecret: secret}, newBus(t))

	var issued atomic.Int64
	var evs events
	refreshing := dial(t, wsURL(srv), client.Options{
		MinBackoff: 20 * time.Millisecond,
		OnEvent:    evs.add,
		GetToken: func(ctx context.Context) (string, error) {
			// Whole seconds: the first token expires within 1–2s.
			return signToken(secret, fmt.Sprintf("u%d", issued.Add(1)), time.Now().Add(2*time.Second)), nil
		},
	})
	var in inbox
	if _, err := refreshing.Subscribe("expiry.test", in.handle); err != nil {
		t.Fatal(err)
	}

	var fixedEvs events
	fixed := dial(t, wsURL(srv), client.Options{
		Token:   signToken(secret, "fixed", time.Now().Add(time.Second)),
		OnEvent: fixedEvs.add,
	})

	select {
	case <-fixed.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("client with an expired fixed token did not stop")
	}
	if !errors.Is(fixed.Err(), client.ErrUnauthorized) {
		t.Fatalf("fixed-token client stopped with %v", fixed.Err())
	}
	if last := fixedEvs.of(client.EventDisconnected); len(last) != 1 || !last[0].Final {
		t.Fatalf("want one final disconnected event:%s", fixedEvs.String())
	}

	testutil.Eventually(t, 10*time.Second, func() bool { return len(evs.of(client.EventConnected)) >= 2 }, "reconnect with a fresh token")
	d := evs.of(client.EventDisconnected)[0]
	if !errors.Is(d.Err, client.ErrUnauthorized) {
		t.Fatalf("disconnected with %v, want a 4001", d.Err)
	}
	apiPublish(t, srv, "expiry.test", 1)
	testutil.Eventually(t, 5*time.Second, func() bool { return in.len() == 1 }, "message after the token refresh")
}

// apiPublish publishes through the node's HTTP API (loopback needs no key).
func apiPublish(t testing.TB, srv *server.Server, channel string, data any) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"channel": channel, "data": data})
	resp, err := httpClient.Post("http://"+srv.Addr().String()+"/api/publish", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("publish: HTTP %d", resp.StatusCode)
	}
}

// TestErrors checks the typed errors of Subscribe and Publish.
func TestErrors(t *testing.T) {
	testutil.CheckGoroutines(t)
	srv := startServer(t, server.Config{MaxMessageSize: 100}, newBus(t))
	c := dial(t, wsURL(srv), client.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	var pe *client.Error
	if _, err := c.Publish(ctx, "x", 1); !errors.As(err, &pe) || pe.Code != "forbidden" {
		t.Fatalf("publish on a server without client publishing: %v", err)
	}
	if _, err := c.Subscribe("bad channel", func(client.Message) {}); !errors.As(err, &pe) || pe.Code != "bad_request" {
		t.Fatalf("subscribe with a bad name: %v", err)
	}
	s, err := c.Subscribe("ok", func(client.Message) {})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Subscribe("ok", func(client.Message) {}); !errors.Is(err, client.ErrAlreadySubscribed) {
		t.Fatalf("second subscribe: %v", err)
	}
	s.Unsubscribe()
	if _, err := c.Subscribe("ok", func(client.Message) {}); err != nil {
		t.Fatalf("subscribe after unsubscribe: %v", err)
	}

	open := startServer(t, server.Config{MaxMessageSize: 2000, AllowClientPublish: true}, newBus(t))
	c2 := dial(t, wsURL(open), client.Options{})
	if _, err := c2.Publish(ctx, "x", strings.Repeat("x", 2500)); !errors.As(err, &pe) || pe.Code != "too_large" {
		t.Fatalf("oversized publish: %v", err)
	}
	if off, err := c2.Publish(ctx, "x", "fits"); err != nil || off != 1 {
		t.Fatalf("publish: offset %d, %v", off, err)
	}
	c2.Close()
	if _, err := c2.Publish(ctx, "x", 1); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("publish after Close: %v", err)
	}
}
