package server

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"tether/bus"
	"tether/internal/proto"
	"tether/internal/testutil"
)

// Presence across nodes through a real Redis and a real Redis Cluster.

// presenceClient is a connection of user u in the churn test.
type presenceClient struct {
	c    *testClient
	user string
	in   bool // subscribed to the presence channel
}

func dialUser(t *testing.T, addr, user string) *testClient {
	t.Helper()
	return dialUserChannels(t, addr, user, "*")
}

// dialUserChannels connects user with a token allowing channels.
func dialUserChannels(t *testing.T, addr, user string, channels ...string) *testClient {
	t.Helper()
	token := makeJWT(testSecret, "HS256", map[string]any{"sub": user, "exp": time.Now().Add(time.Hour).Unix(), "channels": channels})
	c, _, err := dialWS(addr, "/ws?token="+token, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.t = t
	t.Cleanup(func() { c.conn.Close() })
	c.expect(proto.OpWelcome)
	return c
}

// commandCalls returns the calls of a Redis command (INFO commandstats)
// summed over servers.
func commandCalls(t *testing.T, cmd string, servers ...*testutil.Redis) int {
	t.Helper()
	n := 0
	for _, r := range servers {
		v := r.Info(t, "cmdstat_"+cmd)
		if calls, ok := strings.CutPrefix(v, "calls="); ok {
			k, _ := strconv.Atoi(calls[:strings.IndexByte(calls, ',')])
			n += k
		}
	}
	return n
}

// testPresenceChurn connects users to every node, subscribes and drops
// them at random, then checks that every node reports the exact counts.
func testPresenceChurn(t *testing.T, nodes []*testServer, servers []*testutil.Redis) {
	const conns, users = 60, 20
	rng := rand.New(rand.NewPCG(1, 2))
	var all []*presenceClient
	for i := range conns {
		u := "u" + strconv.Itoa(i%users)
		all = append(all, &presenceClient{c: dialUser(t, nodes[i%len(nodes)].addr, u), user: u})
	}
	for round := range 4 {
		for _, pc := range all {
			if pc.c == nil || rng.IntN(3) != 0 && round > 0 {
				continue
			}
			switch {
			case !pc.in:
				pc.c.send(map[string]any{"op": "subscribe", "channel": "room.churn"})
				pc.in = true
			case rng.IntN(2) == 0:
				pc.c.send(map[string]any{"op": "unsubscribe", "channel": "room.churn"})
				pc.in = false
			default:
				pc.c.conn.Close()
				pc.c, pc.in = nil, false
			}
		}
	}
	wantConns, wantUsers := 0, map[string]bool{}
	for _, pc := range all {
		if pc.in {
			wantConns++
			wantUsers[pc.user] = true
		}
	}
	for i, n := range nodes {
		var a presenceAnswer
		eventually(t, 5*time.Second, func() bool {
			_, a = getPresence(t, n.addr, "room.churn")
			return a.Clients == wantConns && a.Users == len(wantUsers)
		}, fmt.Sprintf("node %d: want %d clients, %d users", i, wantConns, len(wantUsers)))
		if len(a.Members) != min(wantConns, 10) || a.Truncated != (wantConns > 10) {
			t.Fatalf("node %d: %d members listed, truncated %v (max 10 of %d)", i, len(a.Members), a.Truncated, wantConns)
		}
	}
	t.Logf("after churn: %d connections of %d users in the channel", wantConns, len(wantUsers))

	// Joins of one window reach Redis as one script call and one
	// announcement per channel and node.
	watcher := dialUser(t, nodes[1].addr, "watcher")
	watcher.send(map[string]any{"op": "subscribe", "channel": "chat.batch"})
	watcher.expect(proto.OpSubscribed)
	watcher.expect(proto.OpJoin)
	time.Sleep(2 * bus.PresenceWindow)
	const joins = 30
	evalBefore, pubBefore := commandCalls(t, "evalsha", servers...), commandCalls(t, "publish", servers...)+commandCalls(t, "spublish", servers...)
	for i := range joins {
		c := dialUser(t, nodes[0].addr, "j"+strconv.Itoa(i))
		c.send(map[string]any{"op": "subscribe", "channel": "chat.batch"})
	}
	for range joins {
		watcher.expect(proto.OpJoin)
	}
	evals := commandCalls(t, "evalsha", servers...) - evalBefore
	pubs := commandCalls(t, "publish", servers...) + commandCalls(t, "spublish", servers...) - pubBefore
	t.Logf("%d joins: %d EVALSHA (presence writes and reads), %d publishes", joins, evals, pubs)
	if pubs > joins/3 {
		t.Errorf("%d joins announced with %d publishes: not batched", joins, pubs)
	}
	if ts := nodes[0]; ts.metric(t, "tether_presence_entries") == 0 {
		t.Errorf("node 0 reports no presence entries")
	}
}

func presenceClusterConfig() Config {
	return Config{JWTSecret: testSecret, ClientMsgRate: -1, Presence: []string{"room.*"}, JoinLeave: []string{"chat.*"}, PresenceMaxMembers: 10}
}

func TestClusterPresence(t *testing.T) {
	checkClusterLeaks(t)
	r := testutil.StartRedis(t)
	rcfg := redisTestConfig()
	rcfg.URL = r.URL()
	nodes := startRedisNodes(t, 3, presenceClusterConfig(), rcfg)
	testPresenceChurn(t, nodes, []*testutil.Redis{r})
}

func TestClusterPresenceRedisCluster(t *testing.T) {
	checkClusterLeaks(t)
	c := testutil.StartCluster(t, 3)
	rcfg := redisTestConfig()
	rcfg.ClusterAddrs = c.Addrs()
	rcfg.CommandTimeout = time.Second
	nodes := startRedisNodes(t, 3, presenceClusterConfig(), rcfg)
	testPresenceChurn(t, nodes, c.Nodes())
}

// TestClusterPresenceNodeStops checks that a node whose bus closes
// removes its members from Redis at once (a node killed with SIGKILL loses
// them within the bound: deploy/presence_test.go).
func TestClusterPresenceNodeStops(t *testing.T) {
	checkClusterLeaks(t)
	r := testutil.StartRedis(t)
	rcfg := redisTestConfig()
	rcfg.URL = r.URL()
	rcfg.PresenceTTL = time.Second
	nodes := startRedisNodes(t, 2, presenceClusterConfig(), rcfg)
	for i := range 4 {
		c := dialUser(t, nodes[i%2].addr, "u"+strconv.Itoa(i))
		c.send(map[string]any{"op": "subscribe", "channel": "room.stop"})
		c.expect(proto.OpSubscribed)
	}
	eventually(t, 5*time.Second, func() bool {
		_, a := getPresence(t, nodes[0].addr, "room.stop")
		return a.Clients == 4
	}, "4 members")
	start := time.Now()
	if err := nodes[1].bus.Close(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() bool {
		_, a := getPresence(t, nodes[0].addr, "room.stop")
		return a.Clients == 2 && a.Users == 2
	}, "the stopped node's members gone")
	t.Logf("a stopped node's members were gone after %v", time.Since(start).Round(time.Millisecond))
}
