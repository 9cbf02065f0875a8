package bus

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"tether/internal/testutil"
)

// commandCalls returns Redis' calls per command from INFO commandstats.
func commandCalls(t *testing.T, r *testutil.Redis) map[string]int {
	t.Helper()
	s, _ := r.Do(t, "INFO", "commandstats").(string)
	calls := make(map[string]int)
	for line := range strings.SplitSeq(s, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		name, found := strings.CutPrefix(name, "cmdstat_")
		if !ok || !found {
			continue
		}
		for f := range strings.SplitSeq(rest, ",") {
			if v, ok := strings.CutPrefix(f, "calls="); ok {
				calls[name], _ = strconv.Atoi(v)
			}
		}
	}
	return calls
}

// commandsBetween returns the commands run between two commandCalls
// snapshots, leaving out those a node runs on a timer whatever its channels
// do (PING of the health loop and of silent pub/sub connections) and the
// test's own INFO.
func commandsBetween(before, after map[string]int) (int, map[string]int) {
	total, by := 0, make(map[string]int)
	for name, n := range after {
		if d := n - before[name]; d > 0 && name != "ping" && name != "info" {
			by[name] = d
			total += d
		}
	}
	return total, by
}

// TestRedisStormCommands checks that N subscribes to one channel on a node
// cost Redis O(1) commands, not O(N): 5,000 subscribers of a quiet channel,
// fresh (since nil) or recovering (since at various points, some too old,
// some of another epoch), cost at most 10 commands on the node that serves
// them, and every answer is right.
func TestRedisStormCommands(t *testing.T) {
	testutil.CheckGoroutines(t)
	r := testutil.StartRedis(t)
	cfg := testConfig(r.URL())
	cfg.HistorySize = 30
	cfg.HistoryWindow = -1       // so that a since can be older than history
	cfg.HistoryTTL = time.Minute // no TTL keepalive during the test
	pub := newTestNode(t, cfg)
	const subscribers = 5000
	for _, since := range []bool{false, true} {
		t.Run(fmt.Sprintf("since=%v", since), func(t *testing.T) {
			ch := fmt.Sprintf("storm.%v", since)
			var last Position
			for i := 1; i <= 50; i++ {
				p, err := pub.bus.Publish(context.Background(), ch, []byte(strconv.Itoa(i)))
				if err != nil {
					t.Fatal(err)
				}
				last = p
			}
			n := newTestNode(t, cfg)
			// Node constants (script loads, the first pub/sub connection)
			// are not the channel's: pay them on another channel first.
			n.subscribe(t, "warm."+ch)

			before := commandCalls(t, r)
			// Two waves: one all at once (they share one read), and one
			// after a message moved the node's position.
			var (
				wg   sync.WaitGroup
				mu   sync.Mutex
				errs []string
			)
			wave := func(k0, k1 int, top Position) {
				jobs := make(chan int)
				for range 64 { // like the server's recovery workers
					wg.Add(1)
					go func() {
						defer wg.Done()
						for k := range jobs {
							if msg := stormSubscriber(n.bus, ch, k, since, top); msg != "" {
								mu.Lock()
								errs = append(errs, msg)
								mu.Unlock()
							}
						}
					}()
				}
				for k := k0; k < k1; k++ {
					jobs <- k
				}
				close(jobs)
				wg.Wait()
			}
			wave(0, subscribers/2, last)
			mid, err := pub.bus.Publish(context.Background(), ch, []byte("51"))
			if err != nil {
				t.Fatal(err)
			}
			testutil.Eventually(t, 5*time.Second, func() bool {
				msgs := n.received(ch)
				return len(msgs) > 0 && msgs[len(msgs)-1].Offset == mid.Offset
			}, "message after the first wave not delivered")
			publishCalls := commandCalls(t, r)
			wave(subscribers/2, subscribers, mid)
			after := commandCalls(t, r)
			if len(errs) > 0 {
				t.Fatalf("%d of %d wrong answers, first: %s", len(errs), subscribers, errs[0])
			}
			// The message published between the waves is not the storm's.
			total1, by1 := commandsBetween(before, publishCalls)
			total2, by2 := commandsBetween(publishCalls, after)
			pubTotal, pubBy := publishCost(t, r, pub, "cost."+ch)
			total := total1 + total2 - pubTotal
			t.Logf("%d subscribes: %d redis commands (first wave and a publish %v, second wave %v; a publish costs %d: %v)",
				subscribers, total, by1, by2, pubTotal, pubBy)
			// The warm-up's History is the node's too.
			if node, direct := n.counter(`tether_bus_history_answers_total{from="node"}`), n.counter(`tether_bus_history_answers_total{from="redis"}`); node != subscribers+1 || direct != 0 {
				t.Errorf("history answers: %d from the node, %d from redis; want %d and 0", node, direct, subscribers+1)
			}
			if total > 10 {
				t.Fatalf("%d subscribes cost %d redis commands, want at most 10", subscribers, total)
			}
		})
	}
}

// publishCost measures what one publish to an existing channel ch costs
// Redis.
func publishCost(t *testing.T, r *testutil.Redis, pub *testNode, ch string) (int, map[string]int) {
	t.Helper()
	if _, err := pub.bus.Publish(context.Background(), ch, []byte("x")); err != nil {
		t.Fatal(err)
	}
	before := commandCalls(t, r)
	if _, err := pub.bus.Publish(context.Background(), ch, []byte("x")); err != nil {
		t.Fatal(err)
	}
	return commandsBetween(before, commandCalls(t, r))
}

// stormSubscriber is subscriber k of a storm on ch, where the node's channel
// is at top: it subscribes and checks History's answer. Subscriber k asks
// with since (when recovering) at a point chosen by k. It returns what was
// wrong, or "".
func stormSubscriber(b *Bus, ch string, k int, recovering bool, top Position) string {
	b.Subscribe(ch)
	var since *Position
	want := false
	if recovering {
		switch {
		case k%20 == 0:
			since = &Position{Offset: 10, Epoch: top.Epoch} // older than the 30 kept
		case k%20 == 1:
			since = &Position{Offset: 40, Epoch: "other"}
		default:
			since = &Position{Offset: top.Offset - uint64(k%31), Epoch: top.Epoch}
			want = true
		}
	}
	h, err := b.History(context.Background(), ch, since)
	switch {
	case err != nil:
		return fmt.Sprintf("subscriber %d: %v", k, err)
	case h.Top != top:
		return fmt.Sprintf("subscriber %d: top %+v, want %+v", k, h.Top, top)
	case h.Recovered != want:
		return fmt.Sprintf("subscriber %d since %+v: recovered %v", k, since, h.Recovered)
	}
	if want {
		if uint64(len(h.Messages)) != top.Offset-since.Offset {
			return fmt.Sprintf("subscriber %d since %+v: %d messages", k, since, len(h.Messages))
		}
		for i, m := range h.Messages {
			if m.Offset != since.Offset+uint64(i)+1 || string(m.Data) != strconv.FormatUint(m.Offset, 10) || m.Epoch != top.Epoch {
				return fmt.Sprintf("subscriber %d since %+v: message %d is %+v", k, since, i, m)
			}
		}
	}
	return ""
}

// stormSub is a subscriber as the server keeps one: it buffers what the
// node delivers while its History is read, then switches to live delivery.
type stormSub struct {
	recovering bool
	buffered   []Message
	skipUpTo   uint64 // live messages at or below it were in the answer
	got        []uint64
	from       uint64 // the first offset it must get
}

// TestRedisStormNoMissNoDup subscribes many subscribers, at random times,
// with and without since, on a node while another node publishes without
// pause: each gets every message after its since (or after the answer's
// Top) exactly once and in order, whether its answer came from Redis or
// from the node's own position and window.
func TestRedisStormNoMissNoDup(t *testing.T) {
	testutil.CheckGoroutines(t)
	r := testutil.StartRedis(t)
	cfg := testConfig(r.URL())
	cfg.HistorySize = 200
	pub := newTestNode(t, cfg)
	const ch = "flow"

	var (
		mu   sync.Mutex // guards subs and the stormSubs
		subs []*stormSub
	)
	node, err := NewRedis(context.Background(), cfg, nil, metrics.NewSet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	node.SetHandler(Handler{
		OnMessage: func(m Message) {
			mu.Lock()
			defer mu.Unlock()
			for _, s := range subs {
				switch {
				case s.recovering:
					s.buffered = append(s.buffered, m)
				case m.Offset > s.skipUpTo:
					s.got = append(s.got, m.Offset)
				}
			}
		},
		OnGap: func(string, Position) { t.Errorf("unexpected gap") },
	})
	// A first subscriber, so that the channel is live on the node.
	node.Subscribe(ch)
	if _, err := node.History(context.Background(), ch, nil); err != nil {
		t.Fatal(err)
	}

	var (
		acked   []Position // positions of acknowledged publishes, in order
		ackedMu sync.Mutex
		stop    = make(chan struct{})
		pubDone = make(chan struct{})
	)
	go func() {
		defer close(pubDone)
		for k := 1; ; k++ {
			select {
			case <-stop:
				return
			default:
			}
			p, err := pub.bus.Publish(context.Background(), ch, []byte(strconv.Itoa(k)))
			if err != nil {
				t.Errorf("publish: %v", err)
				return
			}
			ackedMu.Lock()
			acked = append(acked, p)
			ackedMu.Unlock()
			if k%4 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	time.Sleep(100 * time.Millisecond)

	var wg sync.WaitGroup
	for k := range 400 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(rand.IntN(800)) * time.Millisecond)
			var since *Position
			if k%3 != 0 {
				ackedMu.Lock()
				p := acked[max(0, len(acked)-1-rand.IntN(min(len(acked), 150)))]
				ackedMu.Unlock()
				since = &p
			}
			s := &stormSub{recovering: true}
			mu.Lock()
			subs = append(subs, s)
			mu.Unlock()
			node.Subscribe(ch)
			h, err := node.History(context.Background(), ch, since)
			if err != nil {
				t.Errorf("history: %v", err)
				return
			}
			if since != nil && !h.Recovered {
				t.Errorf("since %+v within the history of %d not recovered (top %+v)", since, cfg.HistorySize, h.Top)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			s.from = h.Top.Offset + 1
			if since != nil {
				s.from = since.Offset + 1
				for _, m := range h.Messages {
					s.got = append(s.got, m.Offset)
				}
			}
			for _, m := range s.buffered {
				if m.Offset > h.Top.Offset {
					s.got = append(s.got, m.Offset)
				}
			}
			s.buffered, s.recovering, s.skipUpTo = nil, false, h.Top.Offset
		}()
	}
	wg.Wait()
	time.Sleep(50 * time.Millisecond)
	close(stop)
	<-pubDone
	ackedMu.Lock()
	last := acked[len(acked)-1].Offset
	ackedMu.Unlock()
	testutil.Eventually(t, 5*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, s := range subs {
			if len(s.got) == 0 || s.got[len(s.got)-1] < last {
				return false
			}
		}
		return true
	}, "last message not delivered to every subscriber")
	mu.Lock()
	defer mu.Unlock()
	for i, s := range subs {
		want := make([]uint64, 0, last-s.from+1)
		for o := s.from; o <= last; o++ {
			want = append(want, o)
		}
		if !slices.Equal(s.got, want) {
			t.Fatalf("subscriber %d: got offsets %v…, want %d..%d exactly once", i, s.got[:min(len(s.got), 20)], s.from, last)
		}
	}
	t.Logf("%d subscribers, %d messages published", len(subs), last)
}
