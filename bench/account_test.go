package bench

import (
	"bufio"
	"bytes"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"tether/internal/wsframe"
	"tether/internal/wstest"
)

// newTestPool builds a pool without an engine, for feeding the accounting
// directly.
func newTestPool(t testing.TB, count, messages int) *pool {
	t.Helper()
	words := (messages + 63) / 64
	p := &pool{cfg: poolConfig{Count: count, Messages: messages, Channels: 1}, conns: make([]connState, count), shards: make([]shard, 2)}
	for i := range p.conns {
		p.conns[i] = connState{p: p, idx: int32(i), seen: make([]uint64, words), state: stUp, accounted: true}
	}
	for i := range p.shards {
		p.shards[i].timeline = make([]atomic.Uint64, timelineCap)
	}
	p.phase = &phaseState{done: make(chan struct{})}
	p.phase.stats.Failures = map[string]int{}
	p.phase.stats.Handshake, p.phase.stats.Subscribe = new(Hist), new(Hist)
	p.t0.Store(time.Now().UnixNano())
	return p
}

func deliveryFrame(t0 int64, s int) []byte {
	return serverFrame(wsframe.OpText, []byte(`{"op":"message","channel":"c","offset":`+strconv.Itoa(s+1)+`,"data":{"t":`+strconv.FormatInt(t0, 10)+`,"s":`+strconv.Itoa(s)+`}}`))
}

// feed passes frames to connection i through the real read path.
func feed(p *pool, i int, frames ...[]byte) int {
	cs := &p.conns[i]
	var data []byte
	for _, f := range frames {
		data = append(data, f...)
	}
	var later deferred
	cs.mu.Lock()
	n := p.processLocked(cs, &p.shards[i%len(p.shards)], data, time.Now().UnixNano(), &later)
	cs.mu.Unlock()
	p.shards[i%len(p.shards)].delivered.Add(uint64(n))
	return n
}

func TestAccountingExact(t *testing.T) {
	const m = 130
	p := newTestPool(t, 5, m)
	now := time.Now().UnixNano()
	// conn 0: everything once.
	for s := 0; s < m; s++ {
		feed(p, 0, deliveryFrame(now, s))
	}
	// conn 1: even sequence numbers only, every fourth one three times.
	for s := 0; s < m; s += 2 {
		feed(p, 1, deliveryFrame(now, s))
		if s%4 == 0 {
			feed(p, 1, deliveryFrame(now, s), deliveryFrame(now, s))
		}
	}
	// conn 2: nothing. conn 3: out-of-range sequence numbers and foreign
	// payloads only.
	feed(p, 3, deliveryFrame(now, m), deliveryFrame(now, -1),
		serverFrame(wsframe.OpText, []byte(`{"op":"message","channel":"c","offset":1,"data":{"hello":1}}`)))
	// conn 4: never subscribed; its deliveries do not count.
	p.conns[4].accounted = false
	feed(p, 4, deliveryFrame(now, 1))

	d := p.deliveries()
	evens := (m + 1) / 2
	dupsConn1 := 2 * ((m + 3) / 4)
	want := deliveryStats{
		Subscribers: 4, Messages: m, Expected: 4 * m,
		Delivered:  uint64(m + evens),
		Missing:    uint64(0 + (m - evens) + m + m),
		Duplicates: uint64(dupsConn1),
		Unexpected: 3,
	}
	if d.Subscribers != want.Subscribers || d.Expected != want.Expected || d.Delivered != want.Delivered ||
		d.Missing != want.Missing || d.Duplicates != want.Duplicates || d.Unexpected != want.Unexpected {
		t.Fatalf("got %+v\nwant %+v", d, want)
	}
	if d.Delivered+d.Missing != d.Expected {
		t.Fatal("delivered + missing != expected")
	}
	// One latency value per unique delivery, conn 4's included (it was
	// received, just not expected).
	if d.Latency.Count() != d.Delivered+1 {
		t.Fatalf("latency count %d, want %d", d.Latency.Count(), d.Delivered+1)
	}
}

func TestProcessFragmentsAndControl(t *testing.T) {
	p := newTestPool(t, 1, 10)
	now := time.Now().UnixNano()
	msg := []byte(`{"op":"message","channel":"c","offset":1,"data":{"t":` + strconv.FormatInt(now, 10) + `,"s":3}}`)
	// A message in three fragments with a ping in between, fed one byte
	// at a time.
	var stream []byte
	stream = append(stream, 0x01, byte(10))
	stream = append(stream, msg[:10]...)
	stream = append(stream, serverFrame(wsframe.OpPing, []byte("hb"))...)
	stream = append(stream, 0x00, byte(20))
	stream = append(stream, msg[10:30]...)
	stream = append(stream, 0x80, byte(len(msg)-30))
	stream = append(stream, msg[30:]...)
	stream = append(stream, serverFrame(wsframe.OpText, []byte(`{"op":"ping"}`))...)
	cs := &p.conns[0]
	var out []byte
	n := 0
	for i := range stream {
		var later deferred
		cs.mu.Lock()
		n += p.processLocked(cs, &p.shards[0], stream[i:i+1], now, &later)
		cs.mu.Unlock()
		if later.reason != "" {
			t.Fatalf("failure %q at byte %d", later.reason, i)
		}
		out = append(out, later.out...)
	}
	if n != 1 || cs.seen[0] != 1<<3 {
		t.Fatalf("delivered %d, seen %b", n, cs.seen[0])
	}
	// The replies: a pong control frame echoing "hb", then {"op":"pong"}.
	r := bufio.NewReader(bytes.NewReader(out))
	h, pl, err := wstest.ReadFrame(r, wsframe.FromClient)
	if err != nil || h.Opcode != wsframe.OpPong || string(pl) != "hb" {
		t.Fatalf("first reply %+v %q %v", h, pl, err)
	}
	h, pl, err = wstest.ReadFrame(r, wsframe.FromClient)
	if err != nil || h.Opcode != wsframe.OpText || string(pl) != `{"op":"pong"}` {
		t.Fatalf("second reply %q", pl)
	}
}

func TestMergeDeliv(t *testing.T) {
	a := deliveryStats{Subscribers: 2, Expected: 20, Delivered: 18, Missing: 2, Duplicates: 1, Latency: new(Hist), Timeline: []uint64{1, 2}}
	b := deliveryStats{Subscribers: 1, Expected: 10, Delivered: 10, Latency: new(Hist), Timeline: []uint64{0, 1, 5}}
	a.Latency.Record(5)
	b.Latency.Record(7)
	d := deliveryStats{Latency: new(Hist)}
	mergeDeliv(&d, &a)
	mergeDeliv(&d, &b)
	if d.Subscribers != 3 || d.Expected != 30 || d.Delivered != 28 || d.Missing != 2 || d.Duplicates != 1 ||
		d.Latency.Count() != 2 || len(d.Timeline) != 3 || d.Timeline[1] != 3 || d.Timeline[2] != 5 {
		t.Fatalf("%+v", d)
	}
}

func TestPlanWorkers(t *testing.T) {
	f := func(n, want, conc int, limit uint64, exp []int) {
		t.Helper()
		got := planWorkers(n, want, conc, limit)
		if len(got) != len(exp) {
			t.Fatalf("plan(%d) = %v, want %v", n, got, exp)
		}
		for i := range got {
			if got[i] != exp[i] {
				t.Fatalf("plan(%d) = %v, want %v", n, got, exp)
			}
		}
	}
	f(100, 0, 256, 20000, []int{100})
	f(50000, 0, 256, 20000, []int{16667, 16667, 16666})
	f(10, 4, 256, 20000, []int{3, 3, 2, 2})
	f(3, 8, 256, 20000, []int{1, 1, 1})
}

func TestParseSources(t *testing.T) {
	loop := []node{{Addr: "127.0.0.1:8080"}}
	got, err := parseSources(nil, loop, 45000)
	if err != nil || len(got) != 4 || got[0].String() != "127.0.0.2" || got[3].String() != "127.0.0.5" {
		t.Fatalf("auto: %v %v", got, err)
	}
	got, err = parseSources([]string{"127.0.0.2-127.0.0.4", "127.1.0.1"}, loop, 1)
	if err != nil || len(got) != 4 || got[3].String() != "127.1.0.1" {
		t.Fatalf("ranges: %v %v", got, err)
	}
	if got, _ := parseSources(nil, []node{{Addr: "10.0.0.1:80"}}, 1); got != nil {
		t.Fatalf("non-loopback auto bound %v", got)
	}
	if got, _ := parseSources([]string{"none"}, loop, 1); got != nil {
		t.Fatalf("none bound %v", got)
	}
	if _, err := parseSources([]string{"127.0.0.9-127.0.0.2"}, loop, 1); err == nil {
		t.Fatal("reversed range accepted")
	}
}

func TestParseMetrics(t *testing.T) {
	s := parseMetrics(stringsReader("# HELP x\nprocess_cpu_seconds_total 1.25\nprocess_resident_memory_bytes 1.048576e+06\ngo_memstats_heap_inuse_bytes{a=\"b\"} 42\nother 1\n"))
	if !s.OK || s.CPU != 1.25 || s.RSS != 1048576 || s.Heap != 42 {
		t.Fatalf("%+v", s)
	}
	if s := parseMetrics(stringsReader("nothing 1\n")); s.OK || s.Error == "" {
		t.Fatalf("%+v", s)
	}
}

func stringsReader(s string) *strings.Reader { return strings.NewReader(s) }
