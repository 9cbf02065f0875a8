package deploy_test

import (
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"tether/internal/testutil"
	"tether/internal/wsframe"
	"tether/internal/wstest"
)

// presenceOf returns the clients count GET /api/presence gives for channel
// on n, or -1 on failure.
func (n *node) presenceOf(channel string) int {
	resp, err := http.Get("http://" + n.api + "/api/presence?channel=" + channel)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var a struct{ Clients int }
	if resp.StatusCode != 200 || json.Unmarshal(b, &a) != nil {
		return -1
	}
	return a.Clients
}

// TestPresenceKilledNode kills a tether process with SIGKILL: its presence
// members leave every count within the documented bound (--presence-ttl
// × 4/3 plus one cleaning pass), found by the surviving node's janitor.
func TestPresenceKilledNode(t *testing.T) {
	r := testutil.StartRedis(t)
	const ttl = time.Second
	args := []string{"--redis", r.URL(), "--presence", "room.*", "--presence-ttl", ttl.String()}
	a, b := startNode(t, args...), startNode(t, args...)
	const perNode = 5
	for _, n := range []*node{a, b} {
		for range perNode {
			ws, _, err := wstest.Dial(n.addr, "/ws", nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ws.Conn.Close() })
			if err := ws.WriteFrame(wsframe.OpText, []byte(`{"op":"subscribe","channel":"room.kill"}`)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if !testutil.WaitFor(10*time.Second, func() bool { return a.presenceOf("room.kill") == 2*perNode }) {
		t.Fatalf("presence %d, want %d", a.presenceOf("room.kill"), 2*perNode)
	}
	killed := time.Now()
	b.kill()
	bound := ttl + ttl/3 + time.Second // plus a cleaning pass, generously
	// Failing only well past the bound: the machine may be loaded.
	if !testutil.WaitFor(bound+5*time.Second, func() bool { return a.presenceOf("room.kill") == perNode }) {
		t.Fatalf("presence %d after the kill, want %d", a.presenceOf("room.kill"), perNode)
	}
	gone := time.Since(killed)
	t.Logf("the killed node's %d members were gone after %v (bound %v)", perNode, gone.Round(time.Millisecond), bound)
}
