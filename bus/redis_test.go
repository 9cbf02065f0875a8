package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"tether/internal/testutil"
)

// testNode is one *Bus (a "node") with a handler that records what it
// delivers.
type testNode struct {
	bus *Bus
	set *metrics.Set

	mu   sync.Mutex
	msgs map[string][]Message // copies
	gaps map[string][]Position
}

// testConfig is a RedisConfig with short timings for tests.
func testConfig(url string) RedisConfig {
	return RedisConfig{
		Config:         Config{HistorySize: 1000, HistoryTTL: 10 * time.Second},
		URL:            url,
		Linger:         50 * time.Millisecond,
		Shards:         2,
		CommandTimeout: time.Second,
	}
}

func newTestNode(t *testing.T, cfg RedisConfig) *testNode {
	t.Helper()
	n := &testNode{set: metrics.NewSet(), msgs: make(map[string][]Message), gaps: make(map[string][]Position)}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	b, err := NewRedis(context.Background(), cfg, log, n.set)
	if err != nil {
		t.Fatal(err)
	}
	n.bus = b
	b.SetHandler(Handler{
		OnMessage: func(m Message) {
			m.Data = slices.Clone(m.Data)
			n.mu.Lock()
			n.msgs[m.Channel] = append(n.msgs[m.Channel], m)
			n.mu.Unlock()
		},
		OnGap: func(ch string, top Position) {
			n.mu.Lock()
			n.gaps[ch] = append(n.gaps[ch], top)
			n.mu.Unlock()
		},
	})
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return n
}

// testWriter sends log lines to t.Log while the test runs.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func (n *testNode) received(ch string) []Message {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.msgs[ch])
}

func (n *testNode) gapsOf(ch string) []Position {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.gaps[ch])
}

func (n *testNode) counter(name string) uint64 {
	var sb strings.Builder
	n.set.WritePrometheus(&sb)
	for line := range strings.SplitSeq(sb.String(), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return uint64(f)
		}
	}
	return 0
}

// subscribe subscribes n to ch and waits until the subscription is active.
func (n *testNode) subscribe(t *testing.T, ch string) History {
	t.Helper()
	n.bus.Subscribe(ch)
	h, err := n.bus.History(context.Background(), ch, nil)
	if err != nil {
		t.Fatalf("history of %q: %v", ch, err)
	}
	return h
}

// checkStream fails unless msgs are exactly offsets from..to of one epoch,
// in order, with the data recorded in want (by offset), if any.
func checkStream(t *testing.T, who string, msgs []Message, from, to uint64, want map[uint64]string) {
	t.Helper()
	if uint64(len(msgs)) != to-from+1 {
		t.Fatalf("%s: got %d messages, want %d (offsets %d..%d)", who, len(msgs), to-from+1, from, to)
	}
	for i, m := range msgs {
		if m.Offset != from+uint64(i) || m.Epoch != msgs[0].Epoch {
			t.Fatalf("%s: message %d has offset %d epoch %s, want %d epoch %s", who, i, m.Offset, m.Epoch, from+uint64(i), msgs[0].Epoch)
		}
		if w, ok := want[m.Offset]; ok && w != string(m.Data) {
			t.Fatalf("%s: offset %d has data %s, want %s", who, m.Offset, m.Data, w)
		}
	}
}

func TestRedisDeliveryExactlyOnceInOrder(t *testing.T) {
	testutil.CheckGoroutines(t)
	r := testutil.StartRedis(t)
	testDelivery(t, func() RedisConfig { return testConfig(r.URL()) }, nil)
}

// testDelivery runs 3 nodes that all subscribe to the same channels and
// publish concurrently; every node must see every message once, in offset
// order. check, if set, runs while the subscriptions are active.
func testDelivery(t *testing.T, cfg func() RedisConfig, check func(channels []string)) {
	const (
		nodes      = 3
		publishers = 3 // per node
		perPub     = 150
	)
	channels := []string{"scores.m1", "chat.r1", "user.42", "a}b", "{x}"}
	var ns []*testNode
	for range nodes {
		n := newTestNode(t, cfg())
		for _, ch := range channels {
			n.subscribe(t, ch)
		}
		ns = append(ns, n)
	}
	if check != nil {
		check(channels)
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		want = make(map[string]map[uint64]string)
	)
	for _, ch := range channels {
		want[ch] = make(map[uint64]string)
	}
	for i, n := range ns {
		for p := range publishers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := range perPub {
					ch := channels[(k+p)%len(channels)]
					data := fmt.Sprintf(`{"n":%d,"p":%d,"k":%d}`, i, p, k)
					var (
						pos []Position
						err error
					)
					if k%10 == 9 {
						// Some batches, to exercise PublishBatch.
						pos, err = n.bus.PublishBatch(context.Background(), []Publication{{Channel: ch, Data: []byte(data)}})
					} else {
						var one Position
						one, err = n.bus.Publish(context.Background(), ch, []byte(data))
						pos = []Position{one}
					}
					if err != nil {
						t.Errorf("publish: %v", err)
						return
					}
					mu.Lock()
					if old, dup := want[ch][pos[0].Offset]; dup {
						t.Errorf("offset %d of %s acknowledged twice (%s and %s)", pos[0].Offset, ch, old, data)
					}
					want[ch][pos[0].Offset] = data
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for _, ch := range channels {
		total := uint64(len(want[ch]))
		for i, n := range ns {
			testutil.Eventually(t, 10*time.Second, func() bool { return uint64(len(n.received(ch))) >= total },
				fmt.Sprintf("node %d did not receive all %d messages of %s", i, total, ch))
			checkStream(t, fmt.Sprintf("node %d %s", i, ch), n.received(ch), 1, total, want[ch])
			if g := n.gapsOf(ch); len(g) > 0 {
				t.Errorf("node %d %s: unexpected gaps %v", i, ch, g)
			}
		}
	}
}

func TestRedisHistoryRecovery(t *testing.T) {
	testutil.CheckGoroutines(t)
	r := testutil.StartRedis(t)
	cfg := testConfig(r.URL())
	cfg.HistorySize = 5
	cfg.HistoryWindow = -1
	n := newTestNode(t, cfg)
	top := n.subscribe(t, "c").Top
	if top.Offset != 0 || top.Epoch == "" {
		t.Fatalf("position of a new channel is %+v", top)
	}
	var last Position
	for i := range 8 {
		p, err := n.bus.Publish(context.Background(), "c", []byte(strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		if p.Epoch != top.Epoch || p.Offset != uint64(i+1) {
			t.Fatalf("publish %d at %+v, want offset %d epoch %s", i, p, i+1, top.Epoch)
		}
		last = p
	}
	// The node answers from what it delivered: wait until it has it all.
	testutil.Eventually(t, 5*time.Second, func() bool { return len(n.received("c")) == 8 }, "messages not delivered")
	f := func(since *Position, recovered bool, offsets ...uint64) {
		t.Helper()
		h, err := n.bus.History(context.Background(), "c", since)
		if err != nil {
			t.Fatal(err)
		}
		if h.Top != last || h.Recovered != recovered {
			t.Fatalf("history since %+v: top %+v recovered %v", since, h.Top, h.Recovered)
		}
		var got []uint64
		for _, m := range h.Messages {
			got = append(got, m.Offset)
			if string(m.Data) != strconv.Itoa(int(m.Offset)-1) || m.Channel != "c" || m.Epoch != last.Epoch {
				t.Fatalf("message %+v", m)
			}
		}
		if !slices.Equal(got, offsets) {
			t.Fatalf("history since %+v: offsets %v, want %v", since, got, offsets)
		}
	}
	f(nil, false)
	f(&Position{Offset: 8, Epoch: last.Epoch}, true)
	f(&Position{Offset: 6, Epoch: last.Epoch}, true, 7, 8)
	f(&Position{Offset: 3, Epoch: last.Epoch}, true, 4, 5, 6, 7, 8)
	f(&Position{Offset: 2, Epoch: last.Epoch}, false) // older than the 5 kept
	f(&Position{Offset: 6, Epoch: "other"}, false)
	f(&Position{Offset: 9, Epoch: last.Epoch}, false)
}

func TestRedisInterest(t *testing.T) {
	testutil.CheckGoroutines(t)
	r := testutil.StartRedis(t)
	cfg := testConfig(r.URL())
	cfg.HistoryTTL = 300 * time.Millisecond
	cfg.Linger = 200 * time.Millisecond
	a, b := newTestNode(t, cfg), newTestNode(t, cfg)
	a.subscribe(t, "x")
	b.subscribe(t, "y")
	if got := r.NumSub(t, "tether:{x}"); got != 1 {
		t.Fatalf("NUMSUB x = %d, want 1 (only node a)", got)
	}
	if got := r.NumSub(t, "tether:{y}"); got != 1 {
		t.Fatalf("NUMSUB y = %d, want 1 (only node b)", got)
	}
	if _, err := b.bus.Publish(context.Background(), "x", []byte(`"to-a"`)); err != nil {
		t.Fatal(err)
	}
	if _, err := a.bus.Publish(context.Background(), "y", []byte(`"to-b"`)); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return len(a.received("x")) == 1 && len(b.received("y")) == 1 },
		"messages not delivered")
	if len(a.received("y")) != 0 || len(b.received("x")) != 0 {
		t.Fatal("a node received a channel it has no subscriber of")
	}

	// Flapping within the linger does not touch Redis.
	before := r.Info(t, "cmdstat_unsubscribe")
	a.bus.Unsubscribe("x")
	a.bus.Subscribe("x")
	time.Sleep(2 * cfg.Linger)
	if got := r.NumSub(t, "tether:{x}"); got != 1 {
		t.Fatalf("NUMSUB x after flap = %d, want 1", got)
	}
	if after := r.Info(t, "cmdstat_unsubscribe"); after != before {
		t.Fatalf("flapping within the linger sent UNSUBSCRIBE: %q -> %q", before, after)
	}
	if s := a.bus.Stats(); s.Channels != 1 || !s.Healthy {
		t.Fatalf("stats %+v", s)
	}

	// Counted: two subscribes need two unsubscribes.
	a.bus.Subscribe("x")
	a.bus.Unsubscribe("x")
	time.Sleep(2 * cfg.Linger)
	if got := r.NumSub(t, "tether:{x}"); got != 1 {
		t.Fatalf("NUMSUB x = %d after one of two unsubscribes", got)
	}
	a.bus.Unsubscribe("x")
	b.bus.Unsubscribe("y")
	testutil.Eventually(t, 5*time.Second, func() bool { return len(r.PubSubChannels(t, "tether:*")) == 0 },
		"pub/sub channels remain after unsubscribe + linger")
	testutil.Eventually(t, 5*time.Second, func() bool { return len(r.Keys(t, "tether:*")) == 0 },
		"keys remain after unsubscribe + linger + TTL")
	if s := a.bus.Stats(); s.Channels != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestRedisKeysHaveTTL(t *testing.T) {
	testutil.CheckGoroutines(t)
	r := testutil.StartRedis(t)
	n := newTestNode(t, testConfig(r.URL()))
	for _, ch := range []string{"a", "b"} {
		if _, err := n.bus.Publish(context.Background(), ch, []byte("1")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := n.bus.History(context.Background(), "c", nil); err != nil {
		t.Fatal(err)
	}
	keys := r.Keys(t, "*")
	if len(keys) != 7 {
		t.Fatalf("keys %v, want meta+history+checkpoints of a and b, meta of c", keys)
	}
	for _, k := range keys {
		if ttl, _ := r.Do(t, "PTTL", k).(int64); ttl <= 0 {
			t.Errorf("key %s has PTTL %d", k, ttl)
		}
	}
}

func TestRedisPubSubKilled(t *testing.T) {
	testutil.CheckGoroutines(t)
	r := testutil.StartRedis(t)
	a, b := newTestNode(t, testConfig(r.URL())), newTestNode(t, testConfig(r.URL()))
	a.subscribe(t, "k")
	const total = 400
	var (
		wg   sync.WaitGroup
		want = make(map[uint64]string)
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range total {
			data := strconv.Itoa(i)
			p, err := b.bus.Publish(context.Background(), "k", []byte(data))
			if err != nil {
				t.Errorf("publish: %v", err)
				return
			}
			want[p.Offset] = data
			if i%50 == 49 {
				time.Sleep(5 * time.Millisecond)
			}
		}
	}()
	for range 3 {
		testutil.WaitFor(time.Second, func() bool { return len(a.received("k")) > 0 })
		r.KillPubSub(t)
		time.Sleep(20 * time.Millisecond)
	}
	wg.Wait()
	testutil.Eventually(t, 10*time.Second, func() bool { return len(a.received("k")) >= total },
		"messages missing after pub/sub connections were killed")
	checkStream(t, "node a", a.received("k"), 1, total, want)
	if got := a.counter("tether_bus_reconnects_total"); got == 0 {
		t.Error("no reconnect counted")
	}
	if g := a.gapsOf("k"); len(g) > 0 {
		t.Errorf("unexpected unrecoverable gaps %v", g)
	}
	t.Logf("reconnects %d, gaps repaired %d", a.counter("tether_bus_reconnects_total"), a.counter("tether_bus_gap_repaired_total"))
}

func TestRedisLiveGapRepaired(t *testing.T) {
	testutil.CheckGoroutines(t)
	r := testutil.StartRedis(t)
	a := newTestNode(t, testConfig(r.URL()))
	a.subscribe(t, "g")
	if _, err := a.bus.Publish(context.Background(), "g", []byte("1")); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return len(a.received("g")) == 1 }, "first message")
	// Advance the channel behind the bus's back: offset 2 exists only in
	// history, so the live offset 3 reveals the gap.
	epoch := a.received("g")[0].Epoch
	r.Do(t, "HINCRBY", "tether:{g}:m", "o", 1)
	r.Do(t, "LPUSH", "tether:{g}:h", "2")
	r.Do(t, "PUBLISH", "tether:{x}", "junk") // not subscribed: ignored
	if _, err := a.bus.Publish(context.Background(), "g", []byte("3")); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return len(a.received("g")) == 3 }, "gap not repaired")
	checkStream(t, "node a", a.received("g"), 1, 3, map[uint64]string{1: "1", 2: "2", 3: "3"})
	// A corrupt payload is counted and dropped.
	r.Do(t, "PUBLISH", "tether:{g}", "garbage")
	r.Do(t, "PUBLISH", "tether:{g}", epoch+" 4 x")
	testutil.Eventually(t, 5*time.Second, func() bool { return len(a.received("g")) == 4 }, "message after garbage")
	if got := a.counter(`tether_bus_errors_total{op="decode"}`); got != 1 {
		t.Errorf("decode errors %d, want 1", got)
	}
	if got := a.counter("tether_bus_gap_repaired_total"); got != 1 {
		t.Errorf("gaps repaired %d, want 1", got)
	}
}

func TestRedisRestartEmpty(t *testing.T) {
	testutil.CheckGoroutines(t)
	r := testutil.StartRedis(t)
	cfg := testConfig(r.URL())
	cfg.CommandTimeout = 500 * time.Millisecond
	a, b := newTestNode(t, cfg), newTestNode(t, cfg)
	a.subscribe(t, "r")
	var before Position
	for i := range 5 {
		p, err := b.bus.Publish(context.Background(), "r", []byte(strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		before = p
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return len(a.received("r")) == 5 }, "messages before the outage")

	r.Stop()
	stopped := time.Now()
	for time.Since(stopped) < 3*time.Second {
		start := time.Now()
		_, err := b.bus.Publish(context.Background(), "r", []byte(`"lost"`))
		if err == nil {
			t.Fatal("publish acknowledged while redis is down")
		}
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("publish during outage: %v, want ErrUnavailable", err)
		}
		if d := time.Since(start); d > 3*cfg.CommandTimeout {
			t.Fatalf("publish during outage took %v", d)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if a.bus.Stats().Healthy || b.bus.Stats().Healthy {
		t.Error("stats healthy while redis is down")
	}
	_, err := b.bus.History(context.Background(), "r", nil)
	if !errors.Is(err, ErrUnavailable) {
		t.Errorf("history during outage: %v, want ErrUnavailable", err)
	}
	r.Restart()

	var after Position
	testutil.Eventually(t, 10*time.Second, func() bool {
		p, err := b.bus.Publish(context.Background(), "r", []byte(`"after"`))
		after = p
		return err == nil
	}, "publish does not recover after redis restarted")
	if after.Epoch == before.Epoch {
		t.Fatalf("epoch %s unchanged after redis lost its data", after.Epoch)
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return len(a.gapsOf("r")) > 0 }, "no OnGap after history was lost")
	g := a.gapsOf("r")
	if g[len(g)-1].Epoch != after.Epoch {
		t.Errorf("gap position %+v, want epoch %s", g[len(g)-1], after.Epoch)
	}
	live, err := b.bus.Publish(context.Background(), "r", []byte(`"live"`))
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		msgs := a.received("r")
		return msgs[len(msgs)-1].Epoch == live.Epoch && msgs[len(msgs)-1].Offset == live.Offset
	}, "live messages do not resume after the restart")
	testutil.Eventually(t, 5*time.Second, func() bool { return a.bus.Stats().Healthy && b.bus.Stats().Healthy },
		"stats unhealthy after recovery")
	if a.counter("tether_bus_gap_unrecoverable_total") == 0 {
		t.Error("unrecoverable gap not counted")
	}
}

func TestRedisPaused(t *testing.T) {
	testutil.CheckGoroutines(t)
	r := testutil.StartRedis(t)
	cfg := testConfig(r.URL())
	cfg.CommandTimeout = 300 * time.Millisecond
	cfg.QueueSize = 10
	a := newTestNode(t, cfg)
	a.subscribe(t, "p")
	r.Pause()
	defer r.Resume()
	// A bound for "returns within the timeout", generous for -race.
	bound := 3*cfg.CommandTimeout + time.Second

	start := time.Now()
	_, err := a.bus.Publish(context.Background(), "p", []byte("1"))
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("publish while paused: %v", err)
	}
	if d := time.Since(start); d > bound {
		t.Fatalf("publish while paused returned after %v", d)
	}

	// The queue bound holds: of many async publishes at most QueueSize wait.
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		failed int
	)
	for range 50 {
		wg.Add(1)
		a.bus.PublishAsync([]Publication{{Channel: "p", Data: []byte("2")}}, func(_ []Position, err error) {
			defer wg.Done()
			if err != nil {
				mu.Lock()
				failed++
				mu.Unlock()
			}
		})
		if q := a.bus.Stats().Queued; q > cfg.QueueSize {
			t.Fatalf("queued %d > %d", q, cfg.QueueSize)
		}
	}
	wg.Wait()
	if failed != 50 {
		t.Fatalf("%d of 50 publishes failed while paused", failed)
	}
	// A channel the node does not serve needs Redis. (One it serves is
	// answered from the node's position: see TestRedisStormCommands.)
	start = time.Now()
	if _, err := a.bus.History(context.Background(), "q", nil); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("history while paused: %v", err)
	}
	if d := time.Since(start); d > bound {
		t.Fatalf("history while paused returned after %v", d)
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return !a.bus.Stats().Healthy }, "healthy while paused")
	r.Resume()
	testutil.Eventually(t, 10*time.Second, func() bool {
		_, err := a.bus.Publish(context.Background(), "p", []byte("3"))
		return err == nil
	}, "publish does not recover after resume")
	testutil.Eventually(t, 10*time.Second, func() bool {
		msgs := a.received("p")
		return len(msgs) > 0 && string(msgs[len(msgs)-1].Data) == "3"
	}, "delivery does not recover after resume")
}

func TestRedisClosed(t *testing.T) {
	testutil.CheckGoroutines(t)
	r := testutil.StartRedis(t)
	n := newTestNode(t, testConfig(r.URL()))
	if err := n.bus.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := n.bus.Publish(context.Background(), "c", []byte("1")); !errors.Is(err, ErrClosed) {
		t.Fatalf("publish after close: %v", err)
	}
	if _, err := n.bus.History(context.Background(), "c", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("history after close: %v", err)
	}
	n.bus.Subscribe("c") // ignored, must not panic
}

func TestRedisUnreachableAtStart(t *testing.T) {
	testutil.CheckGoroutines(t)
	cfg := testConfig(fmt.Sprintf("redis://127.0.0.1:%d/0", testutil.FreePort(t)))
	cfg.CommandTimeout = 200 * time.Millisecond
	n := newTestNode(t, cfg)
	if n.bus.Stats().Healthy {
		t.Fatal("healthy without redis")
	}
	if _, err := n.bus.Publish(context.Background(), "c", []byte("1")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("publish without redis: %v", err)
	}
}

func TestRedisBadConfig(t *testing.T) {
	f := func(cfg RedisConfig) {
		t.Helper()
		if b, err := NewRedis(context.Background(), cfg, nil, nil); err == nil {
			b.Close()
			t.Fatalf("config %+v accepted", cfg)
		}
	}
	f(RedisConfig{KeyPrefix: "a{b"})
	f(RedisConfig{URL: "http://x"})
}

func TestRedisCluster(t *testing.T) {
	testutil.CheckGoroutines(t)
	c := testutil.StartCluster(t, 3)
	cfg := func() RedisConfig {
		cfg := testConfig("")
		cfg.ClusterAddrs = c.Addrs()
		return cfg
	}
	testDelivery(t, cfg, func(channels []string) {
		// Sharded pub/sub: each channel has one subscriber per node, on the
		// master that owns its slot, and none elsewhere.
		for _, ch := range channels {
			var total int64
			owners := 0
			for _, n := range c.Nodes() {
				if k := n.NumSub(t, "tether:{"+ch+"}"); k > 0 {
					total += k
					owners++
				}
			}
			if total != 3 || owners != 1 {
				t.Errorf("channel %s: %d subscribers on %d masters, want 3 on 1", ch, total, owners)
			}
		}
	})
}

func TestRedisClusterSlotMigration(t *testing.T) {
	testutil.CheckGoroutines(t)
	c := testutil.StartCluster(t, 3)
	cfg := testConfig("")
	cfg.ClusterAddrs = c.Addrs()
	a, b := newTestNode(t, cfg), newTestNode(t, cfg)
	const ch = "moving"
	a.subscribe(t, ch)
	want := make(map[uint64]string)
	publish := func(k int) {
		t.Helper()
		data := strconv.Itoa(k)
		p, err := b.bus.Publish(context.Background(), ch, []byte(data))
		if err != nil {
			t.Fatalf("publish %d: %v", k, err)
		}
		want[p.Offset] = data
	}
	for k := range 20 {
		publish(k)
	}
	// Move the channel's slot to another master, keys included.
	slot := hashSlot(pubsubName("tether:", ch))
	var src, dst *testutil.Redis
	for _, n := range c.Nodes() {
		if n.NumSub(t, pubsubName("tether:", ch)) > 0 {
			src = n
		}
	}
	for _, n := range c.Nodes() {
		if n != src {
			dst = n
			break
		}
	}
	if src == nil {
		t.Fatal("no master has the subscription")
	}
	srcID, dstID := fmt.Sprint(src.Do(t, "CLUSTER", "MYID")), fmt.Sprint(dst.Do(t, "CLUSTER", "MYID"))
	dst.Do(t, "CLUSTER", "SETSLOT", slot, "IMPORTING", srcID)
	src.Do(t, "CLUSTER", "SETSLOT", slot, "MIGRATING", dstID)
	keys, _ := src.Do(t, "CLUSTER", "GETKEYSINSLOT", slot, 100).([]any)
	if len(keys) != 3 {
		t.Fatalf("keys in slot %d: %v", slot, keys)
	}
	host, port, _ := strings.Cut(dst.Addr(), ":")
	args := []any{"MIGRATE", host, port, "", 0, 5000, "KEYS"}
	src.Do(t, append(args, keys...)...)
	dst.Do(t, "CLUSTER", "SETSLOT", slot, "NODE", dstID)
	src.Do(t, "CLUSTER", "SETSLOT", slot, "NODE", dstID)
	for _, n := range c.Nodes() {
		n.Do(t, "CLUSTER", "SETSLOT", slot, "NODE", dstID)
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		return dst.NumSub(t, pubsubName("tether:", ch)) == 1 && src.NumSub(t, pubsubName("tether:", ch)) == 0
	}, "subscription did not follow the slot")
	for k := 20; k < 40; k++ {
		publish(k)
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return len(a.received(ch)) >= 40 }, "messages missing after the slot moved")
	checkStream(t, "node a", a.received(ch), 1, 40, want)
	if g := a.gapsOf(ch); len(g) > 0 {
		t.Errorf("unexpected gaps %v", g)
	}
}

// TestRedisSubscribeMidStream checks the History contract while messages
// flow: every message above the returned Top is delivered afterwards.
func TestRedisSubscribeMidStream(t *testing.T) {
	testutil.CheckGoroutines(t)
	r := testutil.StartRedis(t)
	a, b := newTestNode(t, testConfig(r.URL())), newTestNode(t, testConfig(r.URL()))
	stop := make(chan struct{})
	var (
		wg   sync.WaitGroup
		last Position
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for k := 0; ; k++ {
			select {
			case <-stop:
				return
			default:
			}
			p, err := b.bus.Publish(context.Background(), "mid", []byte(strconv.Itoa(k)))
			if err != nil {
				t.Errorf("publish: %v", err)
				return
			}
			last = p
		}
	}()
	time.Sleep(50 * time.Millisecond)
	top := a.subscribe(t, "mid").Top
	time.Sleep(50 * time.Millisecond)
	close(stop)
	wg.Wait()
	if last.Offset <= top.Offset {
		t.Fatalf("nothing published after the subscription (top %d, last %d)", top.Offset, last.Offset)
	}
	testutil.Eventually(t, 5*time.Second, func() bool {
		msgs := a.received("mid")
		return len(msgs) > 0 && msgs[len(msgs)-1].Offset == last.Offset
	}, "last message not delivered")
	msgs := a.received("mid")
	// Messages up to top may or may not be delivered; all above it must be.
	i := slices.IndexFunc(msgs, func(m Message) bool { return m.Offset > top.Offset })
	checkStream(t, "node a", msgs[i:], top.Offset+1, last.Offset, nil)
}
