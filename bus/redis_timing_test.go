package bus

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tether/internal/testutil"
)

// BenchmarkRedisPublish measures publish throughput through one node to a
// real redis-server, with many concurrent publishers (as many WebSocket
// clients and API calls would be) and one subscribed node receiving.
func BenchmarkRedisPublish(b *testing.B) {
	r := testutil.StartRedis(b)
	cfg := benchRedisConfig(r)
	pub := newBenchBus(b, cfg)
	sub, err := NewRedis(context.Background(), cfg, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Close()
	var received atomic.Int64
	sub.SetHandler(Handler{OnMessage: func(Message) { received.Add(1) }})
	channels := make([]string, 64)
	for i := range channels {
		channels[i] = "bench." + strconv.Itoa(i)
		sub.Subscribe(channels[i])
		if _, err := sub.History(context.Background(), channels[i], nil); err != nil {
			b.Fatal(err)
		}
	}
	data := []byte(`{"score":[1,2],"minute":42,"text":"a goal by the home team"}`)
	var next atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			ch := channels[next.Add(1)%int64(len(channels))]
			if _, err := pub.Publish(context.Background(), ch, data); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	testutil.WaitFor(10*time.Second, func() bool { return received.Load() >= int64(b.N) })
}

// benchRedisConfig is the Redis bus configuration of the publish
// benchmarks: a queue that never fills.
func benchRedisConfig(r *testutil.Redis) RedisConfig {
	return RedisConfig{URL: r.URL(), CommandTimeout: 5 * time.Second, QueueSize: 1 << 20}
}

// newBenchBus returns a Redis bus closed when the benchmark ends.
func newBenchBus(b *testing.B, cfg RedisConfig) *Bus {
	bus, err := NewRedis(context.Background(), cfg, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { bus.Close() })
	return bus
}

// TestRedisDeliveryAllocs proves the receive path (decode, order check,
// handler call) allocates nothing per message.
func TestRedisDeliveryAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocations differ under -race")
	}
	b := &redisBus{cfg: RedisConfig{KeyPrefix: "tether:"}, chans: make(map[string]*redisChannel)}
	c := &redisChannel{name: "c", pubsubChannel: "tether:{c}", known: true, epoch: "e1"}
	b.chans["c"] = c
	var n int
	b.setHandler(Handler{OnMessage: func(m Message) { n += len(m.Data) }})
	payloads := make([]string, 2000)
	for i := range payloads {
		payloads[i] = string(appendPayload(nil, "e1", uint64(i+1), []byte(`{"a":1}`)))
	}
	i := 0
	allocs := testing.AllocsPerRun(1000, func() {
		b.receive("tether:{c}", payloads[i])
		i++
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per delivered message", allocs)
	}
	if c.last != uint64(i) || n != 7*i {
		t.Fatalf("delivered up to %d (%d bytes), want %d", c.last, n, i)
	}
}

// TestRedisMeasure prints Redis round trips per published message and
// Redis memory per channel. Run with:
//
//	TETHER_MEASURE=1 go test -run TestRedisMeasure -v ./bus/
func TestRedisMeasure(t *testing.T) {
	if os.Getenv("TETHER_MEASURE") == "" {
		t.Skip("set TETHER_MEASURE=1 to measure")
	}
	r := testutil.StartRedis(t)
	cfg := RedisConfig{URL: r.URL(), QueueSize: 1 << 20}
	n := newTestNode(t, cfg)
	sub := newTestNode(t, cfg)
	const (
		channels   = 100
		publishers = 64
		messages   = 100000
	)
	for i := range channels {
		sub.subscribe(t, "m."+strconv.Itoa(i))
	}
	data := []byte(`{"score":[1,2],"minute":42,"text":"a goal by the home team"}`)
	info := func(field string) int64 {
		v, _ := strconv.ParseInt(r.Info(t, field), 10, 64)
		return v
	}
	cmdCalls := func(cmd string) int64 {
		// cmdstat_evalsha:calls=N,usec=…
		s := r.Info(t, "cmdstat_"+cmd)
		var calls int64
		fmt.Sscanf(s, "calls=%d", &calls)
		return calls
	}
	r.Do(t, "CONFIG", "RESETSTAT")
	start := time.Now()
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := p; k < messages; k += publishers {
				if _, err := n.bus.Publish(context.Background(), "m."+strconv.Itoa(k%channels), data); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	batches := n.counter(`tether_bus_batch_size_count{op="publish"}`)
	t.Logf("published %d messages from %d goroutines in %v (%.0f msg/s)", messages, publishers, elapsed, messages/elapsed.Seconds())
	t.Logf("publish pipelines (client round trips): %d = %.4f per message, mean batch %.1f",
		batches, float64(batches)/messages, float64(messages)/float64(batches))
	t.Logf("redis: total_commands_processed %d, evalsha %d, total_reads_processed %d (%.4f per message), total_writes_processed %d",
		info("total_commands_processed"), cmdCalls("evalsha"), info("total_reads_processed"),
		float64(info("total_reads_processed"))/messages, info("total_writes_processed"))
	testutil.Eventually(t, 30*time.Second, func() bool {
		total := 0
		for i := range channels {
			total += len(sub.received("m." + strconv.Itoa(i)))
		}
		return total == messages
	}, "not every message was delivered")

	// Memory per channel with a full history.
	const (
		memChannels = 1000
		history     = 100
	)
	r.Do(t, "FLUSHALL")
	base := info("used_memory")
	var pubs []Publication
	for i := range memChannels {
		for range history {
			pubs = append(pubs, Publication{Channel: "mem." + strconv.Itoa(i), Data: data})
		}
	}
	for len(pubs) > 0 {
		k := min(len(pubs), 1000)
		if _, err := n.bus.PublishBatch(context.Background(), pubs[:k]); err != nil {
			t.Fatal(err)
		}
		pubs = pubs[k:]
	}
	used := info("used_memory")
	meta, _ := r.Do(t, "MEMORY", "USAGE", "tether:{mem.1}:m", "SAMPLES", "0").(int64)
	hist, _ := r.Do(t, "MEMORY", "USAGE", "tether:{mem.1}:h", "SAMPLES", "0").(int64)
	t.Logf("memory: %d channels x %d messages of %d bytes: used_memory +%d bytes = %d bytes per channel (%.1f per message)",
		memChannels, history, len(data), used-base, (used-base)/memChannels, float64(used-base)/memChannels/history)
	t.Logf("MEMORY USAGE of one channel: meta %d bytes, history %d bytes", meta, hist)
}
