package server

import (
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"tether/bus"
	"tether/internal/proto"
	"tether/internal/testutil"
)

// The cluster-wide HTTP API (docs/api.md) on three nodes sharing a real
// Redis or a real Redis Cluster, seen from WebSocket clients.

const testAPIKey = "api-key-for-tests"

// apiDo makes an API request to addr with key (none when empty) and returns
// the status and the decoded JSON body, failing the test on a body that is
// not JSON.
func apiDo(t testing.TB, method, addr, path, key, body string) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://"+addr+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := clusterHTTP.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("%s %s answered %d with non-JSON %q", method, path, resp.StatusCode, raw)
	}
	return resp.StatusCode, m
}

// apiOK is apiDo with the test key, failing unless the answer is 200 and
// not partial.
func apiOK(t testing.TB, method, addr, path, body string) map[string]any {
	t.Helper()
	code, m := apiDo(t, method, addr, path, testAPIKey, body)
	if code != http.StatusOK {
		t.Fatalf("%s %s %s: %d %v", method, path, body, code, m)
	}
	if p, ok := m["partial"]; ok && p != false {
		t.Fatalf("%s %s: partial answer %v", method, path, m)
	}
	return m
}

// errorCode returns the code of an API error body, or "".
func errorCode(m map[string]any) string {
	e, _ := m["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

// nextData returns the next frame of c that is not a ping (the test
// fails on a close or a timeout).
func nextData(t testing.TB, c *testClient, timeout time.Duration) map[string]any {
	t.Helper()
	for {
		m, _, err := c.next(timeout)
		if err != nil {
			t.Fatalf("waiting for a frame: %v", err)
		}
		if m["op"] != proto.OpPing {
			return m
		}
	}
}

// keyedPublish publishes data to channel through ts's API with the test
// key and returns the offset.
func keyedPublish(t testing.TB, ts *testServer, channel string, data any) uint64 {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"channel": channel, "data": data})
	return num(apiOK(t, "POST", ts.addr, "/api/publish", string(b))["offset"])
}

func clusterAPIConfig() Config {
	return Config{JWTSecret: testSecret, APIKey: testAPIKey, ClientMsgRate: -1, Presence: []string{"room.*"}}
}

// testClusterAPI drives every cluster command through three nodes: the
// user alice has connections on all of them (two on node 0), bob one on
// node 1.
func testClusterAPI(t *testing.T, nodes []*testServer) {
	alice := []*testClient{
		dialUser(t, nodes[0].addr, "alice"), dialUser(t, nodes[0].addr, "alice"),
		dialUser(t, nodes[1].addr, "alice"), dialUser(t, nodes[2].addr, "alice"),
	}
	bob := dialUser(t, nodes[1].addr, "bob")

	// Every endpoint wants the key, as /api/publish does.
	for _, e := range []struct{ method, path, body string }{
		{"POST", "/api/publish", `{"channel":"news.1","data":1}`},
		{"POST", "/api/disconnect", `{"user":"alice"}`},
		{"POST", "/api/subscribe", `{"user":"alice","channel":"news.1"}`},
		{"POST", "/api/unsubscribe", `{"user":"alice","channel":"news.1"}`},
		{"GET", "/api/channels", ""},
		{"GET", "/api/info", ""},
		{"GET", "/api/presence?channel=room.1", ""},
		{"GET", "/api/history?channel=news.1", ""},
		{"GET", "/admin/data", ""},
	} {
		for _, key := range []string{"", "wrong"} {
			if code, m := apiDo(t, e.method, nodes[1].addr, e.path, key, e.body); code != http.StatusUnauthorized || errorCode(m) != proto.CodeUnauthorized {
				t.Fatalf("%s %s with key %q: %d %v, want 401 unauthorized", e.method, e.path, key, code, m)
			}
		}
	}

	// Subscribe: every connection of alice, wherever it is, is told with
	// a subscribed frame carrying the channel's position.
	keyedPublish(t, nodes[2], "news.1", "before")
	m := apiOK(t, "POST", nodes[1].addr, "/api/subscribe", `{"user":"alice","channel":"news.1"}`)
	if num(m["conns"]) != 4 || num(m["changed"]) != 4 || m["user"] != "alice" || len(m["nodes"].([]any)) != 3 || len(m["missing"].([]any)) != 0 {
		t.Fatalf("subscribe answered %v, want 4 connections changed on 3 nodes", m)
	}
	for i, c := range alice {
		f := c.expect(proto.OpSubscribed)
		if f["channel"] != "news.1" || num(f["offset"]) != 1 || f["epoch"] == "" || f["id"] != nil {
			t.Fatalf("alice %d: subscribed frame %v, want news.1 at offset 1 without an id", i, f)
		}
	}
	// Again: nothing changes, and no frame is sent.
	if m := apiOK(t, "POST", nodes[0].addr, "/api/subscribe", `{"user":"alice","channel":"news.1"}`); num(m["conns"]) != 4 || num(m["changed"]) != 0 {
		t.Fatalf("second subscribe answered %v, want 4 connections, none changed", m)
	}
	bob.send(map[string]any{"op": "subscribe", "channel": "news.2", "id": 1})
	bob.expect(proto.OpSubscribed)
	off := keyedPublish(t, nodes[2], "news.1", "live")
	for i, c := range alice {
		f := c.expect(proto.OpMessage)
		if f["channel"] != "news.1" || f["data"] != "live" || num(f["offset"]) != off {
			t.Fatalf("alice %d: %v, want the live message at offset %d", i, f, off)
		}
	}

	// Presence of a channel the API subscribed alice to.
	apiOK(t, "POST", nodes[2].addr, "/api/subscribe", `{"user":"alice","channel":"room.1"}`)
	for _, c := range alice {
		c.expect(proto.OpSubscribed)
	}
	testutil.Eventually(t, 5*time.Second, func() bool {
		_, p := apiDo(t, "GET", nodes[1].addr, "/api/presence?channel=room.1", testAPIKey, "")
		return num(p["clients"]) == 4 && num(p["users"]) == 1
	}, "presence of room.1: 4 clients of 1 user")

	// Channels: counts summed over the nodes, most subscribers first.
	m = apiOK(t, "GET", nodes[0].addr, "/api/channels?pattern=news.*", "")
	want := `[{"channel":"news.1","subscribers":4},{"channel":"news.2","subscribers":1}]`
	if got, _ := json.Marshal(m["channels"]); string(got) != want || num(m["total"]) != 2 {
		t.Fatalf("channels news.*: %v, want %s", m, want)
	}
	if m := apiOK(t, "GET", nodes[0].addr, "/api/channels?pattern=news.*&limit=1", ""); num(m["total"]) != 2 || len(m["channels"].([]any)) != 1 {
		t.Fatalf("channels with limit 1: %v", m)
	}
	if m := apiOK(t, "GET", nodes[2].addr, "/api/channels?pattern=nothing.*", ""); num(m["total"]) != 0 || len(m["channels"].([]any)) != 0 {
		t.Fatalf("channels nothing.*: %v", m)
	}
	if m := apiOK(t, "GET", nodes[2].addr, "/api/channels", ""); num(m["total"]) != 3 {
		t.Fatalf("every channel: %v, want news.1, news.2, room.1", m)
	}

	// Info: every node, the asking one first.
	m = apiOK(t, "GET", nodes[1].addr, "/api/info", "")
	infos := m["nodes"].([]any)
	if len(infos) != 3 {
		t.Fatalf("info: %v", m)
	}
	var conns uint64
	for i, v := range infos {
		in := v.(map[string]any)
		wantNode := []string{"node-1", "node-0", "node-2"}[i]
		if in["node"] != wantNode || in["version"] == "" || in["bus"].(map[string]any)["healthy"] != true || in["draining"] != false {
			t.Fatalf("info of node %d: %v, want %s first", i, in, wantNode)
		}
		conns += num(in["connections"])
	}
	if conns != 5 {
		t.Fatalf("info: %d connections in all, want 5", conns)
	}

	// History, read on any node.
	for i := range 3 {
		keyedPublish(t, nodes[i], "news.1", "h"+strconv.Itoa(i))
		for _, c := range alice {
			c.expect(proto.OpMessage)
		}
	}
	m = apiOK(t, "GET", nodes[0].addr, "/api/history?channel=news.1&since=1&limit=2", "")
	if got, _ := json.Marshal(m["messages"]); string(got) != `[{"data":"live","offset":2},{"data":"h0","offset":3}]` || m["more"] != true || m["recovered"] != true || num(m["offset"]) != 5 {
		t.Fatalf("history since 1, limit 2: %v", m)
	}
	m = apiOK(t, "GET", nodes[2].addr, "/api/history?channel=news.1&limit=2", "")
	if got, _ := json.Marshal(m["messages"]); string(got) != `[{"data":"h1","offset":4},{"data":"h2","offset":5}]` {
		t.Fatalf("the last 2 of history: %v", m)
	}

	// Unsubscribe: alice is told with reason server, and messages stop.
	m5 := m
	m = apiOK(t, "POST", nodes[2].addr, "/api/unsubscribe", `{"user":"alice","channel":"news.1"}`)
	if num(m["conns"]) != 4 || num(m["changed"]) != 4 {
		t.Fatalf("unsubscribe answered %v", m)
	}
	// The frame carries the position of the last message each got: 5.
	for i, c := range alice {
		if f := c.expect(proto.OpUnsubscribed); f["channel"] != "news.1" || f["reason"] != proto.ReasonServer || num(f["offset"]) != 5 || f["epoch"] != m5["epoch"] {
			t.Fatalf("alice %d: %v, want unsubscribed from news.1 by the server at offset 5, epoch %v", i, f, m5["epoch"])
		}
	}
	testutil.Eventually(t, 5*time.Second, func() bool {
		_, m := apiDo(t, "GET", nodes[0].addr, "/api/channels?pattern=news.1", testAPIKey, "")
		return m["total"] == float64(0)
	}, "news.1 without subscribers")
	keyedPublish(t, nodes[0], "news.1", "after")
	keyedPublish(t, nodes[0], "room.1", "marker")
	for i, c := range alice {
		// room.1 comes after news.1 when both are delivered; only room.1 is.
		if f := nextData(t, c, 5*time.Second); f["channel"] != "room.1" {
			t.Fatalf("alice %d got %v after the unsubscribe, want only room.1's marker", i, f)
		}
	}

	// Disconnect: every connection of alice closes with the code and the
	// reason given; bob stays.
	m = apiOK(t, "POST", nodes[0].addr, "/api/disconnect", `{"user":"alice","code":4321,"reason":"account closed"}`)
	if num(m["conns"]) != 4 || num(m["changed"]) != 4 {
		t.Fatalf("disconnect answered %v", m)
	}
	for i, c := range alice {
		_, _, err := c.next(5 * time.Second)
		var ce *closeError
		if !errors.As(err, &ce) || ce.code != 4321 || ce.reason != "account closed" {
			t.Fatalf("alice %d: %v, want a close 4321 account closed", i, err)
		}
	}
	// A user with no connection anywhere is not found.
	testutil.Eventually(t, 5*time.Second, func() bool {
		code, m := apiDo(t, "POST", nodes[1].addr, "/api/disconnect", testAPIKey, `{"user":"alice"}`)
		return code == http.StatusNotFound && errorCode(m) == proto.CodeNotFound
	}, "alice not found once disconnected")
	bob.send(map[string]any{"op": "ping", "id": 9})
	bob.expect("pong")

	for _, c := range []struct {
		node    *testServer
		command string
		outcome string
	}{
		{nodes[1], "subscribe", "ok"}, {nodes[1], "subscribe", "unauthorized"}, {nodes[0], "subscribe", "ok"},
		{nodes[0], "channels", "ok"}, {nodes[1], "info", "ok"}, {nodes[0], "history", "ok"},
		{nodes[2], "unsubscribe", "ok"}, {nodes[0], "disconnect", "ok"}, {nodes[1], "disconnect", "not_found"},
		{nodes[1], "presence", "ok"}, {nodes[1], "publish", "unauthorized"}, {nodes[2], "publish", "ok"},
	} {
		name := `tether_api_commands_total{command="` + c.command + `",outcome="` + c.outcome + `"}`
		if c.node.metric(t, name) == 0 {
			t.Errorf("%s is 0 on %s", name, c.node.cfg.NodeID)
		}
	}
}

func TestClusterAPI(t *testing.T) {
	checkClusterLeaks(t)
	r := testutil.StartRedis(t)
	rcfg := redisTestConfig()
	rcfg.URL = r.URL()
	testClusterAPI(t, startRedisNodes(t, 3, clusterAPIConfig(), rcfg))
}

func TestClusterAPIRedisCluster(t *testing.T) {
	checkClusterLeaks(t)
	c := testutil.StartCluster(t, 3)
	rcfg := redisTestConfig()
	rcfg.ClusterAddrs = c.Addrs()
	rcfg.CommandTimeout = time.Second
	testClusterAPI(t, startRedisNodes(t, 3, clusterAPIConfig(), rcfg))
}

// TestAPISubscribeWithinTokenChannels checks that /api/subscribe
// subscribes only the connections whose token allows the channel: the
// others would lose the subscription at their next refresh or reconnect.
func TestAPISubscribeWithinTokenChannels(t *testing.T) {
	ts := startServer(t, Config{JWTSecret: testSecret, APIKey: testAPIKey})
	news, chat := dialUserChannels(t, ts.addr, "carol", "news.*"), dialUserChannels(t, ts.addr, "carol", "chat.*")
	m := apiOK(t, "POST", ts.addr, "/api/subscribe", `{"user":"carol","channel":"news.1"}`)
	if num(m["conns"]) != 2 || num(m["changed"]) != 1 || num(m["forbidden"]) != 1 {
		t.Fatalf("subscribe to news.1: %v, want 2 connections, 1 changed, 1 forbidden", m)
	}
	news.expect(proto.OpSubscribed)
	// The user's own channel is allowed to every token of the user.
	m = apiOK(t, "POST", ts.addr, "/api/subscribe", `{"user":"carol","channel":"user.carol"}`)
	if num(m["changed"]) != 2 || num(m["forbidden"]) != 0 {
		t.Fatalf("subscribe to user.carol: %v, want 2 changed", m)
	}
	news.expect(proto.OpSubscribed)
	if f := chat.expect(proto.OpSubscribed); f["channel"] != "user.carol" {
		t.Fatalf("chat connection: %v, want only user.carol", f)
	}
}

// TestAPIDisconnectClosingConn checks that a connection already closing
// (its close frame sent, the client's not back yet) is counted in conns but
// not in changed, and is not sent a second close frame.
func TestAPIDisconnectClosingConn(t *testing.T) {
	ts := startServer(t, Config{JWTSecret: testSecret, APIKey: testAPIKey})
	c := dialUser(t, ts.addr, "dave")
	if m := apiOK(t, "POST", ts.addr, "/api/disconnect", `{"user":"dave","code":4001}`); num(m["changed"]) != 1 {
		t.Fatalf("first disconnect: %v", m)
	}
	// The client does not answer the close frame: the server waits for it.
	if m := apiOK(t, "POST", ts.addr, "/api/disconnect", `{"user":"dave","code":4002}`); num(m["conns"]) != 1 || num(m["changed"]) != 0 {
		t.Fatalf("second disconnect: %v, want the closing connection counted, not changed", m)
	}
	if code := c.expectClose(5 * time.Second); code != 4001 {
		t.Fatalf("closed with %d, want the first disconnect's 4001", code)
	}
}

// TestMeasureChannelsAPI measures GET /api/channels on three nodes sharing
// a real Redis with TETHER_CHANNELS active channels (default 100,000)
// spread over the nodes: the time of a whole answer, every channel
// counted, and of one whose pattern matches 1 %. A measurement, not a
// check: run it with TETHER_MEASURE=1 (docs/api.md quotes it).
func TestMeasureChannelsAPI(t *testing.T) {
	if os.Getenv("TETHER_MEASURE") == "" {
		t.Skip("a measurement: set TETHER_MEASURE=1")
	}
	total := 100_000
	if v, err := strconv.Atoi(os.Getenv("TETHER_CHANNELS")); err == nil && v > 0 {
		total = v
	}
	r := testutil.StartRedis(t)
	rcfg := redisTestConfig()
	rcfg.URL = r.URL()
	rcfg.Linger = time.Minute
	rcfg.CommandTimeout = 10 * time.Second
	nodes := startRedisNodes(t, 3, Config{APIKey: testAPIKey, ClientMsgRate: -1, MaxSubsPerConn: -1}, rcfg)
	start := time.Now()
	for i, n := range nodes {
		c := mustDial(t, n.addr)
		const batch = 1000
		for lo := i; lo < total; lo += 3 * batch {
			sent := 0
			for k := lo; k < min(lo+3*batch, total); k += 3 {
				c.send(map[string]any{"op": "subscribe", "channel": "m." + strconv.Itoa(k)})
				sent++
			}
			for range sent {
				if f := nextData(t, c, 30*time.Second); f["op"] != proto.OpSubscribed {
					t.Fatalf("subscribe answered %v", f)
				}
			}
		}
	}
	t.Logf("%d channels subscribed on 3 nodes in %v", total, time.Since(start).Round(time.Millisecond))
	measure := func(path string) {
		const runs = 10
		var took []time.Duration
		var m map[string]any
		for range runs {
			s := time.Now()
			m = apiOK(t, "GET", nodes[0].addr, path, "")
			took = append(took, time.Since(s))
		}
		slices.Sort(took)
		t.Logf("GET %s: total %v, median %v, max %v over %d runs", path, m["total"], took[runs/2].Round(time.Microsecond), took[runs-1].Round(time.Microsecond), runs)
	}
	measure("/api/channels?limit=10")
	measure("/api/channels?pattern=m.*77&limit=10")
}

// TestTopChannels checks the heap selection against a full sort, with
// many ties in subscribers (ties are broken by name).
func TestTopChannels(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{0, 1, 2, 7, 100, 1000} {
		sum := make(map[string]int)
		for i := range n {
			sum["c"+strconv.Itoa(i)] = 1 + rng.IntN(5)
		}
		var all []channelCount
		for name, subs := range sum {
			all = append(all, channelCount{name, subs})
		}
		slices.SortFunc(all, rankChannels)
		for _, limit := range []int{1, 2, 3, 10, n, n + 1} {
			if limit < 1 {
				continue
			}
			got := topChannels(sum, limit)
			if want := all[:min(limit, n)]; !slices.Equal(got, want) {
				t.Fatalf("%d channels, limit %d: got %v, want %v", n, limit, got, want)
			}
		}
	}
}

// TestAPISubscribeConcurrent subscribes one connection to one channel
// from many cluster commands at once (as concurrent /api/subscribe calls
// arriving at a node do) and from the client itself: the connection ends
// with one subscription, not one per caller that checked before another
// linked its own (each would get every message of the channel).
func TestAPISubscribeConcurrent(t *testing.T) {
	ts := startServer(t, Config{JWTSecret: testSecret, APIKey: testAPIKey, ClientMsgRate: -1, MaxSubsPerConn: -1})
	c := dialUser(t, ts.addr, "erin")
	const rounds = 200
	for round := range rounds {
		channel := "race." + strconv.Itoa(round)
		raw, _ := json.Marshal(clusterCmd{Cmd: cmdSubscribe, User: "erin", Channel: channel})
		var wg sync.WaitGroup
		for range 16 {
			wg.Go(func() { ts.onControl(raw) })
		}
		c.send(map[string]any{"op": "subscribe", "channel": channel})
		wg.Wait()
	}
	eventually(t, 5*time.Second, func() bool { return ts.m.subscriptions.Load() >= rounds }, "every subscription")
	m := apiOK(t, "GET", ts.addr, "/api/channels?pattern=race.*", "")
	if num(m["total"]) != rounds || ts.m.subscriptions.Load() != rounds {
		t.Fatalf("%v channels, %d subscriptions, want %d of each", m["total"], ts.m.subscriptions.Load(), rounds)
	}
	for _, ch := range m["channels"].([]any) {
		if n := num(ch.(map[string]any)["subscribers"]); n != 1 {
			t.Fatalf("%v: %d subscriptions of one connection", ch, n)
		}
	}
}

// TestAPIHistoryBounds reads history at its edges: a channel never
// published to, a history shorter than the limit, and a since it no
// longer reaches back to.
func TestAPIHistoryBounds(t *testing.T) {
	hcfg := bus.Config{HistorySize: 3, HistoryWindow: -1}
	t.Run("local", func(t *testing.T) {
		testAPIHistoryBounds(t, startServerWithBus(t, Config{NodeID: "test", APIKey: testAPIKey}, bus.NewLocal(hcfg)))
	})
	t.Run("redis", func(t *testing.T) {
		checkClusterLeaks(t)
		rcfg := redisTestConfig()
		rcfg.URL, rcfg.Config = testutil.StartRedis(t).URL(), hcfg
		testAPIHistoryBounds(t, startRedisNodes(t, 1, Config{APIKey: testAPIKey}, rcfg)[0])
	})
}

func testAPIHistoryBounds(t *testing.T, ts *testServer) {
	m := apiOK(t, "GET", ts.addr, "/api/history?channel=empty", "")
	if num(m["offset"]) != 0 || len(m["messages"].([]any)) != 0 || m["recovered"] != true {
		t.Fatalf("history of a channel never published to: %v", m)
	}
	m = apiOK(t, "GET", ts.addr, "/api/history?channel=empty&since=0", "")
	if len(m["messages"].([]any)) != 0 || m["more"] != false {
		t.Fatalf("history since 0 of a channel never published to: %v", m)
	}
	for i := range 10 {
		keyedPublish(t, ts, "short", i)
	}
	m = apiOK(t, "GET", ts.addr, "/api/history?channel=short&limit=5", "")
	if got, _ := json.Marshal(m["messages"]); string(got) != `[{"data":7,"offset":8},{"data":8,"offset":9},{"data":9,"offset":10}]` {
		t.Fatalf("the last 5 of a history of 3: %s", got)
	}
	m = apiOK(t, "GET", ts.addr, "/api/history?channel=short&since=2", "")
	if m["recovered"] != false || len(m["messages"].([]any)) != 0 || num(m["offset"]) != 10 {
		t.Fatalf("since an offset the history lost: %v", m)
	}
	m = apiOK(t, "GET", ts.addr, "/api/history?channel=short&since=8&limit=1", "")
	if got, _ := json.Marshal(m["messages"]); string(got) != `[{"data":8,"offset":9}]` || m["more"] != true {
		t.Fatalf("since 8, limit 1: %v", m)
	}
	m = apiOK(t, "GET", ts.addr, "/api/history?channel=short&since=10", "")
	if len(m["messages"].([]any)) != 0 || m["more"] != false || m["recovered"] != true {
		t.Fatalf("since the top: %v", m)
	}
}

// TestClusterCommandsBounded registers a node that never answers (a
// registry entry with no process behind it), so that every cluster-wide
// command waits the whole --cluster-timeout and answers partial; of many
// at once, those over maxClusterCmds are refused at once with 503 and
// Retry-After instead of holding more HTTP slots.
func TestClusterCommandsBounded(t *testing.T) {
	checkClusterLeaks(t)
	r := testutil.StartRedis(t)
	rcfg := redisTestConfig()
	rcfg.URL = r.URL()
	cfg := clusterAPIConfig()
	cfg.ClusterTimeout = 3 * time.Second // room for the requests below to start together on a busy machine
	ts := startRedisNodes(t, 1, cfg, rcfg)[0]
	ghost := func() { r.Do(t, "ZADD", "tether:{ctl}:nodes", time.Now().UnixMilli(), "ghost") }
	ghost()
	code, m := apiDo(t, "GET", ts.addr, "/api/info", testAPIKey, "")
	if missing, _ := json.Marshal(m["missing"]); code != 200 || m["partial"] != true || string(missing) != `["ghost"]` {
		t.Fatalf("info with a ghost node: %d %v", code, m)
	}
	ghost()
	const n = maxClusterCmds + 16
	codes := make([]int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { codes[i], _ = apiDo(t, "GET", ts.addr, "/api/channels", testAPIKey, "") })
	}
	wg.Wait()
	count := map[int]int{}
	for _, c := range codes {
		count[c]++
	}
	t.Logf("%d cluster commands at once with a node that does not answer: %v", n, count)
	if count[200] > maxClusterCmds || count[503] == 0 || count[200]+count[503] != n {
		t.Fatalf("answers %v, want at most %d partial 200s and the rest 503", count, maxClusterCmds)
	}
	if ts.metric(t, `tether_api_commands_total{command="channels",outcome="unavailable"}`) != float64(count[503]) {
		t.Errorf("refusals not counted")
	}
}
