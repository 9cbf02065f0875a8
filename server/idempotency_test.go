package server

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"tether/bus"
	"tether/internal/testutil"
)

// startIdempotentServer starts a node on a local bus remembering keys for
// a minute.
func startIdempotentServer(t *testing.T, cfg Config) *testServer {
	cfg.NodeID = "test"
	return startServerWithBus(t, cfg, bus.NewLocal(bus.Config{HistorySize: 1000, IdempotencyWindow: time.Minute}))
}

func TestIdempotentPublishAPI(t *testing.T) {
	checkClusterLeaks(t)
	ts := startIdempotentServer(t, Config{})
	c := mustDial(t, ts.addr)
	c.send(map[string]any{"op": "subscribe", "channel": "idem.a"})
	c.expect("subscribed")

	// The same key twice: one message, the first answer twice.
	code, first := ts.publish(t, `{"channel":"idem.a","data":1,"idempotency_key":"order-17"}`)
	if code != 200 || first["replayed"] != nil {
		t.Fatalf("first: %d %v", code, first)
	}
	code, again := ts.publish(t, `{"channel":"idem.a","data":2,"idempotency_key":"order-17"}`)
	if code != 200 || again["offset"] != first["offset"] || again["epoch"] != first["epoch"] || again["replayed"] != true {
		t.Fatalf("again: %d %v, first %v", code, again, first)
	}

	// A batch mixing new, repeated and no keys.
	code, m := ts.publish(t, `{"messages":[
		{"channel":"idem.a","data":3,"idempotency_key":"order-18"},
		{"channel":"idem.a","data":4},
		{"channel":"idem.a","data":5,"idempotency_key":"order-17"},
		{"channel":"idem.a","data":6,"idempotency_key":"order-18"}]}`)
	if code != 200 {
		t.Fatalf("batch: %d %v", code, m)
	}
	if got := fmt.Sprint(m["offsets"], m["replayed"]); got != "[2 3 1 2] [false false true true]" {
		t.Errorf("batch answered offsets and replayed %s", got)
	}
	// Without a replay the answer has no replayed field.
	if _, m := ts.publish(t, `{"messages":[{"channel":"idem.a","data":7}]}`); m["replayed"] != nil {
		t.Errorf("batch without replays: %v", m)
	}
	for _, want := range []float64{1, 3, 4, 7} {
		if got := c.expect("message"); got["data"] != want {
			t.Fatalf("got %v, want data %v", got, want)
		}
	}

	// A key of another channel: 409, nothing published (also in a batch).
	for _, body := range []string{
		`{"channel":"idem.b","data":1,"idempotency_key":"order-17"}`,
		`{"messages":[{"channel":"idem.b","data":1},{"channel":"idem.b","data":2,"idempotency_key":"order-17"}]}`,
	} {
		code, m := ts.publish(t, body)
		if e, _ := m["error"].(map[string]any); code != 409 || e["code"] != "conflict" {
			t.Errorf("%s: %d %v, want 409 conflict", body, code, m)
		}
	}
	if code, body := ts.get(t, "/api/history?channel=idem.b"); code == 200 && strings.Contains(body, `"data"`) {
		t.Errorf("idem.b history after refused publishes: %s", body)
	}

	// Key length: 128 bytes pass, 129 do not.
	long := strings.Repeat("k", 128)
	if code, m := ts.publish(t, `{"channel":"idem.c","data":1,"idempotency_key":"`+long+`"}`); code != 200 {
		t.Errorf("128-byte key: %d %v", code, m)
	}
	code, m = ts.publish(t, `{"messages":[{"channel":"idem.c","data":1,"idempotency_key":"`+long+`x"}]}`)
	if e, _ := m["error"].(map[string]any); code != 400 || e["code"] != "bad_request" ||
		!strings.Contains(fmt.Sprint(e["message"]), "128 bytes (message 0)") {
		t.Errorf("129-byte key: %d %v", code, m)
	}

	for name, want := range map[string]float64{
		"tether_idempotent_hits_total":                                    3,
		"tether_idempotent_misses_total":                                  3,
		"tether_idempotent_conflicts_total":                               2,
		`tether_api_commands_total{command="publish",outcome="conflict"}`: 2,
		"tether_messages_published_total":                                 5,
	} {
		if got := ts.metric(t, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}

func TestIdempotentPublishClient(t *testing.T) {
	checkClusterLeaks(t)
	ts := startIdempotentServer(t, Config{AllowClientPublish: true})
	c := mustDial(t, ts.addr)
	pub := func(ch, key string, id int) map[string]any {
		c.send(map[string]any{"op": "publish", "channel": ch, "data": id, "idempotency_key": key, "id": id})
		for {
			m, raw, err := c.next(5 * time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if (m["op"] == "ack" || m["op"] == "error") && num(m["id"]) == uint64(id) {
				return m
			}
			if m["op"] != "ping" && m["op"] != "message" {
				t.Fatalf("unexpected %s", raw)
			}
		}
	}
	first := pub("idem.c1", "k1", 1)
	again := pub("idem.c1", "k1", 2)
	if first["op"] != "ack" || first["replayed"] != nil || again["op"] != "ack" ||
		again["offset"] != first["offset"] || again["replayed"] != true {
		t.Fatalf("first %v, again %v", first, again)
	}
	if m := pub("idem.c2", "k1", 3); m["op"] != "error" || m["code"] != "conflict" {
		t.Errorf("other channel: %v, want error conflict", m)
	}
	if m := pub("idem.c1", strings.Repeat("k", 129), 4); m["op"] != "error" || m["code"] != "bad_request" {
		t.Errorf("129-byte key: %v, want error bad_request", m)
	}
	// Clients and the HTTP API have separate key spaces: the API's k1 is
	// free for another channel.
	if code, m := ts.publish(t, `{"channel":"idem.c2","data":1,"idempotency_key":"k1"}`); code != 200 || m["replayed"] != nil {
		t.Errorf("API k1 after a client's k1: %d %v", code, m)
	}
	if h := ts.metric(t, "tether_idempotent_hits_total"); h != 1 {
		t.Errorf("hits %v, want 1", h)
	}
	if n := ts.metric(t, `tether_protocol_errors_total{code="conflict"}`); n != 1 {
		t.Errorf("conflict errors %v, want 1", n)
	}
}

// postKeyed publishes through addr's HTTP API with an idempotency key.
func postKeyed(addr, channel, data, key string) (status int, offset uint64, epoch string, replayed bool, err error) {
	body, _ := json.Marshal(map[string]any{"channel": channel, "data": data, "idempotency_key": key})
	resp, err := clusterHTTP.Post("http://"+addr+"/api/publish", "application/json", strings.NewReader(string(body)))
	if err != nil {
		return 0, 0, "", false, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m struct {
		Offset   uint64 `json:"offset"`
		Epoch    string `json:"epoch"`
		Replayed bool   `json:"replayed"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return 0, 0, "", false, fmt.Errorf("publish answered %d with non-JSON %q", resp.StatusCode, raw)
	}
	return resp.StatusCode, m.Offset, m.Epoch, m.Replayed, nil
}

// testIdempotentAcrossNodes publishes 50 keys from every node at once, two
// requests per key and node, and checks that each key is one message: in
// history and to a subscriber of each node.
func testIdempotentAcrossNodes(t *testing.T, nodes []*testServer) {
	const ch, keys, perNode = "idem.race", 50, 2
	var peers []*peer
	for i, n := range nodes {
		p := dialPeer(t, n.addr, fmt.Sprint("sub-", i))
		p.subscribe(t, ch, nil)
		peers = append(peers, p)
	}
	type answer struct {
		offset   uint64
		epoch    string
		replayed bool
	}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		answers = make(map[int][]answer)
	)
	start := make(chan struct{})
	for k := range keys {
		for ni, n := range nodes {
			for g := range perNode {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					status, off, epoch, replayed, err := postKeyed(n.addr, ch, fmt.Sprintf("k%d n%d g%d", k, ni, g), fmt.Sprint("race-", k))
					if err != nil || status != 200 {
						t.Errorf("publish: %d %v", status, err)
						return
					}
					mu.Lock()
					answers[k] = append(answers[k], answer{off, epoch, replayed})
					mu.Unlock()
				}()
			}
		}
	}
	close(start)
	wg.Wait()
	for k := range keys {
		fresh := 0
		for _, a := range answers[k] {
			if !a.replayed {
				fresh++
			}
			if a.offset != answers[k][0].offset || a.epoch != answers[k][0].epoch {
				t.Errorf("key %d: answers %v", k, answers[k])
				break
			}
		}
		if fresh != 1 {
			t.Errorf("key %d published %d times", k, fresh)
		}
	}
	for _, p := range peers {
		testutil.Eventually(t, 10*time.Second, func() bool {
			offsets, _ := p.streamOf(ch)
			return len(offsets) >= keys
		}, p.name+": not every key arrived")
		offsets, data := p.streamOf(ch)
		seen := make(map[string]bool)
		for _, d := range data {
			key := strings.Fields(strings.Trim(d, `"`))[0]
			if seen[key] {
				t.Errorf("%s: key %s received twice", p.name, key)
			}
			seen[key] = true
		}
		if len(offsets) != keys {
			t.Errorf("%s received %d messages, want %d", p.name, len(offsets), keys)
		}
		checkContiguous(t, p.name, offsets, 1, keys)
	}
	var hits float64
	for _, n := range nodes {
		hits += n.metric(t, "tether_idempotent_hits_total")
	}
	if want := float64(keys * (len(nodes)*perNode - 1)); hits != want {
		t.Errorf("hits across nodes %v, want %v", hits, want)
	}
}

func TestClusterIdempotentPublish(t *testing.T) {
	checkClusterLeaks(t)
	r := testutil.StartRedis(t)
	rcfg := redisTestConfig()
	rcfg.URL = r.URL()
	rcfg.IdempotencyWindow = time.Minute
	testIdempotentAcrossNodes(t, startRedisNodes(t, 2, Config{}, rcfg))
}

func TestClusterIdempotentPublishRedisCluster(t *testing.T) {
	checkClusterLeaks(t)
	c := testutil.StartCluster(t, 3)
	rcfg := redisTestConfig()
	rcfg.ClusterAddrs = c.Addrs()
	rcfg.CommandTimeout = time.Second // go-redis learns the slot map on first use
	rcfg.IdempotencyWindow = time.Minute
	testIdempotentAcrossNodes(t, startRedisNodes(t, 2, Config{}, rcfg))
}
