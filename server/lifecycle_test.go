package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tether/bus"
	"tether/internal/proto"
	"tether/internal/wsframe"
	"tether/internal/wstest"
)

func TestHeartbeatTimeout(t *testing.T) {
	ts := startServer(t, Config{PingInterval: 300 * time.Millisecond, PongTimeout: 700 * time.Millisecond})
	// An answering client stays; a silent one is closed with 4008.
	alive := mustDial(t, ts.addr)
	silent := mustDial(t, ts.addr)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			m, _, err := alive.next(100 * time.Millisecond)
			if err == nil && m["op"] == "ping" {
				_ = alive.writeFrame(wsframe.OpText, []byte(`{"op":"pong"}`))
			}
		}
	}()
	// The silent client reads (so it sees pings) but never answers.
	pings := 0
	var code int
	for {
		m, _, err := silent.next(3 * time.Second)
		if ce, ok := err.(*closeError); ok {
			code = ce.code
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if m["op"] == "ping" {
			pings++
		}
	}
	close(stop)
	wg.Wait()
	if code != proto.CloseHeartbeatTimeout || pings == 0 {
		t.Fatalf("close %d after %d pings", code, pings)
	}
	// The silent client never answers the close frame: it is cut off after
	// closeGrace. The answering one stays.
	silent.conn.Close()
	eventually(t, closeGrace+time.Second, func() bool { return ts.Connections() == 1 }, "silent client gone")
	time.Sleep(200 * time.Millisecond)
	if ts.Connections() != 1 {
		t.Fatalf("the answering client was closed too (%d open)", ts.Connections())
	}
	if n := ts.metric(t, "tether_heartbeat_timeouts_total"); n != 1 {
		t.Fatalf("timeouts counted %v", n)
	}
}

// TestPingPhaseSpread connects many clients at once and checks that their
// first pings are spread over the interval rather than lined up on a tick.
func TestPingPhaseSpread(t *testing.T) {
	const n = 60
	interval := 1 * time.Second
	ts := startServer(t, Config{PingInterval: interval, PongTimeout: time.Second})
	clients := make([]*testClient, n)
	for i := range clients {
		clients[i] = mustDial(t, ts.addr)
	}
	start := time.Now()
	firsts := make([]time.Duration, n)
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				m, _, err := c.next(3 * time.Second)
				if err != nil {
					return
				}
				if m["op"] == "ping" {
					firsts[i] = time.Since(start)
					return
				}
			}
		}()
	}
	wg.Wait()
	// Count distinct tenths of the interval hit by first pings: lined-up
	// pings would hit one or two; a uniform spread of 60 hits nearly all.
	buckets := map[int]bool{}
	for i, d := range firsts {
		if d == 0 {
			t.Fatalf("client %d got no ping", i)
		}
		buckets[int(d*10/interval)] = true
	}
	if len(buckets) < 6 {
		t.Fatalf("first pings hit only %d of 10 tenths of the interval: %v", len(buckets), firsts)
	}
}

func TestSlowConsumer(t *testing.T) {
	// History is kept small so that the heap bound below measures queues.
	ts := startServerWithBus(t, Config{MaxConnBuffer: 1 << 20, MaxMessageSize: 16 << 10}, bus.NewLocal(bus.Config{HistorySize: 10}))
	slow := mustDial(t, ts.addr)
	fast := mustDial(t, ts.addr)
	for _, c := range []*testClient{slow, fast} {
		c.send(map[string]any{"op": "subscribe", "channel": "firehose"})
		c.expect("subscribed")
	}
	var fastGot atomic.Int64
	fastDone := make(chan struct{})
	// The fast client counts message frames by their first bytes: decoding
	// 2,000 frames of 16 KiB as JSON under -race on a loaded machine took
	// as long as publishing them, so it could fall 1 MiB behind and be cut
	// as a slow consumer too.
	go func() {
		defer close(fastDone)
		_ = fast.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
		for fastGot.Load() < 2000 {
			h, p, err := wstest.ReadFrame(fast.br, wsframe.FromServer)
			if err != nil {
				return
			}
			if h.Opcode == wsframe.OpText && bytes.HasPrefix(p, []byte(`{"op":"message"`)) {
				fastGot.Add(1)
			}
		}
	}()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	payload := `"` + strings.Repeat("x", 15<<10) + `"`
	// 2000 × ~16 KiB = ~32 MiB toward a client that reads nothing.
	for i := 0; i < 2000; i += 10 {
		var msgs []map[string]any
		for j := 0; j < 10; j++ {
			msgs = append(msgs, map[string]any{"channel": "firehose", "data": json.RawMessage(payload)})
		}
		b, _ := json.Marshal(map[string]any{"messages": msgs})
		if code, m := ts.publish(t, string(b)); code != 200 {
			t.Fatalf("publish: %d %v", code, m)
		}
	}
	eventually(t, 10*time.Second, func() bool {
		return ts.metric(t, "tether_slow_consumer_disconnects_total") == 1
	}, "slow consumer disconnected: "+fmt.Sprint(ts.metric(t, "tether_slow_consumer_disconnects_total"), ts.Connections(), ts.metric(t, "tether_messages_delivered_total")))
	<-fastDone
	if fastGot.Load() != 2000 {
		t.Fatalf("the fast client got %d of 2000 messages (slow-consumer disconnects: %v)", fastGot.Load(), ts.metric(t, "tether_slow_consumer_disconnects_total"))
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	// Two connections may hold at most 2×MaxConnBuffer each; ~30 MiB were
	// sent toward the slow one.
	if grow := int64(after.HeapInuse) - int64(before.HeapInuse); grow > 8<<20 {
		t.Fatalf("heap grew by %d MiB", grow>>20)
	}
	// The slow client finds its connection closed, possibly after reading
	// what the kernel had buffered.
	code := slow.expectClose(10 * time.Second)
	if code != 0 && code != proto.CloseSlowConsumer {
		t.Fatalf("slow consumer closed with %d", code)
	}
}

func TestAdmission(t *testing.T) {
	t.Run("accept rate", func(t *testing.T) {
		ts := startServer(t, Config{AcceptRate: 1, AcceptBurst: 2, ReconnectJitter: 10 * time.Second})
		mustDial(t, ts.addr)
		mustDial(t, ts.addr)
		_, resp, err := dialWS(ts.addr, "/ws", nil)
		if err == nil || resp == nil || resp.StatusCode != 503 {
			t.Fatalf("third upgrade: %v %v", resp, err)
		}
		ra, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		if ra < 1 || ra > 10 {
			t.Fatalf("Retry-After %q", resp.Header.Get("Retry-After"))
		}
		if n := ts.metric(t, `tether_connections_rejected_total{reason="accept_rate"}`); n != 1 {
			t.Fatalf("rejections %v", n)
		}
	})
	t.Run("max conns", func(t *testing.T) {
		ts := startServer(t, Config{MaxConns: 2})
		a := mustDial(t, ts.addr)
		mustDial(t, ts.addr)
		_, resp, err := dialWS(ts.addr, "/ws", nil)
		if err == nil || resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("third upgrade: %v %v", resp, err)
		}
		if code, _ := ts.get(t, "/readyz"); code != 503 {
			t.Fatalf("readyz at capacity: %d", code)
		}
		a.conn.Close()
		eventually(t, 2*time.Second, func() bool { return ts.Connections() == 1 }, "close seen")
		mustDial(t, ts.addr)
	})
}

// TestDrainSpreadsCloses checks that draining refuses new upgrades at
// once and closes live connections spread across the window, each told to
// reconnect first.
func TestDrainSpreadsCloses(t *testing.T) {
	const n = 40
	window := 2 * time.Second
	ts := startServer(t, Config{DrainWindow: window, DrainDelay: -1, ReconnectJitter: time.Second})
	clients := make([]*testClient, n)
	for i := range clients {
		clients[i] = mustDial(t, ts.addr)
	}
	closedAt := make([]time.Duration, n)
	start := time.Now()
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sawReconnect := false
			for {
				m, _, err := c.next(10 * time.Second)
				if ce, ok := err.(*closeError); ok {
					if ce.code != proto.CloseRestart || !sawReconnect {
						t.Errorf("client %d: close %d, reconnect seen %v", i, ce.code, sawReconnect)
					}
					closedAt[i] = time.Since(start)
					return
				}
				if err != nil {
					t.Errorf("client %d: %v", i, err)
					return
				}
				if m["op"] == "reconnect" {
					if a := num(m["after_ms"]); a < 1 || a > 1000 {
						t.Errorf("after_ms %d", a)
					}
					sawReconnect = true
				}
			}
		}()
	}
	drained := make(chan error, 1)
	go func() { drained <- ts.Drain(context.Background()) }()
	eventually(t, time.Second, ts.Draining, "draining")
	if code, _ := ts.get(t, "/readyz"); code != 503 {
		t.Fatalf("readyz while draining: %d", code)
	}
	if _, resp, err := dialWS(ts.addr, "/ws", nil); err == nil || resp.StatusCode != 503 {
		t.Fatalf("upgrade while draining: %v", err)
	}
	wg.Wait()
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
	sort.Slice(closedAt, func(i, j int) bool { return closedAt[i] < closedAt[j] })
	// Closes must cover most of the window, and no quarter of the window may
	// hold more than half of them.
	if spread := closedAt[n-1] - closedAt[0]; spread < window/2 {
		t.Fatalf("closes spread over only %v of %v: %v", spread, window, closedAt)
	}
	quarters := make([]int, 5)
	for _, d := range closedAt {
		quarters[min(int(d*4/window), 4)]++
	}
	for q, k := range quarters {
		if k > n/2 {
			t.Fatalf("%d of %d closes fell in quarter %d: %v", k, n, q, closedAt)
		}
	}
}

// TestRecoveryNoGapNoDuplicate reconnects a client repeatedly with since
// while a publisher publishes as fast as it can, and checks that the client
// sees every offset exactly once, in order.
func TestRecoveryNoGapNoDuplicate(t *testing.T) {
	ts := startServer(t, Config{})
	const ch = "rec.1"
	stop := make(chan struct{})
	var published atomic.Int64
	var pubWG sync.WaitGroup
	pubWG.Add(1)
	go func() {
		defer pubWG.Done()
		body := `{"channel":"` + ch + `","data":{"x":1}}`
		for {
			select {
			case <-stop:
				return
			default:
			}
			resp, err := http.Post("http://"+ts.addr+"/api/publish", "application/json", stringsReader(body))
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			published.Add(1)
		}
	}()
	var last uint64
	var epoch string
	seen := 0
	for round := 0; round < 8; round++ {
		c := mustDial(t, ts.addr)
		req := map[string]any{"op": "subscribe", "channel": ch, "id": round}
		if round > 0 {
			req["since"] = map[string]any{"offset": last, "epoch": epoch}
		}
		c.send(req)
		sub := c.expect("subscribed")
		if round == 0 {
			last, epoch = num(sub["offset"]), sub["epoch"].(string)
		} else if sub["recovered"] != true || sub["epoch"] != epoch {
			t.Fatalf("round %d: not recovered: %v", round, sub)
		}
		// Read a random-ish number of messages, then drop the connection.
		for k := 0; k < 30+round*7; k++ {
			m := c.expect("message")
			off := num(m["offset"])
			if off != last+1 {
				t.Fatalf("round %d: offset %d after %d", round, off, last)
			}
			last = off
			seen++
		}
		c.conn.Close()
	}
	close(stop)
	pubWG.Wait()
	if seen == 0 || published.Load() == 0 {
		t.Fatal("nothing published")
	}
	// A since older than the history window is not recovered.
	c := mustDial(t, ts.addr)
	c.send(map[string]any{"op": "subscribe", "channel": ch, "since": map[string]any{"offset": 1, "epoch": "other"}})
	if sub := c.expect("subscribed"); sub["recovered"] != false || sub["epoch"] != epoch {
		t.Fatalf("foreign epoch: %v", sub)
	}
}

// TestChannelsDoNotAccumulate subscribes to and leaves many short-lived
// channels, publishing to each, and checks that nothing is left behind.
func TestChannelsDoNotAccumulate(t *testing.T) {
	ts := startServer(t, Config{MaxSubsPerConn: -1, ClientMsgRate: -1})
	c := mustDial(t, ts.addr)
	const n = 2000
	for i := 0; i < n; i++ {
		ch := "tmp." + strconv.Itoa(i)
		c.sendRaw(`{"op":"subscribe","channel":"` + ch + `"}`)
		c.expect("subscribed")
		ts.mustPublish(t, ch, i)
		c.expect("message")
		c.sendRaw(`{"op":"unsubscribe","channel":"` + ch + `"}`)
		c.expect("unsubscribed")
	}
	if got := ts.index.count(); got != 0 {
		t.Fatalf("%d channels left in the index", got)
	}
	if ts.metric(t, "tether_channels") != 0 || ts.metric(t, "tether_subscriptions") != 0 {
		t.Fatal("gauges not back to zero")
	}
}

// TestSubscribeToBusyChannel joins a channel that is being published to
// (the position then comes from the node's live stream, not the bus) and
// checks that each new subscriber's first message follows the offset in
// its subscribed reply, with no gap and no duplicate.
func TestSubscribeToBusyChannel(t *testing.T) {
	ts := startServer(t, Config{})
	const ch = "busy"
	anchor := mustDial(t, ts.addr) // keeps the channel live on the node
	anchor.send(map[string]any{"op": "subscribe", "channel": ch})
	anchor.expect("subscribed")
	go func() { _, _ = io.Copy(io.Discard, anchor.br) }()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := httpPost(ts.addr, `{"channel":"busy","data":1}`); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	for i := 0; i < 20; i++ {
		c := mustDial(t, ts.addr)
		c.send(map[string]any{"op": "subscribe", "channel": ch})
		sub := c.expect("subscribed")
		last := num(sub["offset"])
		for k := 0; k < 5; k++ {
			m := c.expect("message")
			if off := num(m["offset"]); off != last+1 {
				t.Fatalf("subscriber %d: offset %d after %d", i, off, last)
			}
			last++
		}
		c.conn.Close()
	}
}

// TestShutdownTwice checks Shutdown's contract: a first call whose context
// has already expired still stops everything, and a second call waits for
// that and returns nil with no goroutine of the server left.
func TestShutdownTwice(t *testing.T) {
	ts := startServer(t, Config{})
	c := mustDial(t, ts.addr)
	c.send(map[string]any{"op": proto.OpSubscribe, "id": 1, "channel": "x"})
	c.expect(proto.OpSubscribed)

	expired, cancel := context.WithCancel(context.Background())
	cancel()
	// nil only if the stop won the race with the expired context.
	if err := ts.Shutdown(expired); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("first Shutdown with an expired context: %v, want context.Canceled", err)
	}
	ctx, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	if err := ts.Shutdown(ctx); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	if g := ts.Goroutines(); len(g) != 0 {
		t.Fatalf("goroutines still running after Shutdown: %v", g)
	}
	if err := ts.Shutdown(ctx); err != nil {
		t.Fatalf("third Shutdown: %v", err)
	}
}
