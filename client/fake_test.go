package client

// Protocol edge cases a real node produces only rarely (duplicates across a
// recovery, resync frames, silent servers, refused tokens), driven by a
// scripted server on a real socket.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"tether/internal/proto"
	"tether/internal/testutil"
	"tether/internal/wsframe"
)

// fakeServer accepts WebSocket upgrades and hands each connection to the
// test, which then plays the server's part frame by frame.
type fakeServer struct {
	t      testing.TB
	srv    *httptest.Server
	conns  chan *fakeConn
	refuse func(r *http.Request) (status int, header http.Header, body string) // optional

	mu      sync.Mutex
	tokens  []string // Authorization of every upgrade request
	headers []http.Header
	welcome string
}

type fakeConn struct {
	t     testing.TB
	nc    net.Conn
	br    *bufio.Reader
	token string
}

func startFake(t *testing.T) *fakeServer { return startFakeServer(t, false) }

func startFakeServer(t testing.TB, useTLS bool) *fakeServer {
	fs := &fakeServer{t: t, conns: make(chan *fakeConn, 16),
		welcome: `{"op":"welcome","node":"fake","conn":"fake-1","ping_interval_ms":60000}`}
	fs.srv = httptest.NewUnstartedServer(http.HandlerFunc(fs.serveHTTP))
	if useTLS {
		fs.srv.StartTLS()
	} else {
		fs.srv.Start()
	}
	t.Cleanup(func() {
		fs.srv.CloseClientConnections()
		fs.srv.Close()
		close(fs.conns)
		for c := range fs.conns {
			c.nc.Close()
		}
	})
	return fs
}

func (fs *fakeServer) url() string { return "ws" + strings.TrimPrefix(fs.srv.URL, "http") + "/ws" }

func (fs *fakeServer) serveHTTP(w http.ResponseWriter, r *http.Request) {
	token := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	fs.mu.Lock()
	fs.tokens = append(fs.tokens, token)
	fs.headers = append(fs.headers, r.Header.Clone())
	welcome := fs.welcome
	fs.mu.Unlock()
	if fs.refuse != nil {
		if status, h, body := fs.refuse(r); status != 0 {
			for k, v := range h {
				w.Header()[k] = v
			}
			w.WriteHeader(status)
			io.WriteString(w, body)
			return
		}
	}
	nc, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		fs.t.Error(err)
		return
	}
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
		wsframe.AcceptKey(r.Header.Get("Sec-WebSocket-Key")))
	brw.Flush()
	c := &fakeConn{t: fs.t, nc: nc, token: token, br: brw.Reader}
	c.send(welcome)
	fs.conns <- c
}

// next returns the next connection the client makes.
func (fs *fakeServer) next() *fakeConn {
	fs.t.Helper()
	select {
	case c := <-fs.conns:
		return c
	case <-time.After(10 * time.Second):
		fs.t.Fatal("no connection from the client")
		return nil
	}
}

func (c *fakeConn) send(s string) {
	c.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.nc.Write(wsframe.AppendFrame(nil, wsframe.OpText, true, []byte(s))); err != nil {
		c.t.Errorf("fake server: cannot send: %v", err)
	}
}

func (c *fakeConn) sendFrame(op wsframe.Opcode, p string) {
	c.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	c.nc.Write(wsframe.AppendFrame(nil, op, true, []byte(p)))
}

// recv returns the next text frame from the client, decoded.
func (c *fakeConn) recv() map[string]any {
	c.t.Helper()
	op, p, err := c.nextFrame()
	if err != nil {
		c.t.Fatalf("fake server: cannot read: %v", err)
	}
	if op != wsframe.OpText {
		c.t.Fatalf("fake server: got opcode %d (%q), want text", op, p)
	}
	var m map[string]any
	if err := json.Unmarshal(p, &m); err != nil {
		c.t.Fatal(err)
	}
	return m
}

// nextFrame returns the next frame from the client, unmasked. The client
// sends every message as one frame.
func (c *fakeConn) nextFrame() (wsframe.Opcode, []byte, error) {
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	var h wsframe.Header
	for n := 2; ; n++ {
		b, err := c.br.Peek(n)
		if err != nil {
			return 0, nil, err
		}
		var used int
		if h, used, err = wsframe.ParseHeader(b, wsframe.FromClient); err == nil {
			c.br.Discard(used)
			break
		} else if err != wsframe.ErrShort {
			return 0, nil, err
		}
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(c.br, p); err != nil {
		return 0, nil, err
	}
	wsframe.Mask(p, h.Key, 0)
	return h.Opcode, p, nil
}

// closeWith sends a close frame with code and closes the socket.
func (c *fakeConn) closeWith(code int) {
	c.sendFrame(wsframe.OpClose, string(wsframe.AppendClose(nil, code, "")))
	c.nc.Close()
}

// expectSubscribe reads a subscribe frame for channel and returns its id and
// since (nil without one).
func (c *fakeConn) expectSubscribe(channel string) (id any, since map[string]any) {
	c.t.Helper()
	f := c.recv()
	if f["op"] != "subscribe" || f["channel"] != channel {
		c.t.Fatalf("got %v, want a subscribe to %s", f, channel)
	}
	since, _ = f["since"].(map[string]any)
	return f["id"], since
}

// eventLog records a client's events for the fake server tests.
type eventLog struct {
	mu  sync.Mutex
	evs []Event
	at  []time.Time
}

func (l *eventLog) add(ev Event) {
	l.mu.Lock()
	l.evs = append(l.evs, ev)
	l.at = append(l.at, time.Now())
	l.mu.Unlock()
}

func (l *eventLog) of(typ EventType) []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Event
	for _, e := range l.evs {
		if e.Type == typ {
			out = append(out, e)
		}
	}
	return out
}

type msgLog struct {
	mu   sync.Mutex
	msgs []Message
}

func (l *msgLog) add(m Message) {
	l.mu.Lock()
	l.msgs = append(l.msgs, m)
	l.mu.Unlock()
}

func (l *msgLog) offsets() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, m := range l.msgs {
		out = append(out, fmt.Sprintf("%d@%s", m.Offset, m.Epoch))
	}
	return out
}

func (l *msgLog) waitFor(t *testing.T, want ...string) {
	t.Helper()
	if !testutil.WaitFor(5*time.Second, func() bool { return strings.Join(l.offsets(), " ") == strings.Join(want, " ") }) {
		t.Fatalf("messages %v, want %v", l.offsets(), want)
	}
	time.Sleep(20 * time.Millisecond) // nothing more may follow
	if got := strings.Join(l.offsets(), " "); got != strings.Join(want, " ") {
		t.Fatalf("messages %s, want %v", got, want)
	}
}

func fakeDial(t *testing.T, fs *fakeServer, opts Options) *Client {
	t.Helper()
	if opts.MinBackoff == 0 {
		opts.MinBackoff = 5 * time.Millisecond
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, fs.url(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// subscribeOn subscribes through conn, answering the subscribe with offset
// and epoch.
func subscribeOn(t *testing.T, c *Client, conn *fakeConn, channel string, offset int, epoch string, fn func(Message)) *Subscription {
	t.Helper()
	type result struct {
		s   *Subscription
		err error
	}
	done := make(chan result, 1)
	go func() {
		s, err := c.Subscribe(channel, fn)
		done <- result{s, err}
	}()
	id, _ := conn.expectSubscribe(channel)
	conn.send(fmt.Sprintf(`{"op":"subscribed","channel":%q,"offset":%d,"epoch":%q,"recovered":false,"id":%v}`, channel, offset, epoch, id))
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.s
}

func TestRecoveryDropsDuplicates(t *testing.T) {
	testutil.CheckGoroutines(t)
	fs := startFake(t)
	var evs eventLog
	c := fakeDial(t, fs, Options{OnEvent: evs.add})
	var got msgLog
	conn := fs.next()
	subscribeOn(t, c, conn, "ch", 5, "e1", got.add)
	conn.send(`{"op":"message","channel":"ch","offset":6,"data":6}`)
	conn.send(`{"op":"message","channel":"ch","offset":7,"data":7}`)
	got.waitFor(t, "6@e1", "7@e1")
	conn.closeWith(wsframe.CloseInternalError)

	// Recovery: the client asks for everything after 7; the server's
	// replay overlaps what it already has, and a stale message from the
	// previous subscription precedes the reply.
	conn = fs.next()
	conn.send(`{"op":"message","channel":"ch","offset":99,"data":0}`)
	id, since := conn.expectSubscribe("ch")
	if since["offset"] != 7.0 || since["epoch"] != "e1" {
		t.Fatalf("since %v, want offset 7 of e1", since)
	}
	conn.send(fmt.Sprintf(`{"op":"subscribed","channel":"ch","offset":9,"epoch":"e1","recovered":true,"id":%v}`, id))
	for _, off := range []int{6, 7, 8, 9, 9, 10} {
		conn.send(fmt.Sprintf(`{"op":"message","channel":"ch","offset":%d,"data":%d}`, off, off))
	}
	got.waitFor(t, "6@e1", "7@e1", "8@e1", "9@e1", "10@e1")
	if r := evs.wait(t, EventRecovered, 1); len(r) != 1 {
		t.Fatalf("recovered events: %v", r)
	}

	// A resync frame moves the channel to a new epoch.
	conn.send(`{"op":"resync","channel":"ch","offset":0,"epoch":"e2","after_ms":250}`)
	conn.send(`{"op":"message","channel":"ch","offset":1,"data":1}`)
	got.waitFor(t, "6@e1", "7@e1", "8@e1", "9@e1", "10@e1", "1@e2")
	rs := evs.wait(t, EventResyncNeeded, 1)
	if len(rs) != 1 || rs[0].Reason != ReasonResync || rs[0].After != 250*time.Millisecond || rs[0].Epoch != "e2" {
		t.Fatalf("resync events: %+v", rs)
	}
	conn.closeWith(wsframe.CloseInternalError)

	// History lost: recovered:false means resync and continue from the
	// reply's position.
	conn = fs.next()
	id, since = conn.expectSubscribe("ch")
	if since["offset"] != 1.0 || since["epoch"] != "e2" {
		t.Fatalf("since %v, want offset 1 of e2", since)
	}
	conn.send(fmt.Sprintf(`{"op":"subscribed","channel":"ch","offset":50,"epoch":"e3","recovered":false,"id":%v}`, id))
	conn.send(`{"op":"message","channel":"ch","offset":51,"data":51}`)
	got.waitFor(t, "6@e1", "7@e1", "8@e1", "9@e1", "10@e1", "1@e2", "51@e3")
	rs = evs.wait(t, EventResyncNeeded, 2)
	if len(rs) != 2 || rs[1].Reason != ReasonNotRecovered || rs[1].Offset != 50 {
		t.Fatalf("resync events: %+v", rs)
	}

	// A skipped offset is a gap: delivered, and reported.
	conn.send(`{"op":"message","channel":"ch","offset":53,"data":53}`)
	got.waitFor(t, "6@e1", "7@e1", "8@e1", "9@e1", "10@e1", "1@e2", "51@e3", "53@e3")
	if rs = evs.wait(t, EventResyncNeeded, 3); len(rs) != 3 || rs[2].Reason != ReasonGap {
		t.Fatalf("resync events: %+v", rs)
	}
}

func TestPingPong(t *testing.T) {
	testutil.CheckGoroutines(t)
	fs := startFake(t)
	fakeDial(t, fs, Options{})
	conn := fs.next()
	conn.send(`{"op":"ping"}`)
	if f := conn.recv(); f["op"] != "pong" {
		t.Fatalf("answer to a ping: %v", f)
	}
	conn.sendFrame(wsframe.OpPing, "xyz")
	op, p, err := conn.nextFrame()
	if err != nil || op != wsframe.OpPong || string(p) != "xyz" {
		t.Fatalf("answer to a control ping: op %d %q %v", op, p, err)
	}
}

func TestWatchdogSilentServer(t *testing.T) {
	testutil.CheckGoroutines(t)
	fs := startFake(t)
	fs.welcome = `{"op":"welcome","node":"fake","conn":"fake-1","ping_interval_ms":100}`
	var evs eventLog
	fakeDial(t, fs, Options{WatchdogGrace: 100 * time.Millisecond, OnEvent: evs.add})
	conn := fs.next()
	// After an interval of silence the client probes with a ping of its
	// own; unanswered, it gives up and reconnects.
	if f := conn.recv(); f["op"] != "ping" {
		t.Fatalf("got %v, want the client's ping", f)
	}
	fs.next()
	d := evs.wait(t, EventDisconnected, 1)
	if len(d) != 1 || !errors.Is(d[0].Err, ErrWatchdog) {
		t.Fatalf("disconnected events: %+v", d)
	}
}

func TestReconnectAfterDrain(t *testing.T) {
	testutil.CheckGoroutines(t)
	fs := startFake(t)
	var evs eventLog
	fakeDial(t, fs, Options{MinBackoff: time.Millisecond, OnEvent: evs.add})
	conn := fs.next()
	sent := time.Now()
	conn.send(`{"op":"reconnect","after_ms":300}`)
	conn.closeWith(proto.CloseRestart)
	fs.next()
	if waited := time.Since(sent); waited < 300*time.Millisecond {
		t.Fatalf("reconnected %v after the reconnect frame, want at least after_ms", waited)
	}
	var ce *CloseError
	if d := evs.wait(t, EventDisconnected, 1); len(d) != 1 || !errors.As(d[0].Err, &ce) || ce.Code != proto.CloseRestart {
		t.Fatalf("disconnected events: %+v", d)
	}
}

func TestUnauthorizedWaitsForNewToken(t *testing.T) {
	testutil.CheckGoroutines(t)
	fs := startFake(t)
	var mu sync.Mutex
	tokens := []string{"a", "a", "a", "b"}
	calls := 0
	var evs eventLog
	fakeDial(t, fs, Options{OnEvent: evs.add, GetToken: func(context.Context) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		tok := tokens[min(calls, len(tokens)-1)]
		calls++
		return tok, nil
	}})
	conn := fs.next()
	if conn.token != "a" {
		t.Fatalf("first token %q", conn.token)
	}
	conn.closeWith(proto.CloseUnauthorized)
	conn = fs.next()
	if conn.token != "b" {
		t.Fatalf("reconnected with %q, want the new token", conn.token)
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if strings.Join(fs.tokens, ",") != "a,b" {
		t.Fatalf("upgrades with tokens %v: the refused token was sent again", fs.tokens)
	}
}

func TestHandshakeRefused(t *testing.T) {
	testutil.CheckGoroutines(t)
	fs := startFake(t)
	fs.refuse = func(*http.Request) (int, http.Header, string) {
		return 401, nil, `{"error":{"code":"unauthorized","message":"token expired"}}`
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := Dial(ctx, fs.url(), Options{Token: "old"})
	var he *HandshakeError
	if !errors.As(err, &he) || he.StatusCode != 401 || he.Code != "unauthorized" || he.Message != "token expired" {
		t.Fatalf("Dial: %v", err)
	}
	if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("%v does not match ErrUnauthorized", err)
	}

	fs.refuse = func(*http.Request) (int, http.Header, string) {
		return 503, http.Header{"Retry-After": {"7"}}, `{"error":{"code":"unavailable","message":"full"}}`
	}
	_, err = Dial(ctx, fs.url(), Options{})
	if !errors.As(err, &he) || he.StatusCode != 503 || he.RetryAfter != 7*time.Second {
		t.Fatalf("Dial: %v", err)
	}
}

// TestProtocolViolationReconnects sends what breaks the protocol: the
// client closes with the matching code, reports ErrProtocol and reconnects.
func TestProtocolViolationReconnects(t *testing.T) {
	f := func(name string, op wsframe.Opcode, payload string, wantCode int) {
		t.Run(name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			fs := startFake(t)
			var evs eventLog
			fakeDial(t, fs, Options{OnEvent: evs.add, MaxMessageSize: 100})
			conn := fs.next()
			conn.sendFrame(op, payload)
			op, p, _ := conn.nextFrame()
			if code, _, _ := wsframe.DecodeClose(p); op != wsframe.OpClose || code != wantCode {
				t.Fatalf("got op %v code %d, want a %d close", op, code, wantCode)
			}
			conn.closeWith(wantCode) // answer, as a server does
			fs.next()
			if d := evs.wait(t, EventDisconnected, 1); len(d) != 1 || !errors.Is(d[0].Err, ErrProtocol) {
				t.Fatalf("disconnected events: %+v", d)
			}
		})
	}
	f("binary", wsframe.OpBinary, "\x00", proto.CloseProtocolError)
	f("not json", wsframe.OpText, "{", proto.CloseProtocolError)
	f("not utf-8", wsframe.OpText, "{\"op\":\"\xff\"}", proto.CloseInvalidPayload)
	f("over MaxMessageSize", wsframe.OpText, `{"op":"message","data":"`+strings.Repeat("x", 100)+`"}`, proto.CloseTooBig)
	f("reserved opcode", 0x3, "", proto.CloseProtocolError)
}

// TestSlowHandler fills the delivery queue of a blocked handler: the client
// drops the connection rather than buffer without bound, and recovers from
// the last message it queued.
func TestSlowHandler(t *testing.T) {
	testutil.CheckGoroutines(t)
	fs := startFake(t)
	var evs eventLog
	c := fakeDial(t, fs, Options{QueueSize: 4, OnEvent: evs.add})
	release := make(chan struct{})
	var got msgLog
	conn := fs.next()
	subscribeOn(t, c, conn, "ch", 0, "e", func(m Message) {
		<-release
		got.add(m)
	})
	for off := 1; off <= 10; off++ {
		// The client may close before all ten are written: ignore write errors.
		conn.sendFrame(wsframe.OpText, fmt.Sprintf(`{"op":"message","channel":"ch","offset":%d,"data":0}`, off))
	}
	// The blocked handler holds one batch (at most QueueSize messages) and
	// the queue QueueSize more: the tenth message cannot fit.
	if op, _, _ := conn.nextFrame(); op != wsframe.OpClose {
		t.Fatalf("got op %d, want a close", op)
	}
	close(release)
	conn = fs.next()
	if d := evs.wait(t, EventDisconnected, 1); len(d) != 1 || !errors.Is(d[0].Err, ErrSlowHandler) {
		t.Fatalf("disconnected events: %+v", d)
	}
	id, since := conn.expectSubscribe("ch")
	last, _ := since["offset"].(float64)
	if last < 4 || last > 8 {
		t.Fatalf("since %v, want offset 4 to 8", since)
	}
	conn.send(fmt.Sprintf(`{"op":"subscribed","channel":"ch","offset":10,"epoch":"e","recovered":true,"id":%v}`, id))
	want := []string{}
	for off := 1; off <= 10; off++ {
		want = append(want, fmt.Sprintf("%d@e", off))
		if off > int(last) {
			conn.send(fmt.Sprintf(`{"op":"message","channel":"ch","offset":%d,"data":0}`, off))
			got.waitFor(t, want...)
		}
	}
}

func TestPublishWaitsForConnection(t *testing.T) {
	testutil.CheckGoroutines(t)
	fs := startFake(t)
	c, err := Connect(fs.url(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	type result struct {
		off uint64
		err error
	}
	done := make(chan result, 1)
	go func() {
		off, err := c.Publish(context.Background(), "ch", map[string]int{"a": 1})
		done <- result{off, err}
	}()
	conn := fs.next()
	f := conn.recv()
	if f["op"] != "publish" || f["channel"] != "ch" || fmt.Sprint(f["data"]) != "map[a:1]" {
		t.Fatalf("got %v", f)
	}
	conn.send(fmt.Sprintf(`{"op":"ack","id":%v,"offset":12}`, f["id"]))
	if r := <-done; r.err != nil || r.off != 12 {
		t.Fatalf("Publish: %d, %v", r.off, r.err)
	}

	// A publish whose connection drops before the ack is ambiguous.
	go func() {
		off, err := c.Publish(context.Background(), "ch", 1)
		done <- result{off, err}
	}()
	conn.recv()
	conn.nc.Close()
	if r := <-done; !errors.Is(r.err, ErrDisconnected) {
		t.Fatalf("Publish across a drop: %v", r.err)
	}
}

// TestPublishIdempotentResends: a keyed publish whose connection drops
// before the ack is sent again, with its key, on the next connection.
func TestPublishIdempotentResends(t *testing.T) {
	testutil.CheckGoroutines(t)
	fs := startFake(t)
	c := fakeDial(t, fs, Options{})
	type result struct {
		off      uint64
		replayed bool
		err      error
	}
	done := make(chan result, 1)
	go func() {
		off, replayed, err := c.PublishIdempotent(context.Background(), "ch", 1, "order-17")
		done <- result{off, replayed, err}
	}()
	conn := fs.next()
	if f := conn.recv(); f["op"] != "publish" || f["idempotency_key"] != "order-17" {
		t.Fatalf("got %v", f)
	}
	conn.nc.Close()
	conn = fs.next()
	f := conn.recv()
	if f["op"] != "publish" || f["idempotency_key"] != "order-17" || fmt.Sprint(f["data"]) != "1" {
		t.Fatalf("after the drop: %v", f)
	}
	conn.send(fmt.Sprintf(`{"op":"ack","id":%v,"offset":12,"replayed":true}`, f["id"]))
	if r := <-done; r.err != nil || r.off != 12 || !r.replayed {
		t.Fatalf("PublishIdempotent: %+v", r)
	}
	if _, _, err := c.PublishIdempotent(context.Background(), "ch", 1, ""); err == nil {
		t.Error("empty key accepted")
	}
}

func TestTLSAndHeaders(t *testing.T) {
	testutil.CheckGoroutines(t)
	fs := startFakeServer(t, true)
	tlsCfg := fs.srv.Client().Transport.(*http.Transport).TLSClientConfig
	c := fakeDial(t, fs, Options{TLSConfig: tlsCfg, Token: "tok", Header: http.Header{"Origin": {"https://app.example"}}})
	conn := fs.next()
	conn.send(`{"op":"ping"}`)
	if f := conn.recv(); f["op"] != "pong" {
		t.Fatalf("over TLS: %v", f)
	}
	fs.mu.Lock()
	h := fs.headers[0]
	fs.mu.Unlock()
	if h.Get("Origin") != "https://app.example" || h.Get("Authorization") != "Bearer tok" {
		t.Fatalf("upgrade headers %v", h)
	}
	c.Close()
}

// waitEvents waits until l holds n events of type typ and returns them.
func (l *eventLog) wait(t *testing.T, typ EventType, n int) []Event {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, func() bool { return len(l.of(typ)) >= n }, fmt.Sprintf("%d %s events", n, typ))
	return l.of(typ)
}

// TestServerSubscribeOvertakesSubscribe: the application's POST
// /api/subscribe reaches the node just before the client's own subscribe
// to the same channel: the node sends subscribed without an id, then
// refuses the client's request as a duplicate (limit). The client's
// Subscribe succeeds, its handler gets the messages, and no EventSubscribed
// or EventSubscribeFailed is reported.
func TestServerSubscribeOvertakesSubscribe(t *testing.T) {
	testutil.CheckGoroutines(t)
	fs := startFake(t)
	var evs eventLog
	var got, server msgLog
	c := fakeDial(t, fs, Options{OnEvent: evs.add, OnServerMessage: server.add})
	conn := fs.next()
	done := make(chan error, 1)
	go func() {
		_, err := c.Subscribe("ch", got.add)
		done <- err
	}()
	id, _ := conn.expectSubscribe("ch")
	conn.send(`{"op":"subscribed","channel":"ch","offset":4,"epoch":"e1","recovered":false}`)
	conn.send(fmt.Sprintf(`{"op":"error","code":"limit","message":"already subscribed","id":%v}`, id))
	if err := <-done; err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	conn.send(`{"op":"message","channel":"ch","offset":5,"data":5}`)
	got.waitFor(t, "5@e1")
	if s := c.Subscription("ch"); s == nil || s.Server() {
		t.Fatalf("Subscription(ch) = %v", s)
	}
	if n := len(server.offsets()); n != 0 || len(evs.of(EventSubscribed)) != 0 || len(evs.of(EventSubscribeFailed)) != 0 {
		t.Fatalf("server messages %d, events %v", n, evs.evs)
	}
}
