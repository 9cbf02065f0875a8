package bus

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tether/internal/testutil"
)

// localOf returns the in-process backend of b.
func localOf(t testing.TB, b *Bus) *local {
	t.Helper()
	l, ok := b.be.(*local)
	if !ok {
		t.Fatalf("bus backend is %T, not *local", b.be)
	}
	return l
}

// newLocalForTest returns a local bus closed when the test ends.
func newLocalForTest(t testing.TB, cfg Config) *Bus {
	t.Helper()
	b := NewLocal(cfg)
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// localRecorder is a Handler that records what the bus delivers.
type localRecorder struct {
	mu   sync.Mutex
	msgs map[string][]Message
}

func newLocalRecorder(b *Bus) *localRecorder {
	r := &localRecorder{msgs: make(map[string][]Message)}
	b.SetHandler(Handler{OnMessage: func(m Message) {
		r.mu.Lock()
		r.msgs[m.Channel] = append(r.msgs[m.Channel], m)
		r.mu.Unlock()
	}})
	return r
}

func (r *localRecorder) of(ch string) []Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Message(nil), r.msgs[ch]...)
}

func mustPublishLocal(t testing.TB, b *Bus, ch, data string) Position {
	t.Helper()
	p, err := b.Publish(context.Background(), ch, []byte(data))
	if err != nil {
		t.Fatalf("publish to %q: %v", ch, err)
	}
	return p
}

func mustHistoryLocal(t testing.TB, b *Bus, ch string, since *Position) History {
	t.Helper()
	h, err := b.History(context.Background(), ch, since)
	if err != nil {
		t.Fatalf("history of %q: %v", ch, err)
	}
	return h
}

func TestLocalOffsetsPerChannel(t *testing.T) {
	testutil.CheckGoroutines(t)
	b := newLocalForTest(t, Config{})
	rec := newLocalRecorder(b)
	epochs := map[string]string{}
	for i := 1; i <= 20; i++ {
		for _, ch := range []string{"a", "b", "c"} {
			p := mustPublishLocal(t, b, ch, strconv.Itoa(i))
			if p.Offset != uint64(i) {
				t.Fatalf("%s: message %d got offset %d", ch, i, p.Offset)
			}
			if e, ok := epochs[ch]; ok && e != p.Epoch {
				t.Fatalf("%s: epoch changed from %s to %s", ch, e, p.Epoch)
			}
			epochs[ch] = p.Epoch
		}
	}
	if epochs["a"] == "" || epochs["a"] == epochs["b"] || epochs["b"] == epochs["c"] {
		t.Fatalf("epochs are not random per channel: %v", epochs)
	}
	// A batch is published in order; offsets of one channel stay consecutive
	// across the channels interleaved with it.
	pos, err := b.PublishBatch(context.Background(), []Publication{
		{Channel: "a", Data: []byte("21")}, {Channel: "b", Data: []byte("21")}, {Channel: "a", Data: []byte("22")}, {Channel: "d", Data: []byte("1")},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []uint64{21, 21, 22, 1}
	for i, p := range pos {
		if p.Offset != want[i] {
			t.Fatalf("batch position %d: offset %d, want %d (%v)", i, p.Offset, want[i], pos)
		}
	}
	// The handler saw every message once, in offset order, with its data.
	localOf(t, b).waitDelivered(t)
	for ch, n := range map[string]int{"a": 22, "b": 21, "c": 20, "d": 1} {
		msgs := rec.of(ch)
		if len(msgs) != n {
			t.Fatalf("%s: handler got %d messages, want %d", ch, len(msgs), n)
		}
		for i, m := range msgs {
			if m.Offset != uint64(i+1) || string(m.Data) != strconv.Itoa(i+1) || m.Channel != ch {
				t.Fatalf("%s: message %d is %+v", ch, i, m)
			}
		}
	}
}

func TestLocalHistory(t *testing.T) {
	testutil.CheckGoroutines(t)
	b := newLocalForTest(t, Config{HistorySize: 5, HistoryWindow: -1, HistoryTTL: time.Minute})
	var top Position
	for i := 1; i <= 12; i++ {
		top = mustPublishLocal(t, b, "h", strconv.Itoa(i))
	}
	// The window holds offsets 8..12.
	f := func(since *Position, wantRecovered bool, wantFirst uint64) {
		t.Helper()
		h := mustHistoryLocal(t, b, "h", since)
		if h.Top != top {
			t.Fatalf("since %+v: top %+v, want %+v", since, h.Top, top)
		}
		if h.Recovered != wantRecovered {
			t.Fatalf("since %+v: recovered %v, want %v", since, h.Recovered, wantRecovered)
		}
		if !wantRecovered || wantFirst == 0 {
			if len(h.Messages) != 0 {
				t.Fatalf("since %+v: %d messages, want none", since, len(h.Messages))
			}
			return
		}
		if uint64(len(h.Messages)) != top.Offset-wantFirst+1 {
			t.Fatalf("since %+v: %d messages, want %d..%d", since, len(h.Messages), wantFirst, top.Offset)
		}
		for i, m := range h.Messages {
			off := wantFirst + uint64(i)
			if m.Offset != off || m.Epoch != top.Epoch || string(m.Data) != strconv.FormatUint(off, 10) || m.Channel != "h" {
				t.Fatalf("since %+v: message %d is %+v, want offset %d", since, i, m, off)
			}
		}
	}
	pos := func(off uint64) *Position { return &Position{Offset: off, Epoch: top.Epoch} }
	f(nil, false, 0)                                   // position only
	f(pos(7), true, 8)                                 // the whole window
	f(pos(10), true, 11)                               // inside the window
	f(pos(11), true, 12)                               // one missed
	f(pos(12), true, 0)                                // since == top: nothing missed
	f(pos(6), false, 0)                                // offset 7 is gone
	f(pos(0), false, 0)                                // from the start: gone
	f(pos(13), false, 0)                               // ahead of the channel
	f(&Position{Offset: 10, Epoch: "other"}, false, 0) // foreign epoch

	// A channel never published to has a position (offset 0, an epoch) and
	// a since equal to it misses nothing.
	h := mustHistoryLocal(t, b, "fresh", nil)
	if h.Top.Offset != 0 || h.Top.Epoch == "" || h.Recovered {
		t.Fatalf("fresh channel: %+v", h)
	}
	if h2 := mustHistoryLocal(t, b, "fresh", &h.Top); !h2.Recovered || len(h2.Messages) != 0 {
		t.Fatalf("fresh channel since its top: %+v", h2)
	}
	// The first message of that channel has offset 1 in the same epoch.
	if p := mustPublishLocal(t, b, "fresh", "1"); p.Offset != 1 || p.Epoch != h.Top.Epoch {
		t.Fatalf("first publish after history: %+v, want offset 1 epoch %s", p, h.Top.Epoch)
	}

	// Without history nothing but since == top is recovered.
	none := newLocalForTest(t, Config{HistorySize: -1})
	var p Position
	for i := 0; i < 3; i++ {
		p = mustPublishLocal(t, none, "n", "x")
	}
	if h := mustHistoryLocal(t, none, "n", &Position{Offset: p.Offset - 1, Epoch: p.Epoch}); h.Recovered || len(h.Messages) != 0 {
		t.Fatalf("no history, one missed: %+v", h)
	}
	if h := mustHistoryLocal(t, none, "n", &p); !h.Recovered {
		t.Fatalf("no history, since == top: %+v", h)
	}

	// A canceled context is reported.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := b.History(ctx, "h", nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("history with a canceled context: %v", err)
	}
}

func TestLocalHistoryTTL(t *testing.T) {
	testutil.CheckGoroutines(t)
	const ttl = 50 * time.Millisecond
	b := newLocalForTest(t, Config{HistorySize: 10, HistoryTTL: ttl})
	l := localOf(t, b)

	// Nobody interested: the whole channel is forgotten after the TTL, and
	// its next message starts a new epoch.
	old := mustPublishLocal(t, b, "gone", "1")
	mustPublishLocal(t, b, "gone", "2")
	testutil.Eventually(t, 5*time.Second, func() bool { return l.channelCount() == 0 }, "channel not freed after its TTL")
	h := mustHistoryLocal(t, b, "gone", &old)
	if h.Recovered || h.Top.Epoch == old.Epoch || h.Top.Offset != 0 {
		t.Fatalf("history after expiry: %+v (old %+v)", h, old)
	}
	if p := mustPublishLocal(t, b, "gone", "3"); p.Offset != 1 || p.Epoch != h.Top.Epoch {
		t.Fatalf("publish after expiry: %+v, want offset 1 in %s", p, h.Top.Epoch)
	}

	// With interest the channel keeps its epoch and offset but loses its
	// history: a since behind the top is no longer recovered.
	b.Subscribe("kept")
	first := mustPublishLocal(t, b, "kept", "1")
	second := mustPublishLocal(t, b, "kept", "2")
	if h := mustHistoryLocal(t, b, "kept", &first); !h.Recovered || len(h.Messages) != 1 {
		t.Fatalf("history before expiry: %+v", h)
	}
	testutil.Eventually(t, 5*time.Second, func() bool {
		h := mustHistoryLocal(t, b, "kept", &first)
		return !h.Recovered
	}, "history not dropped after its TTL")
	h = mustHistoryLocal(t, b, "kept", &first)
	if h.Top != second || len(h.Messages) != 0 {
		t.Fatalf("interested channel after expiry: %+v, want top %+v", h, second)
	}
	if h := mustHistoryLocal(t, b, "kept", &second); !h.Recovered {
		t.Fatalf("since == top after expiry: %+v", h)
	}
	if p := mustPublishLocal(t, b, "kept", "3"); p.Offset != 3 || p.Epoch != second.Epoch {
		t.Fatalf("publish after expiry with interest: %+v", p)
	}
	// A channel published to keeps its history within the TTL.
	time.Sleep(ttl / 5)
	if h := mustHistoryLocal(t, b, "kept", &second); !h.Recovered || len(h.Messages) != 1 {
		t.Fatalf("fresh history: %+v", h)
	}
	b.Unsubscribe("kept")
	testutil.Eventually(t, 5*time.Second, func() bool { return l.channelCount() == 0 }, "channel not freed after the last unsubscribe and its TTL")
}

func TestLocalInterest(t *testing.T) {
	testutil.CheckGoroutines(t)
	b := newLocalForTest(t, Config{HistoryTTL: 50 * time.Millisecond})
	l := localOf(t, b)
	channels := func(want int) {
		t.Helper()
		if s := b.Stats(); s.Channels != want || !s.Healthy || s.Queued != 0 {
			t.Fatalf("stats %+v, want %d channels", s, want)
		}
	}
	channels(0)
	b.Subscribe("x")
	b.Subscribe("x")
	b.Subscribe("y")
	channels(2)
	b.Unsubscribe("x")
	channels(2) // one of two subscribes on x remains
	b.Unsubscribe("x")
	channels(1)
	b.Unsubscribe("x") // more unsubscribes than subscribes: ignored
	b.Unsubscribe("never")
	channels(1)
	b.Subscribe("x")
	channels(2) // the surplus unsubscribe did not leave a debt
	b.Unsubscribe("x")
	// An interested channel outlives its TTL; the others are freed.
	testutil.Eventually(t, 5*time.Second, func() bool { return l.channelCount() == 1 }, "channels without interest not freed")
	time.Sleep(150 * time.Millisecond)
	if n := l.channelCount(); n != 1 {
		t.Fatalf("%d channels, want only y", n)
	}
	b.Unsubscribe("y")
	channels(0)
	testutil.Eventually(t, 5*time.Second, func() bool { return l.channelCount() == 0 }, "y not freed")
}

func TestLocalClose(t *testing.T) {
	testutil.CheckGoroutines(t)
	b := NewLocal(Config{})
	mustPublishLocal(t, b, "c", "1")
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if _, err := b.Publish(context.Background(), "c", []byte("2")); !errors.Is(err, ErrClosed) {
		t.Fatalf("publish after close: %v", err)
	}
	if _, err := b.History(context.Background(), "c", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("history after close: %v", err)
	}
	b.Subscribe("c") // ignored, must not panic
	b.Unsubscribe("c")
	if b.Stats().Healthy {
		t.Fatal("closed bus reports healthy")
	}
}

// heapInuse returns HeapInuse after a full collection.
func heapInuse() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// TestLocalChannelsDoNotAccumulate publishes to 100k distinct short-lived
// channels, with and without subscribers, and checks that every channel's
// state is freed once nobody is interested and its TTL passed, and that the
// heap returns near where it started.
func TestLocalChannelsDoNotAccumulate(t *testing.T) {
	testutil.CheckGoroutines(t)
	// The sweep scans every channel under the bus's lock every TTL/4;
	// with 100k channels held that takes ~0.1 s under -race, so a shorter
	// TTL would keep the lock held all the time.
	const (
		n   = 100_000
		ttl = time.Second
	)
	b := newLocalForTest(t, Config{HistorySize: 10, HistoryTTL: ttl})
	l := localOf(t, b)
	var delivered atomic.Int64
	b.SetHandler(Handler{OnMessage: func(Message) { delivered.Add(1) }})
	data := []byte(`{"score":"1-0","minute":42}`)
	channel := func(round, i int) string { return "tmp." + strconv.Itoa(round) + "." + strconv.Itoa(i) }
	baseline := heapInuse()
	var retained []int64
	rounds := []struct {
		name       string
		subscribed bool
	}{
		// Channels expire while others are still being published to.
		{"publish only", false},
		// All 100k channels are held at once, then let go together.
		{"subscribed, then all unsubscribed", true},
		{"publish only again", false},
	}
	published := int64(0)
	for round, r := range rounds {
		start := time.Now()
		if r.subscribed {
			for i := 0; i < n; i++ {
				b.Subscribe(channel(round, i))
			}
		}
		for i := 0; i < n; i++ {
			ch := channel(round, i)
			if _, err := b.Publish(context.Background(), ch, data); err != nil {
				t.Fatal(err)
			}
			published++
		}
		held := l.channelCount()
		peak := heapInuse()
		if r.subscribed {
			if held != n || b.Stats().Channels != n {
				t.Fatalf("%s: %d channels held, stats %+v, want %d", r.name, held, b.Stats(), n)
			}
			for i := 0; i < n; i++ {
				b.Unsubscribe(channel(round, i))
			}
		}
		testutil.Eventually(t, 30*time.Second, func() bool { return l.channelCount() == 0 },
			fmt.Sprintf("%s: %d channels still hold state", r.name, l.channelCount()))
		after := heapInuse()
		retained = append(retained, int64(after)-int64(baseline))
		t.Logf("%s: %d channels in %v; heap in use: baseline %.1f MiB, after publishing %.1f MiB (%d channels held), after the TTL %.1f MiB",
			r.name, n, time.Since(start).Round(time.Millisecond), mib(baseline), mib(peak), held, mib(after))
		if s := b.Stats(); s.Channels != 0 {
			t.Fatalf("%s: stats %+v", r.name, s)
		}
	}
	l.waitDelivered(t)
	if got := delivered.Load(); got != published {
		t.Fatalf("handler got %d messages, want %d", got, published)
	}
	// The channels' state (tens of MiB) must be gone, and so must the
	// channel maps' buckets (the sweeper rebuilds a shard's map once it has
	// shrunk to a quarter of its peak); repeating the load must not add to
	// what is retained.
	const bound = 8 << 20
	for i, r := range retained {
		if r > bound {
			t.Errorf("%s: heap still %.1f MiB above the baseline after every channel expired", rounds[i].name, float64(r)/(1<<20))
		}
	}
	if grow := retained[2] - retained[1]; grow > 1<<20 {
		t.Errorf("repeating the load grew the retained heap by %.1f MiB", float64(grow)/(1<<20))
	}
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// TestLocalConcurrentStress publishes, subscribes and reads history from
// many goroutines on overlapping channels, while a short TTL makes the sweep
// free channels under their feet, and checks every contract on the way:
// per channel, the handler is never called concurrently and sees offsets
// 1, 2, 3… within an epoch; batch positions are in order; a recovered
// history is exactly the messages after since.
func TestLocalConcurrentStress(t *testing.T) {
	testutil.CheckGoroutines(t)
	const channels = 8
	publishers, perPublisher := 8, 2000
	if raceEnabled {
		perPublisher = 600
	}
	b := newLocalForTest(t, Config{HistorySize: 16, HistoryTTL: 5 * time.Millisecond})
	type state struct {
		inside atomic.Int32 // handler calls in progress
		epoch  string       // guarded by the handler being serialized
		offset uint64
		msgs   int
		epochs int
	}
	var states [channels]state
	names := make([]string, channels)
	index := make(map[string]int, channels)
	for i := range names {
		names[i] = "stress." + strconv.Itoa(i)
		index[names[i]] = i
	}
	var failures atomic.Int64
	fail := func(format string, args ...any) {
		if failures.Add(1) <= 10 {
			t.Errorf(format, args...)
		}
	}
	b.SetHandler(Handler{OnMessage: func(m Message) {
		st := &states[index[m.Channel]]
		if st.inside.Add(1) != 1 {
			fail("%s: concurrent handler calls", m.Channel)
		}
		switch {
		case m.Epoch == st.epoch && m.Offset != st.offset+1:
			fail("%s: offset %d after %d in epoch %s", m.Channel, m.Offset, st.offset, m.Epoch)
		case m.Epoch != st.epoch && m.Offset != 1:
			fail("%s: new epoch %s starts at offset %d", m.Channel, m.Epoch, m.Offset)
		}
		if m.Epoch != st.epoch {
			st.epochs++
		}
		st.epoch, st.offset = m.Epoch, m.Offset
		st.msgs++
		st.inside.Add(-1)
	}})

	var wg, pubWG sync.WaitGroup
	stop := make(chan struct{})
	var published atomic.Int64
	for p := 0; p < publishers; p++ {
		pubWG.Add(1)
		go func() {
			defer pubWG.Done()
			rng := rand.New(rand.NewPCG(uint64(p), 1))
			for i := 0; i < perPublisher; {
				k := 1 + rng.IntN(4)
				pubs := make([]Publication, k)
				for j := range pubs {
					pubs[j] = Publication{Channel: names[rng.IntN(channels)], Data: []byte(strconv.Itoa(i + j))}
				}
				pos, err := b.PublishBatch(context.Background(), pubs)
				if err != nil {
					fail("publish: %v", err)
					return
				}
				for j := range pubs {
					for x := 0; x < j; x++ {
						if pubs[x].Channel == pubs[j].Channel && pos[x].Epoch == pos[j].Epoch && pos[x].Offset >= pos[j].Offset {
							fail("batch positions out of order: %v for %v", pos, pubs)
						}
					}
				}
				published.Add(int64(k))
				i += k
				if rng.IntN(64) == 0 {
					time.Sleep(time.Duration(rng.IntN(8)) * time.Millisecond) // let the TTL pass now and then
				}
			}
		}()
	}
	// Subscribers come and go, holding some channels for a while.
	for s := 0; s < 4; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(s), 2))
			for {
				select {
				case <-stop:
					return
				default:
				}
				ch := names[rng.IntN(channels)]
				b.Subscribe(ch)
				time.Sleep(time.Duration(rng.IntN(3)) * time.Millisecond)
				b.Unsubscribe(ch)
			}
		}()
	}
	// History readers check what they get against the contract.
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(r), 3))
			last := make(map[string]Position)
			for {
				select {
				case <-stop:
					return
				default:
				}
				ch := names[rng.IntN(channels)]
				var since *Position
				if p, ok := last[ch]; ok && rng.IntN(4) != 0 {
					back := uint64(rng.IntN(24))
					since = &Position{Offset: p.Offset - min(back, p.Offset), Epoch: p.Epoch}
				}
				h, err := b.History(context.Background(), ch, since)
				if err != nil {
					fail("history: %v", err)
					return
				}
				last[ch] = h.Top
				if !h.Recovered {
					if len(h.Messages) != 0 {
						fail("%s: %d messages without recovery", ch, len(h.Messages))
					}
					continue
				}
				if since == nil || since.Epoch != h.Top.Epoch || since.Offset > h.Top.Offset {
					fail("%s: recovered %+v since %+v", ch, h.Top, since)
					continue
				}
				if uint64(len(h.Messages)) != h.Top.Offset-since.Offset {
					fail("%s: %d messages from %d to %d", ch, len(h.Messages), since.Offset, h.Top.Offset)
					continue
				}
				for i, m := range h.Messages {
					if m.Offset != since.Offset+1+uint64(i) || m.Epoch != h.Top.Epoch || m.Channel != ch {
						fail("%s: history message %d is %+v after %+v", ch, i, m, since)
						break
					}
				}
			}
		}()
	}
	pubWG.Wait()
	close(stop)
	wg.Wait()
	localOf(t, b).waitDelivered(t)
	total, epochs := 0, 0
	for i := range states {
		total += states[i].msgs
		epochs += states[i].epochs
	}
	// Epochs beyond one per channel show the sweep freed channels mid-run.
	t.Logf("%d messages on %d channels in %d epochs", total, channels, epochs)
	if int64(total) != published.Load() {
		t.Fatalf("handler got %d messages, %d were published", total, published.Load())
	}
}
