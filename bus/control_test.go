package bus

import (
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"testing"
	"time"

	"tether/internal/testutil"
)

// echo answers a command with the node's name and the command.
func echo(node string) ControlFunc {
	return func(cmd json.RawMessage) json.RawMessage {
		return json.RawMessage(`{"node":` + strconv.Quote(node) + `,"cmd":` + string(cmd) + `}`)
	}
}

func replyNodes(g Gathered) []string {
	var out []string
	for _, r := range g.Replies {
		out = append(out, r.Node)
	}
	return out
}

func TestControlLocal(t *testing.T) {
	testutil.CheckGoroutines(t)
	b := NewLocal(Config{})
	defer b.Close()
	ctx := context.Background()
	if _, err := b.Request(ctx, json.RawMessage(`1`)); err != ErrNoControl {
		t.Fatalf("request before StartControl: %v, want ErrNoControl", err)
	}
	if err := b.StartControl("solo", echo("solo"), nil); err != nil {
		t.Fatal(err)
	}
	g, err := b.Request(ctx, json.RawMessage(`{"x":1}`))
	if err != nil {
		t.Fatal(err)
	}
	if g.Partial() || len(g.Replies) != 1 || string(g.Replies[0].Body) != `{"node":"solo","cmd":{"x":1}}` {
		t.Fatalf("gathered %+v", g)
	}
}

// testControlNodes starts three nodes on cfg, checks that a request from
// each gets the three answers, then that a node whose bus closed is not
// expected any more.
func testControlNodes(t *testing.T, cfg RedisConfig) {
	var nodes []*testNode
	names := []string{"node-a", "node-b", "node-c"}
	for _, name := range names {
		n := newTestNode(t, cfg)
		if err := n.bus.StartControl(name, echo(name), nil); err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	for i, n := range nodes {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		g, err := n.bus.Request(ctx, json.RawMessage(`"hi"`))
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		want := append([]string{names[i]}, slices.Delete(slices.Clone(names), i, i+1)...)
		if got := replyNodes(g); !slices.Equal(got, want) || g.Partial() {
			t.Fatalf("from %s: replies of %v (missing %v), want %v", names[i], got, g.Missing, want)
		}
	}
	_ = nodes[2].bus.Close()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	g, err := nodes[0].bus.Request(ctx, json.RawMessage(`"hi"`))
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if got := replyNodes(g); !slices.Equal(got, names[:2]) || g.Partial() {
		t.Fatalf("after node-c left: replies of %v, missing %v", got, g.Missing)
	}
	t.Logf("3 nodes, one gone: answered in %v", time.Since(start))
}

func TestControlRedis(t *testing.T) {
	testutil.CheckGoroutines(t)
	r := testutil.StartRedis(t)
	testControlNodes(t, testConfig(r.URL()))
}

func TestControlRedisCluster(t *testing.T) {
	testutil.CheckGoroutines(t)
	c := testutil.StartCluster(t, 3)
	cfg := testConfig("")
	cfg.ClusterAddrs = c.Addrs()
	testControlNodes(t, cfg)
}

// TestControlDeadline checks that a node expected but silent (registered,
// not listening: what a paused node looks like) is reported missing once
// the request's deadline passes, and that the request does not wait longer.
func TestControlDeadline(t *testing.T) {
	testutil.CheckGoroutines(t)
	r := testutil.StartRedis(t)
	a := newTestNode(t, testConfig(r.URL()))
	if err := a.bus.StartControl("node-a", echo("node-a"), nil); err != nil {
		t.Fatal(err)
	}
	r.Do(t, "ZADD", "tether:{ctl}:nodes", time.Now().UnixMilli(), "node-z")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	g, err := a.bus.Request(ctx, json.RawMessage(`1`))
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if !slices.Equal(g.Missing, []string{"node-z"}) || !slices.Equal(replyNodes(g), []string{"node-a"}) {
		t.Fatalf("gathered %+v", g)
	}
	if took > 2*time.Second {
		t.Fatalf("request took %v with a 300 ms deadline", took)
	}
	// A node silent for longer than NodeTTL is gone: not expected.
	r.Do(t, "ZADD", "tether:{ctl}:nodes", time.Now().Add(-NodeTTL-time.Second).UnixMilli(), "node-z")
	ctx2, cancel2 := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel2()
	if g, _ := a.bus.Request(ctx2, json.RawMessage(`1`)); g.Partial() {
		t.Fatalf("a node silent past NodeTTL is still expected: %+v", g)
	}
}
