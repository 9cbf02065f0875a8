package server

import (
	"bufio"
	"io"
	"net"
	"runtime"
	"strconv"
	"testing"
	"time"

	"tether/bus"
)

// discardSubscribers opens n connections subscribed to channel whose
// readers discard everything after the subscribed reply, so that reading
// them costs no allocation in the test process.
func discardSubscribers(t testing.TB, ts *testServer, channel string, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	for i := 0; i < n; i++ {
		c := mustDial(t, ts.addr)
		c.sendRaw(`{"op":"subscribe","channel":"` + channel + `"}`)
		c.expect("subscribed")
		_ = c.conn.SetReadDeadline(time.Time{})
		go func(br *bufio.Reader) { _, _ = io.Copy(io.Discard, br) }(c.br)
		conns = append(conns, c.conn)
	}
	return conns
}

// waitFlushed spins until no connection has frames queued.
func (s *Server) waitFlushed() {
	for {
		idle := true
		for _, f := range s.flushers {
			f.mu.Lock()
			if len(f.queue) > 0 {
				idle = false
			}
			f.mu.Unlock()
		}
		if idle {
			busy := false
			for i := range s.conns.shards {
				sh := &s.conns.shards[i]
				sh.mu.Lock()
				for _, c := range sh.conns {
					c.mu.Lock()
					busy = busy || c.queued
					c.mu.Unlock()
				}
				sh.mu.Unlock()
			}
			if !busy {
				return
			}
		}
		runtime.Gosched()
	}
}

func BenchmarkFanout(b *testing.B) {
	for _, n := range []int{1, 100, 1000, 5000} {
		b.Run("subs="+strconv.Itoa(n), func(b *testing.B) {
			ts := startServer(b, Config{MaxConns: -1, AcceptRate: -1})
			discardSubscribers(b, ts, "bench", n)
			m := bus.Message{Channel: "bench", Epoch: "e", Data: []byte(`{"score":[1,2],"team":"blue"}`)}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				m.Offset = uint64(i + 1)
				ts.onBusMessage(m)
				ts.waitFlushed()
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "deliveries/s")
		})
	}
}

// TestWriteCoalescing publishes a burst faster than sockets are written
// and checks that frames queued meanwhile went out together: fewer writes
// than deliveries.
func TestWriteCoalescing(t *testing.T) {
	ts := startServer(t, Config{Flushers: 1})
	discardSubscribers(t, ts, "burst", 50)
	writes0 := ts.metric(t, "tether_socket_writes_total")
	delivered0 := ts.metric(t, "tether_messages_delivered_total")
	m := bus.Message{Channel: "burst", Epoch: "e", Data: []byte(`{"k":"v"}`)}
	for i := 0; i < 2000; i++ {
		m.Offset = uint64(i + 1)
		ts.onBusMessage(m)
	}
	ts.waitFlushed()
	writes := ts.metric(t, "tether_socket_writes_total") - writes0
	delivered := ts.metric(t, "tether_messages_delivered_total") - delivered0
	if delivered != 2000*50 {
		t.Fatalf("delivered %v", delivered)
	}
	t.Logf("%v deliveries in %v writes (%.1f per write)", delivered, writes, delivered/writes)
	if writes >= delivered/2 {
		t.Fatalf("%v writes for %v deliveries: frames were not coalesced", writes, delivered)
	}
}

func busMessageForBench() bus.Message {
	return bus.Message{Channel: "scores.m1", Offset: 45, Epoch: "e1", Data: []byte(`{"home":2,"away":1,"minute":81}`)}
}
