package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"tether/bus"
	"tether/internal/testutil"
	"tether/internal/wsframe"
)

// Acceptance tests of several nodes sharing channels through a real Redis
// (docs/cluster.md), seen from WebSocket clients and the HTTP API.

// clusterHTTP is the HTTP client of these tests; its idle connections are
// closed when each test ends, so that they do not count as leaks.
var clusterHTTP = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 8}}

// checkClusterLeaks fails the test if goroutines are left behind when it
// ends. Call it first, so that its check runs after every other cleanup.
func checkClusterLeaks(t *testing.T) {
	t.Helper()
	testutil.CheckGoroutines(t)
	t.Cleanup(func() {
		clusterHTTP.CloseIdleConnections()
		http.DefaultClient.CloseIdleConnections()
	})
}

// redisTestConfig is a Redis bus configuration with short timings.
func redisTestConfig() bus.RedisConfig {
	return bus.RedisConfig{
		Config:         bus.Config{HistorySize: 10000, HistoryTTL: time.Minute},
		Linger:         200 * time.Millisecond,
		Shards:         2,
		CommandTimeout: 300 * time.Millisecond,
	}
}

// startRedisNodes starts n nodes, each with its own Redis bus configured by
// rcfg, and its bus and server metrics in one set.
func startRedisNodes(t *testing.T, n int, cfg Config, rcfg bus.RedisConfig) []*testServer {
	t.Helper()
	nodes := make([]*testServer, n)
	for i := range nodes {
		set := metrics.NewSet()
		log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
		b, err := bus.NewRedis(context.Background(), rcfg, log.With("node", i), set)
		if err != nil {
			t.Fatal(err)
		}
		c := cfg
		c.NodeID = "node-" + strconv.Itoa(i)
		c.Metrics = set
		nodes[i] = startServerWithBus(t, c, b)
	}
	return nodes
}

// apiResult is the answer to an HTTP publish.
type apiResult struct {
	status     int
	retryAfter string
	offset     uint64
	epoch      string
	code       string // error code, if any
}

// postPublish publishes data to channel through addr's HTTP API. It may be
// called from any goroutine.
func postPublish(addr, channel string, data any) (apiResult, error) {
	body, _ := json.Marshal(map[string]any{"channel": channel, "data": data})
	resp, err := clusterHTTP.Post("http://"+addr+"/api/publish", "application/json", strings.NewReader(string(body)))
	if err != nil {
		return apiResult{}, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m struct {
		Offset uint64 `json:"offset"`
		Epoch  string `json:"epoch"`
		Error  struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return apiResult{}, fmt.Errorf("publish answered %d with non-JSON %q", resp.StatusCode, raw)
	}
	return apiResult{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After"), offset: m.Offset, epoch: m.Epoch, code: m.Error.Code}, nil
}

// getStatus returns the status and body of a GET, failing on transport
// errors (a node that does not answer within the client timeout).
func getStatus(t *testing.T, addr, path string) (int, string) {
	t.Helper()
	resp, err := clusterHTTP.Get("http://" + addr + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// peer is a WebSocket client whose frames are read by a goroutine that
// answers server pings and records everything else, so that a test can
// drive many clients at once.
type peer struct {
	c    *testClient
	name string
	done chan struct{} // closed when the reader stops

	mu     sync.Mutex
	frames []map[string]any // every data frame but pings, in arrival order
	pings  int
	err    error // why the reader stopped
}

func dialPeer(t *testing.T, addr, name string) *peer {
	t.Helper()
	p := &peer{c: mustDial(t, addr), name: name, done: make(chan struct{})}
	go p.read()
	t.Cleanup(func() {
		p.c.conn.Close()
		<-p.done
	})
	return p
}

func (p *peer) read() {
	defer close(p.done)
	for {
		m, _, err := p.c.next(time.Hour)
		if err != nil {
			p.mu.Lock()
			p.err = err
			p.mu.Unlock()
			return
		}
		if m["op"] == "ping" {
			_ = p.c.writeFrame(wsframe.OpText, []byte(`{"op":"pong"}`))
			p.mu.Lock()
			p.pings++
			p.mu.Unlock()
			continue
		}
		p.mu.Lock()
		p.frames = append(p.frames, m)
		p.mu.Unlock()
	}
}

// write sends a frame; it may be called from any goroutine.
func (p *peer) write(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return p.c.writeFrame(wsframe.OpText, b)
}

func (p *peer) snapshot() []map[string]any {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]map[string]any(nil), p.frames...)
}

func (p *peer) pingCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pings
}

func (p *peer) readErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// find returns the first frame with op whose fields equal those in match.
func (p *peer) find(op string, match map[string]any) map[string]any {
	for _, f := range p.snapshot() {
		if f["op"] != op {
			continue
		}
		ok := true
		for k, v := range match {
			if fmt.Sprint(f[k]) != fmt.Sprint(v) {
				ok = false
				break
			}
		}
		if ok {
			return f
		}
	}
	return nil
}

// waitFrame waits for a frame with op matching match.
func (p *peer) waitFrame(t *testing.T, op string, match map[string]any) map[string]any {
	t.Helper()
	var f map[string]any
	testutil.Eventually(t, 10*time.Second, func() bool {
		f = p.find(op, match)
		return f != nil || p.readErr() != nil
	}, fmt.Sprintf("%s: no %s frame matching %v", p.name, op, match))
	if f == nil {
		t.Fatalf("%s: connection lost waiting for %s %v: %v", p.name, op, match, p.readErr())
	}
	return f
}

// subscribe subscribes and returns the subscribed frame.
func (p *peer) subscribe(t *testing.T, channel string, since *bus.Position) map[string]any {
	t.Helper()
	id := "sub-" + channel + "-" + strconv.Itoa(len(p.snapshot()))
	req := map[string]any{"op": "subscribe", "channel": channel, "id": id}
	if since != nil {
		req["since"] = map[string]any{"offset": since.Offset, "epoch": since.Epoch}
	}
	if err := p.write(req); err != nil {
		t.Fatal(err)
	}
	var f map[string]any
	testutil.Eventually(t, 10*time.Second, func() bool {
		for _, x := range p.snapshot() {
			if x["id"] == id && (x["op"] == "subscribed" || x["op"] == "error") {
				f = x
				return true
			}
		}
		return false
	}, p.name+": no reply to subscribe "+channel)
	if f["op"] != "subscribed" {
		t.Fatalf("%s: subscribe %s: %v", p.name, channel, f)
	}
	return f
}

// streamOf returns the offsets of channel's message frames, and their data
// as JSON, in arrival order.
func (p *peer) streamOf(channel string) (offsets []uint64, data []string) {
	for _, f := range p.snapshot() {
		if f["op"] == "message" && f["channel"] == channel {
			offsets = append(offsets, num(f["offset"]))
			b, _ := json.Marshal(f["data"])
			data = append(data, string(b))
		}
	}
	return offsets, data
}

// lastOffset returns the offset of channel's last message frame, or 0.
func (p *peer) lastOffset(channel string) uint64 {
	offs, _ := p.streamOf(channel)
	if len(offs) == 0 {
		return 0
	}
	return offs[len(offs)-1]
}

// checkContiguous fails unless offsets are exactly from, from+1, …, to.
func checkContiguous(t *testing.T, who string, offsets []uint64, from, to uint64) {
	t.Helper()
	if uint64(len(offsets)) != to-from+1 {
		t.Errorf("%s: %d messages, want offsets %d..%d (%d): %s", who, len(offsets), from, to, to-from+1, summarize(offsets))
		return
	}
	for i, off := range offsets {
		if off != from+uint64(i) {
			t.Errorf("%s: message %d has offset %d, want %d: %s", who, i, off, from+uint64(i), summarize(offsets))
			return
		}
	}
}

// summarize shows the runs of consecutive offsets, e.g. "1-40 42-50".
func summarize(offsets []uint64) string {
	var b strings.Builder
	for i := 0; i < len(offsets); {
		j := i
		for j+1 < len(offsets) && offsets[j+1] == offsets[j]+1 {
			j++
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		if i == j {
			fmt.Fprint(&b, offsets[i])
		} else {
			fmt.Fprintf(&b, "%d-%d", offsets[i], offsets[j])
		}
		i = j + 1
	}
	return "[" + b.String() + "]"
}

// testFanOutAcrossNodes checks that messages published concurrently to
// every node, through the HTTP API and client publish frames, reach every
// subscriber on every node exactly once and in offset order, with the data
// the publisher was acknowledged for at that offset.
func testFanOutAcrossNodes(t *testing.T, nodes []*testServer) {
	channels := []string{"fan.a", "fan.b", "fan.c", "fan.d"}
	const (
		subsPerNode = 3
		perAPI      = 50 // messages of each node's HTTP publisher
		perClient   = 50 // messages of each node's WebSocket publisher
	)
	type sub struct {
		p    *peer
		base map[string]uint64
	}
	var subs []sub
	for i, ts := range nodes {
		for j := 0; j < subsPerNode; j++ {
			s := sub{p: dialPeer(t, ts.addr, fmt.Sprintf("node %d sub %d", i, j)), base: map[string]uint64{}}
			for _, ch := range channels {
				s.base[ch] = num(s.p.subscribe(t, ch, nil)["offset"])
			}
			subs = append(subs, s)
		}
	}
	publishers := make([]*peer, len(nodes))
	for i, ts := range nodes {
		publishers[i] = dialPeer(t, ts.addr, fmt.Sprintf("node %d publisher", i))
	}

	// acked maps channel and offset to the data acknowledged there.
	var (
		mu    sync.Mutex
		acked = map[string]map[uint64]string{}
		wg    sync.WaitGroup
	)
	for _, ch := range channels {
		acked[ch] = map[uint64]string{}
	}
	record := func(ch string, off uint64, data string) {
		mu.Lock()
		defer mu.Unlock()
		if prev, dup := acked[ch][off]; dup {
			t.Errorf("%s offset %d acknowledged twice: %s and %s", ch, off, prev, data)
		}
		acked[ch][off] = data
	}
	for i, ts := range nodes {
		wg.Add(2)
		go func() { // HTTP API publisher
			defer wg.Done()
			for k := 0; k < perAPI; k++ {
				ch := channels[(i+k)%len(channels)]
				data := fmt.Sprintf(`{"from":"api-%d","k":%d}`, i, k)
				r, err := postPublish(ts.addr, ch, json.RawMessage(data))
				if err != nil || r.status != 200 {
					t.Errorf("node %d: publish: %+v %v", i, r, err)
					return
				}
				record(ch, r.offset, data)
			}
		}()
		go func() { // client publisher: frames sent back to back
			defer wg.Done()
			p := publishers[i]
			for k := 0; k < perClient; k++ {
				ch := channels[(i+2*k)%len(channels)]
				if err := p.write(map[string]any{"op": "publish", "channel": ch, "id": k,
					"data": json.RawMessage(fmt.Sprintf(`{"from":"ws-%d","k":%d}`, i, k))}); err != nil {
					t.Errorf("node %d: client publish: %v", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for i, p := range publishers {
		testutil.Eventually(t, 15*time.Second, func() bool {
			n := 0
			for _, f := range p.snapshot() {
				if f["op"] == "ack" || f["op"] == "error" {
					n++
				}
			}
			return n == perClient
		}, fmt.Sprintf("node %d: client publishes not all answered", i))
		for k := 0; k < perClient; k++ {
			f := p.find("ack", map[string]any{"id": k})
			if f == nil {
				t.Fatalf("node %d: client publish %d not acknowledged: %v", i, k, p.find("error", map[string]any{"id": k}))
			}
			record(channels[(i+2*k)%len(channels)], num(f["offset"]), fmt.Sprintf(`{"from":"ws-%d","k":%d}`, i, k))
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// Every subscriber gets offsets base+1..top of every channel, each once,
	// in order, carrying the acknowledged data.
	total := 0
	for _, ch := range channels {
		total += len(acked[ch])
	}
	if want := len(nodes) * (perAPI + perClient); total != want {
		t.Fatalf("%d acknowledged offsets, want %d", total, want)
	}
	for _, s := range subs {
		for _, ch := range channels {
			top := s.base[ch] + uint64(len(acked[ch]))
			testutil.Eventually(t, 15*time.Second, func() bool { return s.p.lastOffset(ch) >= top },
				fmt.Sprintf("%s: %s reached only offset %d of %d", s.p.name, ch, s.p.lastOffset(ch), top))
			offs, data := s.p.streamOf(ch)
			checkContiguous(t, s.p.name+" "+ch, offs, s.base[ch]+1, top)
			for i, off := range offs {
				if want, ok := acked[ch][off]; !ok || !sameJSON(data[i], want) {
					t.Errorf("%s: %s offset %d carries %s, acknowledged %q", s.p.name, ch, off, data[i], want)
					break
				}
			}
		}
		if err := s.p.readErr(); err != nil {
			t.Errorf("%s: connection lost: %v", s.p.name, err)
		}
	}
	t.Logf("%d messages on %d channels to %d subscribers on %d nodes", total, len(channels), len(subs), len(nodes))
}

// sameJSON reports whether a and b encode the same JSON value.
func sameJSON(a, b string) bool {
	var x, y any
	if json.Unmarshal([]byte(a), &x) != nil || json.Unmarshal([]byte(b), &y) != nil {
		return false
	}
	return fmt.Sprint(x) == fmt.Sprint(y)
}

// TestClusterFanOut: three nodes on one Redis deliver every message
// published to any of them to every subscriber exactly once, in order.
func TestClusterFanOut(t *testing.T) {
	checkClusterLeaks(t)
	r := testutil.StartRedis(t)
	rcfg := redisTestConfig()
	rcfg.URL = r.URL()
	nodes := startRedisNodes(t, 3, Config{AllowClientPublish: true, ClientMsgRate: -1}, rcfg)
	testFanOutAcrossNodes(t, nodes)
}

// TestClusterFanOutRedisCluster runs the same delivery test on a Redis
// Cluster of three masters (sharded pub/sub).
func TestClusterFanOutRedisCluster(t *testing.T) {
	checkClusterLeaks(t)
	c := testutil.StartCluster(t, 3)
	rcfg := redisTestConfig()
	rcfg.ClusterAddrs = c.Addrs()
	rcfg.CommandTimeout = time.Second // go-redis learns the slot map on first use
	nodes := startRedisNodes(t, 3, Config{AllowClientPublish: true, ClientMsgRate: -1}, rcfg)
	testFanOutAcrossNodes(t, nodes)
	// The channels' shard channels live on more than one master, each
	// subscribed once per node.
	owners := map[string]bool{}
	for _, ch := range []string{"fan.a", "fan.b", "fan.c", "fan.d"} {
		var subs int64
		for _, n := range c.Nodes() {
			if k := n.NumSub(t, "tether:{"+ch+"}"); k > 0 {
				subs += k
				owners[n.Addr()] = true
			}
		}
		if subs != 3 {
			t.Errorf("%s: %d shard subscribers, want one per node", ch, subs)
		}
	}
	t.Logf("channels spread over %d masters", len(owners))
}

// TestClusterRecoveryAcrossNodes moves a client from node to node while
// messages keep coming: each reconnection with since recovers every missed
// message, in order, then continues live, with no gap and no duplicate.
func TestClusterRecoveryAcrossNodes(t *testing.T) {
	checkClusterLeaks(t)
	r := testutil.StartRedis(t)
	rcfg := redisTestConfig()
	rcfg.URL = r.URL()
	nodes := startRedisNodes(t, 3, Config{}, rcfg)
	const ch = "rec.x"
	stop := make(chan struct{})
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		lastPub  uint64
		pubCount int
	)
	// Stops the publisher, also before the nodes shut down if the test fails.
	stopPublisher := sync.OnceFunc(func() {
		close(stop)
		wg.Wait()
	})
	t.Cleanup(stopPublisher)
	wg.Add(1)
	go func() { // publishes to every node in turn until stopped
		defer wg.Done()
		for k := 0; ; k++ {
			select {
			case <-stop:
				return
			default:
			}
			res, err := postPublish(nodes[k%len(nodes)].addr, ch, k)
			if err != nil || res.status != 200 {
				t.Errorf("publish %d: %+v %v", k, res, err)
				return
			}
			mu.Lock()
			lastPub, pubCount = res.offset, pubCount+1
			mu.Unlock()
			time.Sleep(time.Millisecond)
		}
	}()
	published := func() uint64 {
		mu.Lock()
		defer mu.Unlock()
		return lastPub
	}

	var (
		pos       bus.Position
		recovered int // messages delivered from history across rounds
	)
	for round := 0; round < 6; round++ {
		ts := nodes[round%len(nodes)]
		c := mustDial(t, ts.addr)
		req := map[string]any{"op": "subscribe", "channel": ch, "id": round}
		if round > 0 {
			req["since"] = map[string]any{"offset": pos.Offset, "epoch": pos.Epoch}
		}
		c.send(req)
		sub := c.expect("subscribed")
		top := num(sub["offset"])
		if round == 0 {
			pos = bus.Position{Offset: top, Epoch: sub["epoch"].(string)}
		} else {
			if sub["recovered"] != true || sub["epoch"] != pos.Epoch {
				t.Fatalf("round %d on %s: not recovered from %+v: %v", round, ts.cfg.NodeID, pos, sub)
			}
			recovered += int(top - pos.Offset)
		}
		// Read past the recovered part into live messages, then vanish.
		until := max(top, pos.Offset) + 20
		for pos.Offset < until {
			m := c.expect("message")
			if off := num(m["offset"]); off != pos.Offset+1 {
				t.Fatalf("round %d on %s: offset %d after %d", round, ts.cfg.NodeID, off, pos.Offset)
			}
			pos.Offset++
		}
		c.conn.Close()
		// Let messages pass while the client is away.
		from := published()
		testutil.Eventually(t, 5*time.Second, func() bool { return published() >= from+10 }, "publishing stalled")
	}
	stopPublisher()
	if recovered == 0 {
		t.Fatal("no message was missed while away: the test proved nothing")
	}
	// A last reconnection catches up to the end, then receives live.
	end := published()
	c := mustDial(t, nodes[1].addr)
	c.send(map[string]any{"op": "subscribe", "channel": ch, "since": map[string]any{"offset": pos.Offset, "epoch": pos.Epoch}})
	if sub := c.expect("subscribed"); sub["recovered"] != true || num(sub["offset"]) != end {
		t.Fatalf("final catch-up: %v, want recovered at %d", sub, end)
	}
	for pos.Offset < end {
		if off := num(c.expect("message")["offset"]); off != pos.Offset+1 {
			t.Fatalf("catch-up: offset %d after %d", off, pos.Offset)
		}
		pos.Offset++
	}
	live := nodes[2].mustPublish(t, ch, "live")
	if m := c.expect("message"); num(m["offset"]) != live || m["data"] != "live" {
		t.Fatalf("live message %v, want offset %d", m, live)
	}
	t.Logf("%d messages published, %d recovered from history over 5 reconnections", pubCount, recovered)
}

// TestClusterInterest checks that a node subscribes in Redis only to the
// channels it has clients of, and that once every client left and the
// linger and TTL passed, Redis holds nothing of tether's.
func TestClusterInterest(t *testing.T) {
	checkClusterLeaks(t)
	r := testutil.StartRedis(t)
	rcfg := redisTestConfig()
	rcfg.URL = r.URL()
	rcfg.HistoryTTL = 500 * time.Millisecond
	nodes := startRedisNodes(t, 3, Config{}, rcfg)
	a, b, c := nodes[0], nodes[1], nodes[2]
	onA := dialPeer(t, a.addr, "client of a")
	onB := dialPeer(t, b.addr, "client of b")
	onA.subscribe(t, "only.a", nil)
	onB.subscribe(t, "only.b", nil)
	onB.subscribe(t, "both", nil)
	onA.subscribe(t, "both", nil)
	numSub := func(ch string) int64 { return r.NumSub(t, "tether:{"+ch+"}") }
	if n := numSub("only.a"); n != 1 {
		t.Fatalf("only.a has %d Redis subscribers, want 1 (node a)", n)
	}
	if n := numSub("only.b"); n != 1 {
		t.Fatalf("only.b has %d Redis subscribers, want 1 (node b)", n)
	}
	if n := numSub("both"); n != 2 {
		t.Fatalf("both has %d Redis subscribers, want 2", n)
	}
	// Node c serves nobody: it subscribes to nothing, yet publishes fine.
	for _, ch := range []string{"only.a", "only.b", "both"} {
		c.mustPublish(t, ch, ch)
	}
	onA.waitFrame(t, "message", map[string]any{"channel": "only.a"})
	onA.waitFrame(t, "message", map[string]any{"channel": "both"})
	onB.waitFrame(t, "message", map[string]any{"channel": "only.b"})
	onB.waitFrame(t, "message", map[string]any{"channel": "both"})
	if f := onA.find("message", map[string]any{"channel": "only.b"}); f != nil {
		t.Fatalf("client of a got a message it did not subscribe to: %v", f)
	}
	if n := c.metric(t, "tether_bus_subscribed_channels"); n != 0 {
		t.Fatalf("node c has %v subscribed channels", n)
	}
	if n := a.metric(t, "tether_bus_subscribed_channels"); n != 2 {
		t.Fatalf("node a has %v subscribed channels, want 2", n)
	}
	// A flapping client within the linger does not unsubscribe in Redis.
	if err := onA.write(map[string]any{"op": "unsubscribe", "channel": "only.a", "id": "u1"}); err != nil {
		t.Fatal(err)
	}
	onA.waitFrame(t, "unsubscribed", map[string]any{"id": "u1"})
	onA.subscribe(t, "only.a", nil)
	if n := numSub("only.a"); n != 1 {
		t.Fatalf("only.a has %d Redis subscribers after a flap", n)
	}

	// Everyone leaves: after linger + TTL Redis is empty.
	for _, p := range []*peer{onA, onB} {
		p.c.conn.Close()
		<-p.done
	}
	// The control plane's channels and node registry ({ctl}) stay while
	// the nodes run.
	notCtl := func(names []string) int {
		n := 0
		for _, x := range names {
			if !strings.Contains(x, "{ctl}") {
				n++
			}
		}
		return n
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return notCtl(r.PubSubChannels(t, "*")) == 0 },
		"pub/sub channels remain after every client left")
	testutil.Eventually(t, 5*time.Second, func() bool { return notCtl(r.Keys(t, "*")) == 0 },
		"keys remain after every client left and the TTL passed")
	for _, ts := range nodes {
		if n := ts.index.count(); n != 0 {
			t.Errorf("%s: %d channels in the index", ts.cfg.NodeID, n)
		}
		if s := ts.bus.Stats(); s.Channels != 0 {
			t.Errorf("%s: bus stats %+v", ts.cfg.NodeID, s)
		}
	}
}

// TestClusterPubSubKilled kills the pub/sub connections of every node
// repeatedly while another node keeps publishing: the subscribers of the
// killed node still see every offset, in order.
func TestClusterPubSubKilled(t *testing.T) {
	checkClusterLeaks(t)
	r := testutil.StartRedis(t)
	rcfg := redisTestConfig()
	rcfg.URL = r.URL()
	nodes := startRedisNodes(t, 2, Config{}, rcfg)
	a, b := nodes[0], nodes[1]
	const ch = "kill.k"
	var subs []*peer
	var base uint64
	for i := 0; i < 3; i++ {
		p := dialPeer(t, a.addr, fmt.Sprintf("sub %d", i))
		base = num(p.subscribe(t, ch, nil)["offset"])
		subs = append(subs, p)
	}
	const total = 400
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		last uint64
	)
	t.Cleanup(wg.Wait) // the publisher ends by itself; wait for it if the test fails
	wg.Add(1)
	go func() {
		defer wg.Done()
		for k := 0; k < total; k++ {
			res, err := postPublish(b.addr, ch, k)
			if err != nil || res.status != 200 {
				t.Errorf("publish %d: %+v %v", k, res, err)
				return
			}
			mu.Lock()
			last = res.offset
			mu.Unlock()
			if k%40 == 39 {
				time.Sleep(5 * time.Millisecond)
			}
		}
	}()
	killed := int64(0)
	for i := 0; i < 3; i++ {
		testutil.WaitFor(2*time.Second, func() bool { return subs[0].lastOffset(ch) > base+uint64(i*100) })
		killed += r.KillPubSub(t)
		time.Sleep(30 * time.Millisecond)
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	if last != base+total {
		t.Fatalf("last offset %d, want %d", last, base+total)
	}
	for _, p := range subs {
		testutil.Eventually(t, 15*time.Second, func() bool { return p.lastOffset(ch) >= last },
			fmt.Sprintf("%s: reached only offset %d of %d", p.name, p.lastOffset(ch), last))
		offs, _ := p.streamOf(ch)
		checkContiguous(t, p.name, offs, base+1, last)
		if f := p.find("resync", nil); f != nil {
			t.Errorf("%s: unexpected resync %v", p.name, f)
		}
	}
	if killed == 0 || a.metric(t, "tether_bus_reconnects_total") == 0 {
		t.Fatalf("nothing was killed (%d) or no reconnect counted", killed)
	}
	t.Logf("%d pub/sub connections killed; node a: %v reconnects, %v gaps repaired", killed,
		a.metric(t, "tether_bus_reconnects_total"), a.metric(t, "tether_bus_gap_repaired_total"))
}

// TestClusterRedisRestart stops Redis for three seconds and starts it again
// empty. During the outage no WebSocket connection drops, publishes are
// refused (503 with Retry-After, or an unavailable error frame) and never
// acknowledged, and /readyz reports the degraded bus. Afterwards the nodes
// are ready again, subscribers are told to resync, new messages flow, and an
// old since is not recovered.
func TestClusterRedisRestart(t *testing.T) {
	checkClusterLeaks(t)
	r := testutil.StartRedis(t)
	rcfg := redisTestConfig()
	rcfg.URL = r.URL()
	// Short pings, to see that heartbeats carry on during the outage.
	cfg := Config{AllowClientPublish: true, ClientMsgRate: -1, PingInterval: 300 * time.Millisecond, PongTimeout: time.Second}
	nodes := startRedisNodes(t, 2, cfg, rcfg)
	const ch = "out.s"
	var subs []*peer
	for i, ts := range nodes {
		p := dialPeer(t, ts.addr, fmt.Sprintf("subscriber on node %d", i))
		p.subscribe(t, ch, nil)
		subs = append(subs, p)
	}
	publisher := dialPeer(t, nodes[0].addr, "publisher")
	var before apiResult
	for k := 0; k < 5; k++ {
		res, err := postPublish(nodes[k%2].addr, ch, k)
		if err != nil || res.status != 200 {
			t.Fatalf("publish: %+v %v", res, err)
		}
		before = res
	}
	for _, p := range subs {
		testutil.Eventually(t, 5*time.Second, func() bool { return p.lastOffset(ch) == before.offset }, p.name+": messages before the outage")
	}
	conns := []int{nodes[0].Connections(), nodes[1].Connections()}
	pings := make([]int, len(subs))
	for i, p := range subs {
		pings[i] = p.pingCount()
	}

	r.Stop()
	stopped := time.Now()
	var (
		refusedAPI  int
		clientIDs   []string
		sawDegraded = make([]bool, len(nodes))
	)
	for k := 0; time.Since(stopped) < 3*time.Second; k++ {
		ts := nodes[k%2]
		res, err := postPublish(ts.addr, ch, "lost")
		if err != nil {
			t.Fatalf("publish during the outage: %v", err)
		}
		if res.status != http.StatusServiceUnavailable || res.code != "unavailable" || res.retryAfter == "" {
			t.Fatalf("publish during the outage answered %+v, want 503 unavailable with Retry-After", res)
		}
		refusedAPI++
		id := "out-" + strconv.Itoa(k)
		if err := publisher.write(map[string]any{"op": "publish", "channel": ch, "data": "lost", "id": id}); err != nil {
			t.Fatal(err)
		}
		clientIDs = append(clientIDs, id)
		// Degraded, but still ready: every node shares Redis. ?strict=1
		// counts the bus.
		code, body := getStatus(t, ts.addr, "/readyz")
		if code != 200 {
			t.Fatalf("readyz during the outage: %d %s", code, body)
		}
		if code, strict := getStatus(t, ts.addr, "/readyz?strict=1"); strings.Contains(body, `"bus":"degraded"`) &&
			code == http.StatusServiceUnavailable && strings.Contains(strict, "bus degraded") {
			sawDegraded[k%2] = true
		}
		if code, _ := getStatus(t, ts.addr, "/healthz"); code != 200 {
			t.Fatalf("healthz during the outage: %d", code)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Clients' own pings are answered during the outage too.
	for _, p := range subs {
		if err := p.write(map[string]any{"op": "ping"}); err != nil {
			t.Fatal(err)
		}
		p.waitFrame(t, "pong", nil)
	}
	for i, ts := range nodes {
		if !sawDegraded[i] {
			t.Errorf("%s: /readyz never reported the degraded bus", ts.cfg.NodeID)
		}
		if n := ts.Connections(); n != conns[i] {
			t.Errorf("%s: %d connections during the outage, %d before", ts.cfg.NodeID, n, conns[i])
		}
	}
	for i, p := range subs {
		if got := p.pingCount() - pings[i]; got < 3 {
			t.Errorf("%s: %d server pings during a 3 s outage with a 300 ms interval", p.name, got)
		}
	}
	for _, id := range clientIDs {
		if f := publisher.waitFrame(t, "error", map[string]any{"id": id}); f["code"] != "unavailable" {
			t.Fatalf("client publish during the outage: %v", f)
		}
	}

	r.Restart()
	for _, ts := range nodes {
		testutil.Eventually(t, 10*time.Second, func() bool {
			code, body := getStatus(t, ts.addr, "/readyz?strict=1")
			return code == 200 && strings.Contains(body, `"bus":"ok"`)
		}, ts.cfg.NodeID+": /readyz?strict=1 not 200 after redis came back")
	}
	var after []apiResult
	testutil.Eventually(t, 10*time.Second, func() bool {
		res, err := postPublish(nodes[1].addr, ch, "after")
		if err == nil && res.status == 200 {
			after = append(after, res)
		}
		return len(after) > 0
	}, "publishing does not recover after the restart")
	for k := 0; k < 4; k++ {
		res, err := postPublish(nodes[k%2].addr, ch, "after")
		if err != nil || res.status != 200 {
			t.Fatalf("publish after the restart: %+v %v", res, err)
		}
		after = append(after, res)
	}
	newEpoch := after[0].epoch
	last := after[len(after)-1].offset
	if newEpoch == before.epoch || after[len(after)-1].epoch != newEpoch {
		t.Fatalf("epochs: before %s, after %+v", before.epoch, after)
	}
	for _, p := range subs {
		testutil.Eventually(t, 10*time.Second, func() bool {
			return p.find("resync", map[string]any{"channel": ch, "epoch": newEpoch}) != nil && p.lastOffset(ch) == last
		}, fmt.Sprintf("%s: no resync in epoch %s, or new messages missing", p.name, newEpoch))
		// After the last resync, messages continue from its offset.
		frames := p.snapshot()
		at := -1
		for i, f := range frames {
			if f["op"] == "resync" {
				at = i
			}
		}
		resync := frames[at]
		if resync["epoch"] != newEpoch || resync["after_ms"] == nil {
			t.Errorf("%s: resync %v", p.name, resync)
		}
		var offs []uint64
		for _, f := range frames[at+1:] {
			if f["op"] == "message" {
				if f["data"] != "after" {
					t.Errorf("%s: unexpected message after the resync: %v", p.name, f)
				}
				offs = append(offs, num(f["offset"]))
			}
		}
		checkContiguous(t, p.name+" after the resync", offs, num(resync["offset"])+1, last)
		for _, f := range frames[:at] {
			if f["op"] == "message" && f["data"] == "lost" {
				t.Errorf("%s: a publish refused during the outage was delivered: %v", p.name, f)
			}
		}
		if err := p.readErr(); err != nil {
			t.Errorf("%s: connection lost: %v", p.name, err)
		}
	}
	if f := publisher.find("ack", nil); f != nil {
		t.Fatalf("a client publish was acknowledged during the outage: %v", f)
	}
	// A client coming back with a since of the lost epoch is told so.
	late := dialPeer(t, nodes[1].addr, "late client")
	sub := late.subscribe(t, ch, &bus.Position{Offset: before.offset, Epoch: before.epoch})
	if sub["recovered"] != false || sub["epoch"] != newEpoch || num(sub["offset"]) != last {
		t.Fatalf("old since after the restart: %v, want recovered:false at %d in %s", sub, last, newEpoch)
	}
	t.Logf("%d API publishes and %d client publishes refused during the outage", refusedAPI, len(clientIDs))
}

// TestClusterRedisPaused freezes Redis for longer than the command timeout:
// the node keeps answering, publishes fail within a bounded time, nothing
// wedges, and everything works again once Redis resumes.
func TestClusterRedisPaused(t *testing.T) {
	checkClusterLeaks(t)
	r := testutil.StartRedis(t)
	rcfg := redisTestConfig()
	rcfg.URL = r.URL()
	nodes := startRedisNodes(t, 2, Config{AllowClientPublish: true, ClientMsgRate: -1}, rcfg)
	a, b := nodes[0], nodes[1]
	const ch = "pause.p"
	sub := dialPeer(t, a.addr, "subscriber")
	base := num(sub.subscribe(t, ch, nil)["offset"])
	b.mustPublish(t, ch, "before")
	sub.waitFrame(t, "message", map[string]any{"data": "before"})

	r.Pause()
	t.Cleanup(r.Resume) // before the kill, should the test fail while paused
	paused := time.Now()
	// Calls fail after the command timeout; this bound only catches a wedge.
	bound := 10 * rcfg.CommandTimeout
	for k := 0; time.Since(paused) < 1500*time.Millisecond; k++ {
		start := time.Now()
		res, err := postPublish(a.addr, ch, "paused")
		if err != nil || res.status != http.StatusServiceUnavailable || res.retryAfter == "" {
			t.Fatalf("publish while paused: %+v %v", res, err)
		}
		if d := time.Since(start); d > bound {
			t.Fatalf("publish while paused took %v", d)
		}
		if code, _ := getStatus(t, a.addr, "/healthz"); code != 200 {
			t.Fatalf("healthz while paused: %d", code)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The WebSocket side answers too: pings, client publishes (refused),
	// new connections, and subscriptions (refused: history is unreadable).
	if err := sub.write(map[string]any{"op": "ping"}); err != nil {
		t.Fatal(err)
	}
	sub.waitFrame(t, "pong", nil)
	if err := sub.write(map[string]any{"op": "publish", "channel": ch, "data": "paused", "id": "p1"}); err != nil {
		t.Fatal(err)
	}
	if f := sub.waitFrame(t, "error", map[string]any{"id": "p1"}); f["code"] != "unavailable" {
		t.Fatalf("client publish while paused: %v", f)
	}
	fresh := dialPeer(t, a.addr, "new client")
	if err := fresh.write(map[string]any{"op": "subscribe", "channel": "pause.other", "id": "s1"}); err != nil {
		t.Fatal(err)
	}
	if f := fresh.waitFrame(t, "error", map[string]any{"id": "s1"}); f["code"] != "unavailable" {
		t.Fatalf("subscribe while paused: %v", f)
	}
	if code, body := getStatus(t, a.addr, "/readyz"); code != 200 || !strings.Contains(body, `"bus":"degraded"`) {
		t.Fatalf("readyz while paused: %d %s", code, body)
	}
	if code, body := getStatus(t, a.addr, "/readyz?strict=1"); code != http.StatusServiceUnavailable || !strings.Contains(body, "bus degraded") {
		t.Fatalf("strict readyz while paused: %d %s", code, body)
	}

	r.Resume()
	for _, ts := range nodes {
		testutil.Eventually(t, 10*time.Second, func() bool {
			code, _ := getStatus(t, ts.addr, "/readyz?strict=1")
			return code == 200
		}, ts.cfg.NodeID+": /readyz?strict=1 not 200 after redis resumed")
	}
	var last apiResult
	testutil.Eventually(t, 10*time.Second, func() bool {
		res, err := postPublish(b.addr, ch, "after")
		last = res
		return err == nil && res.status == 200
	}, "publishing does not recover after resume")
	// Publishes sent while paused may have run once Redis read them (they
	// were never acknowledged); either way the stream has no gap.
	testutil.Eventually(t, 10*time.Second, func() bool { return sub.lastOffset(ch) == last.offset },
		"the subscriber does not receive messages after resume")
	offs, _ := sub.streamOf(ch)
	checkContiguous(t, "subscriber", offs, base+1, last.offset)
	fresh.subscribe(t, "pause.other", nil)
	if err := sub.readErr(); err != nil {
		t.Fatalf("subscriber lost its connection: %v", err)
	}
}
