package server

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"tether/bus"
	"tether/internal/proto"
)

// presenceAnswer is a presence answer, decoded.
type presenceAnswer struct {
	Op        string       `json:"op"`
	Channel   string       `json:"channel"`
	Clients   int          `json:"clients"`
	Users     int          `json:"users"`
	Members   []bus.Member `json:"members"`
	Truncated bool         `json:"truncated"`
	Error     *struct {
		Code string `json:"code"`
	} `json:"error"`
}

// askPresence sends a presence op and returns the answer (or error frame).
func askPresence(t *testing.T, c *testClient, channel string) map[string]any {
	t.Helper()
	c.send(map[string]any{"op": "presence", "channel": channel, "id": 7})
	for {
		m, raw, err := c.next(5 * time.Second)
		if err != nil {
			t.Fatalf("presence of %s: %v", channel, err)
		}
		if m["op"] == proto.OpPresence || m["op"] == proto.OpError {
			if num(m["id"]) != 7 {
				t.Fatalf("answer without the request's id: %s", raw)
			}
			return m
		}
	}
}

// apiPresence returns the status and answer of GET /api/presence.
func getPresence(t *testing.T, addr, channel string) (int, presenceAnswer) {
	t.Helper()
	code, body := getStatus(t, addr, "/api/presence?channel="+channel)
	var a presenceAnswer
	if err := json.Unmarshal([]byte(body), &a); err != nil {
		t.Fatalf("presence answered non-JSON %q", body)
	}
	return code, a
}

func TestPresenceOpAndAPI(t *testing.T) {
	ts := startServer(t, Config{Presence: []string{"room.*"}, PresenceMaxMembers: 2})
	var clients []*testClient
	for range 3 {
		c := mustDial(t, ts.addr)
		c.send(map[string]any{"op": "subscribe", "channel": "room.a"})
		c.expect(proto.OpSubscribed)
		clients = append(clients, c)
	}
	var a presenceAnswer
	eventually(t, 2*time.Second, func() bool {
		_, a = getPresence(t, ts.addr, "room.a")
		return a.Clients == 3
	}, "3 members")
	if a.Users != 3 || len(a.Members) != 2 || !a.Truncated {
		t.Fatalf("got %+v, want 3 clients, 3 users (one per connection on an open server), 2 members, truncated", a)
	}
	m := askPresence(t, clients[0], "room.a")
	if m["op"] != "presence" || num(m["clients"]) != 3 || num(m["users"]) != 3 || m["truncated"] != true || len(m["members"].([]any)) != 2 {
		t.Fatalf("presence op answered %v", m)
	}

	// A leave is counted at once by the local bus.
	clients[2].send(map[string]any{"op": "unsubscribe", "channel": "room.a"})
	clients[2].expect(proto.OpUnsubscribed)
	clients[1].conn.Close()
	eventually(t, 2*time.Second, func() bool {
		_, a = getPresence(t, ts.addr, "room.a")
		return a.Clients == 1
	}, "1 member left")
	if a.Users != 1 || len(a.Members) != 1 || a.Truncated {
		t.Fatalf("got %+v", a)
	}
	if got := ts.metric(t, "tether_presence_entries"); got != 1 {
		t.Fatalf("tether_presence_entries = %v, want 1", got)
	}

	// Bad input gets the documented error.
	f := func(channel, wantCode string, wantStatus int) {
		t.Helper()
		m := askPresence(t, clients[0], strings.ReplaceAll(channel, "%20", " "))
		if m["op"] != "error" || m["code"] != wantCode {
			t.Errorf("presence op on %q: %v, want error %s", channel, m, wantCode)
		}
		status, a := getPresence(t, ts.addr, channel)
		if status != wantStatus || a.Error == nil || a.Error.Code != wantCode {
			t.Errorf("GET /api/presence?channel=%q: %d %+v, want %d %s", channel, status, a, wantStatus, wantCode)
		}
	}
	f("", proto.CodeBadRequest, http.StatusBadRequest)
	f("bad%20name", proto.CodeBadRequest, http.StatusBadRequest)
	f("news", proto.CodeNotFound, http.StatusNotFound)
}

func TestPresenceNeedsReadPermission(t *testing.T) {
	ts := startServer(t, Config{JWTSecret: testSecret, Presence: []string{"*"}})
	token := makeJWT(testSecret, "HS256", map[string]any{"sub": "ann", "exp": time.Now().Add(time.Hour).Unix(), "channels": []string{"room.*"}})
	c, _, err := dialWS(ts.addr, "/ws?token="+token, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.t = t
	defer c.conn.Close()
	c.expect(proto.OpWelcome)
	c.send(map[string]any{"op": "subscribe", "channel": "room.a"})
	c.expect(proto.OpSubscribed)
	if m := askPresence(t, c, "secret.a"); m["code"] != proto.CodeForbidden {
		t.Fatalf("presence of a channel the token does not allow: %v", m)
	}
	eventually(t, 2*time.Second, func() bool {
		m := askPresence(t, c, "room.a")
		return num(m["clients"]) == 1 && num(m["users"]) == 1 &&
			m["members"].([]any)[0].(map[string]any)["user"] == "ann"
	}, "ann in room.a")
}

// TestJoinLeave checks that joins and leaves reach the subscribers of a
// join-leave channel, in order, and stop above JoinLeaveMax.
func TestJoinLeave(t *testing.T) {
	ts := startServer(t, Config{JoinLeave: []string{"chat.*"}, JoinLeaveMax: 3})
	watcher := mustDial(t, ts.addr)
	watcher.send(map[string]any{"op": "subscribe", "channel": "chat.x"})
	watcher.expect(proto.OpSubscribed)
	watcher.expect(proto.OpJoin) // its own

	other := mustDial(t, ts.addr)
	other.send(map[string]any{"op": "subscribe", "channel": "chat.x"})
	other.expect(proto.OpSubscribed)
	j := watcher.expect(proto.OpJoin)
	if j["channel"] != "chat.x" || j["conn"] == nil || j["user"] != j["conn"] {
		t.Fatalf("join frame %v", j)
	}
	other.send(map[string]any{"op": "unsubscribe", "channel": "chat.x"})
	l := watcher.expect(proto.OpLeave)
	if l["conn"] != j["conn"] {
		t.Fatalf("leave %v does not match join %v", l, j)
	}
	if got := ts.metric(t, `tether_join_leave_events_total{result="emitted"}`); got != 3 {
		t.Fatalf("emitted = %v, want 3", got)
	}

	// Above JoinLeaveMax members, nothing is sent but the count.
	for range 3 {
		c := mustDial(t, ts.addr)
		c.send(map[string]any{"op": "subscribe", "channel": "chat.x"})
		c.expect(proto.OpSubscribed)
	}
	eventually(t, 2*time.Second, func() bool {
		return ts.metric(t, `tether_join_leave_events_total{result="suppressed"}`) >= 1
	}, "joins above the max suppressed")
	if m := askPresence(t, watcher, "chat.x"); num(m["clients"]) != 4 {
		t.Fatalf("presence %v, want 4 clients", m)
	}
}
