package bus

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"tether/internal/testutil"
)

// BenchmarkRedisPublishIdempotent is BenchmarkRedisPublish with a new
// idempotency key on every message: the claim costs each batch one round
// trip more, and Redis two keys per message.
func BenchmarkRedisPublishIdempotent(b *testing.B) {
	cfg := benchRedisConfig(testutil.StartRedis(b))
	cfg.IdempotencyWindow = time.Minute
	pub := newBenchBus(b, cfg)
	channels := make([]string, 64)
	for i := range channels {
		channels[i] = "bench." + strconv.Itoa(i)
	}
	data := []byte(`{"score":[1,2],"minute":42,"text":"a goal by the home team"}`)
	var next atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n := next.Add(1)
			p := Publication{Channel: channels[n%int64(len(channels))], Data: data,
				IdempotencyKey: "a:order-" + strconv.FormatInt(n, 10)}
			if _, err := pub.PublishBatch(context.Background(), []Publication{p}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// TestIdempotencyMeasure reports what a remembered key costs: in Redis
// (used_memory per key) and in the in-process table (Go heap per key).
func TestIdempotencyMeasure(t *testing.T) {
	if os.Getenv("TETHER_MEASURE") == "" {
		t.Skip("set TETHER_MEASURE=1 to measure")
	}
	const keys = 100_000
	key := func(i int) string { return fmt.Sprintf("a:order-%016d", i) } // 24 bytes
	data := []byte(`{"n":1}`)

	r := testutil.StartRedis(t)
	cfg := RedisConfig{URL: r.URL(), QueueSize: 1 << 20}
	cfg.HistorySize = -1 // only the keys grow
	cfg.IdempotencyWindow = time.Hour
	n := newTestNode(t, cfg)
	used := func() int64 {
		v, _ := strconv.ParseInt(r.Info(t, "used_memory"), 10, 64)
		return v
	}
	publish := func(b *Bus, from, to int) {
		pubs := make([]Publication, 0, 1000)
		for i := from; i < to; i++ {
			pubs = append(pubs, Publication{Channel: "m." + strconv.Itoa(i%100), Data: data, IdempotencyKey: key(i)})
			if len(pubs) == cap(pubs) || i == to-1 {
				if _, err := b.PublishBatch(context.Background(), pubs); err != nil {
					t.Fatal(err)
				}
				pubs = pubs[:0]
			}
		}
	}
	publish(n.bus, 0, 100) // channels' meta keys
	before := used()
	publish(n.bus, 100, 100+keys)
	after := used()
	t.Logf("redis: %d keys, used_memory %d → %d: %.0f bytes per key (24-byte key, channel m.N)",
		keys, before, after, float64(after-before)/keys)
	t.Logf("redis: MEMORY USAGE claim %v, record %v",
		r.Do(t, "MEMORY", "USAGE", "tether:idem:"+key(500)), r.Do(t, "MEMORY", "USAGE", "tether:{m.0}:i:"+key(500)))

	l := NewLocal(Config{HistorySize: -1, IdempotencyWindow: time.Hour, IdempotencyMaxKeys: keys + 1000})
	defer l.Close()
	publish(l, 0, 100)
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	publish(l, 100, 100+keys)
	runtime.GC()
	runtime.ReadMemStats(&m1)
	t.Logf("local: %d keys, heap %d → %d: %.0f bytes per key (24-byte key, channel m.N)",
		keys, m0.HeapAlloc, m1.HeapAlloc, float64(m1.HeapAlloc-m0.HeapAlloc)/keys)
}
