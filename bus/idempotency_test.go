package bus

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"tether/internal/testutil"
)

// idemNode is one node of an idempotency test: its bus and what its
// handler received on a channel it subscribed to.
type idemNode struct {
	bus       *Bus
	subscribe func(ch string)
	received  func(ch string) []Message
}

func publishKeyed(b *Bus, pubs ...Publication) ([]Position, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return b.PublishBatch(ctx, pubs)
}

func keyed(ch, data, key string) Publication {
	return Publication{Channel: ch, Data: []byte(data), IdempotencyKey: key}
}

// allHistory returns every message the bus holds for ch.
func allHistory(t *testing.T, b *Bus, ch string) []Message {
	t.Helper()
	top, err := b.History(context.Background(), ch, nil)
	if err != nil {
		t.Fatal(err)
	}
	h, err := b.History(context.Background(), ch, &Position{Offset: 0, Epoch: top.Top.Epoch})
	if err != nil || !h.Recovered {
		t.Fatalf("history of %q: %v, recovered %v", ch, err, h.Recovered)
	}
	return h.Messages
}

// testIdempotency runs the idempotency cases on nodes sharing one bus (one
// node for the local bus, several for Redis).
func testIdempotency(t *testing.T, nodes []idemNode) {
	a, b := nodes[0], nodes[len(nodes)-1]

	t.Run("same key twice", func(t *testing.T) {
		first, err := publishKeyed(a.bus, keyed("idem.twice", `1`, "k1"))
		if err != nil || first[0].Replayed {
			t.Fatalf("first publish: %v %v", first, err)
		}
		for _, n := range []idemNode{a, b} {
			again, err := publishKeyed(n.bus, keyed("idem.twice", `2`, "k1"))
			if err != nil {
				t.Fatal(err)
			}
			want := first[0]
			want.Replayed = true
			if again[0] != want {
				t.Errorf("again: %+v, want %+v", again[0], want)
			}
		}
		if h := allHistory(t, a.bus, "idem.twice"); len(h) != 1 || string(h[0].Data) != "1" {
			t.Errorf("history %v, want the first message only", h)
		}
	})

	t.Run("concurrent", func(t *testing.T) {
		const ch, keys, perNode = "idem.race", 50, 2
		for _, n := range nodes {
			n.subscribe(ch)
		}
		type result struct {
			key int
			pos Position
		}
		var (
			wg      sync.WaitGroup
			mu      sync.Mutex
			results []result
		)
		start := make(chan struct{})
		for k := range keys {
			for ni, n := range nodes {
				for g := range perNode {
					wg.Add(1)
					go func() {
						defer wg.Done()
						<-start
						data := fmt.Sprintf(`"k%d n%d g%d"`, k, ni, g)
						pos, err := publishKeyed(n.bus, keyed(ch, data, fmt.Sprintf("race-%d", k)))
						if err != nil {
							t.Errorf("publish: %v", err)
							return
						}
						mu.Lock()
						results = append(results, result{k, pos[0]})
						mu.Unlock()
					}()
				}
			}
		}
		close(start)
		wg.Wait()
		first := make(map[int]Position)
		fresh := make(map[int]int)
		for _, r := range results {
			if !r.pos.Replayed {
				fresh[r.key]++
			}
			p := r.pos
			p.Replayed = false
			if f, ok := first[r.key]; ok && f != p {
				t.Errorf("key %d: positions %+v and %+v", r.key, f, p)
			}
			first[r.key] = p
		}
		for k := range keys {
			if fresh[k] != 1 {
				t.Errorf("key %d published %d times", k, fresh[k])
			}
		}
		hist := allHistory(t, a.bus, ch)
		if len(hist) != keys {
			t.Fatalf("history holds %d messages, want %d", len(hist), keys)
		}
		seen := make(map[string]bool)
		for _, m := range hist {
			key := strings.Fields(strings.Trim(string(m.Data), `"`))[0]
			if seen[key] {
				t.Errorf("key %s twice in history", key)
			}
			seen[key] = true
		}
		for i, n := range nodes {
			if !testutil.WaitFor(5*time.Second, func() bool { return len(n.received(ch)) >= keys }) {
				t.Fatalf("node %d received %d messages, want %d", i, len(n.received(ch)), keys)
			}
			got := n.received(ch)
			offsets := make(map[uint64]bool)
			for _, m := range got {
				offsets[m.Offset] = true
			}
			if len(got) != keys || len(offsets) != keys {
				t.Errorf("node %d received %d messages (%d offsets), want %d", i, len(got), len(offsets), keys)
			}
		}
	})

	t.Run("conflict", func(t *testing.T) {
		if _, err := publishKeyed(a.bus, keyed("idem.c1", `1`, "kc")); err != nil {
			t.Fatal(err)
		}
		_, err := publishKeyed(b.bus, keyed("idem.c2", `1`, "kc"))
		if !errors.Is(err, ErrIdempotencyConflict) {
			t.Fatalf("same key, other channel: %v, want ErrIdempotencyConflict", err)
		}
		// A batch with a conflicting key publishes nothing.
		_, err = publishKeyed(b.bus, keyed("idem.c3", `1`, "kc3"), Publication{Channel: "idem.c3", Data: []byte(`2`)},
			keyed("idem.c2", `3`, "kc"))
		if !errors.Is(err, ErrIdempotencyConflict) {
			t.Fatalf("batch: %v, want ErrIdempotencyConflict", err)
		}
		_, err = publishKeyed(b.bus, keyed("idem.c3", `1`, "kc4"), keyed("idem.c4", `1`, "kc4"))
		if !errors.Is(err, ErrIdempotencyConflict) {
			t.Fatalf("one key for two channels in a batch: %v, want ErrIdempotencyConflict", err)
		}
		if h := allHistory(t, a.bus, "idem.c2"); len(h) != 0 {
			t.Errorf("idem.c2 holds %d messages after refused publishes", len(h))
		}
		if h := allHistory(t, a.bus, "idem.c3"); len(h) != 0 {
			t.Errorf("idem.c3 holds %d messages after refused publishes", len(h))
		}
	})

	t.Run("batch", func(t *testing.T) {
		const ch = "idem.batch"
		old, err := publishKeyed(a.bus, keyed(ch, `"old"`, "kb-old"))
		if err != nil {
			t.Fatal(err)
		}
		pos, err := publishKeyed(b.bus,
			keyed(ch, `"new"`, "kb-new"),
			Publication{Channel: ch, Data: []byte(`"plain"`)},
			keyed(ch, `"new again"`, "kb-new"),
			keyed(ch, `"old again"`, "kb-old"),
			keyed("idem.batch2", `"other"`, "kb-other"),
		)
		if err != nil {
			t.Fatal(err)
		}
		replayed := []bool{false, false, true, true, false}
		for i, p := range pos {
			if p.Replayed != replayed[i] {
				t.Errorf("pub %d: replayed %v, want %v", i, p.Replayed, replayed[i])
			}
		}
		if pos[0].Offset != old[0].Offset+1 || pos[1].Offset != old[0].Offset+2 ||
			pos[2].Offset != pos[0].Offset || pos[3].Offset != old[0].Offset {
			t.Errorf("offsets %+v after %+v", pos, old)
		}
		var data []string
		for _, m := range allHistory(t, a.bus, ch) {
			data = append(data, string(m.Data))
		}
		if got := strings.Join(data, " "); got != `"old" "new" "plain"` {
			t.Errorf("history %s", got)
		}
	})
}

// testIdempotencyExpiry checks that a key is forgotten after the window:
// wait makes the window pass.
func testIdempotencyExpiry(t *testing.T, b *Bus, wait func()) {
	first, err := publishKeyed(b, keyed("idem.exp", `1`, "ke"))
	if err != nil {
		t.Fatal(err)
	}
	wait()
	again, err := publishKeyed(b, keyed("idem.exp", `2`, "ke"))
	if err != nil {
		t.Fatal(err)
	}
	if again[0].Replayed || again[0].Offset != first[0].Offset+1 {
		t.Errorf("after the window: %+v, want a new message after %+v", again[0], first[0])
	}
	// The key is bound again from now on, to any channel.
	if _, err := publishKeyed(b, keyed("idem.exp2", `1`, "ke")); !errors.Is(err, ErrIdempotencyConflict) {
		t.Errorf("reused key after the window, other channel: %v", err)
	}
}

func localIdemNode(b *Bus) idemNode {
	r := newLocalRecorder(b)
	return idemNode{bus: b, subscribe: func(string) {}, received: r.of}
}

func TestLocalIdempotency(t *testing.T) {
	testutil.CheckGoroutines(t)
	b := newLocalForTest(t, Config{IdempotencyWindow: time.Minute})
	testIdempotency(t, []idemNode{localIdemNode(b)})
}

func TestLocalIdempotencyExpiryAndBound(t *testing.T) {
	testutil.CheckGoroutines(t)
	var (
		mu  sync.Mutex
		now = time.Unix(1_800_000_000, 0)
	)
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	l := newLocal(Config{IdempotencyWindow: time.Minute, IdempotencyMaxKeys: 3}, clock)
	b := &Bus{be: l, pres: newLocalPresence(l)}
	t.Cleanup(func() { _ = b.Close() })
	testIdempotencyExpiry(t, b, func() {
		mu.Lock()
		now = now.Add(time.Minute)
		mu.Unlock()
	})

	// Full: the oldest key goes first, and with it its guarantee.
	for i := range 4 {
		if _, err := publishKeyed(b, keyed("idem.bound", `1`, fmt.Sprint("kb", i))); err != nil {
			t.Fatal(err)
		}
	}
	if n := l.idem.len(); n != 3 {
		t.Errorf("table holds %d keys, want 3", n)
	}
	if p, _ := publishKeyed(b, keyed("idem.bound", `1`, "kb0")); p[0].Replayed {
		t.Error("the oldest key was kept beyond the bound")
	}
	if p, _ := publishKeyed(b, keyed("idem.bound", `1`, "kb3")); !p[0].Replayed {
		t.Error("the newest key was forgotten")
	}
	// The sweeper frees expired keys without new publishes.
	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()
	l.sweep()
	if n := l.idem.len(); n != 0 {
		t.Errorf("after the window and a sweep, %d keys remain", n)
	}
}

func TestLocalIdempotencyOff(t *testing.T) {
	b := newLocalForTest(t, Config{})
	for range 2 {
		if p, err := publishKeyed(b, keyed("idem.off", `1`, "k")); err != nil || p[0].Replayed {
			t.Fatalf("%+v %v", p, err)
		}
	}
	if h := allHistory(t, b, "idem.off"); len(h) != 2 {
		t.Errorf("without a window: %d messages, want 2 (keys ignored)", len(h))
	}
}

func redisIdemNodes(t *testing.T, cfg func() RedisConfig, n int) []idemNode {
	var nodes []idemNode
	for range n {
		tn := newTestNode(t, cfg())
		nodes = append(nodes, idemNode{
			bus:       tn.bus,
			subscribe: func(ch string) { tn.subscribe(t, ch) },
			received:  tn.received,
		})
	}
	return nodes
}

func TestRedisIdempotency(t *testing.T) {
	testutil.CheckGoroutines(t)
	r := testutil.StartRedis(t)
	cfg := func() RedisConfig {
		c := testConfig(r.URL())
		c.IdempotencyWindow = time.Minute
		return c
	}
	testIdempotency(t, redisIdemNodes(t, cfg, 2))

	// The record and the claim expire with the window.
	for _, key := range []string{"tether:{idem.twice}:i:k1", "tether:idem:k1"} {
		if ttl, ok := r.Do(t, "PTTL", key).(int64); !ok || ttl <= 0 || ttl > time.Minute.Milliseconds() {
			t.Errorf("PTTL %s = %v, want (0, 60000]", key, r.Do(t, "PTTL", key))
		}
	}

	short := testConfig(r.URL())
	short.IdempotencyWindow = 200 * time.Millisecond
	n := newTestNode(t, short)
	testIdempotencyExpiry(t, n.bus, func() { time.Sleep(400 * time.Millisecond) })
}

func TestRedisClusterIdempotency(t *testing.T) {
	testutil.CheckGoroutines(t)
	c := testutil.StartCluster(t, 3)
	cfg := func() RedisConfig {
		c2 := testConfig("")
		c2.ClusterAddrs = c.Addrs()
		c2.IdempotencyWindow = time.Minute
		return c2
	}
	testIdempotency(t, redisIdemNodes(t, cfg, 2))
}
