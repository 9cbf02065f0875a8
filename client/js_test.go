package client_test

// Tests of tether.js against real tether nodes, run in Node here and in
// headless Chromium in browser_test.go. Both drive the same harness
// (js/testdata/harness.mjs) through the jsDriver interface.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"tether/bus"
	"tether/client"
	"tether/internal/testutil"
	"tether/server"
)

// jsDriver runs the harness somewhere and reports its state.
type jsDriver interface {
	snapshot(t testing.TB) jsState
}

// startJS starts the harness connected to the node (or proxy) at hostport,
// subscribed to channel, with tether.connect options opts.
type startJS func(t *testing.T, hostport, channel string, opts map[string]any) jsDriver

// jsState is the harness's snapshot.
type jsState struct {
	Msgs       [][]json.RawMessage `json:"msgs"`        // [offset, epoch, data]
	ServerMsgs [][]json.RawMessage `json:"server_msgs"` // [channel, offset, data] of server-side subscriptions
	Events     []map[string]any    `json:"events"`
	Ready      bool                `json:"ready"`
	State      string              `json:"state"`
}

func (s jsState) messages(t testing.TB) []client.Message {
	out := make([]client.Message, len(s.Msgs))
	for i, m := range s.Msgs {
		off, err := strconv.ParseUint(string(m[0]), 10, 64)
		if err != nil {
			t.Fatalf("message %d: offset %s", i, m[0])
		}
		var epoch string
		json.Unmarshal(m[1], &epoch)
		out[i] = client.Message{Offset: off, Epoch: epoch, Data: m[2]}
	}
	return out
}

func (s jsState) events(name string) []map[string]any {
	var out []map[string]any
	for _, e := range s.Events {
		if e["ev"] == name {
			out = append(out, e)
		}
	}
	return out
}

func (s jsState) lastOffset(t testing.TB) uint64 {
	if len(s.Msgs) == 0 {
		return 0
	}
	m := s.messages(t)
	return m[len(m)-1].Offset
}

// waitJS polls d until cond holds.
func waitJS(t *testing.T, d jsDriver, timeout time.Duration, what string, cond func(jsState) bool) jsState {
	t.Helper()
	var s jsState
	if !testutil.WaitFor(timeout, func() bool {
		s = d.snapshot(t)
		return cond(s)
	}) {
		t.Fatalf("after %v: %s; state %s, %d messages, events %v", timeout, what, s.State, len(s.Msgs), s.Events)
	}
	return s
}

// jsRecoveryScenario drains and restarts the node behind a proxy while a Go
// publisher keeps publishing; the harness must end with every message
// exactly once, in order.
func jsRecoveryScenario(t *testing.T, start startJS) {
	b := newBus(t)
	cfg := server.Config{
		AllowClientPublish: true,
		DrainWindow:        200 * time.Millisecond,
		ReconnectJitter:    500 * time.Millisecond,
	}
	a := startServer(t, cfg, b)
	px := startProxy(t, a.Addr().String())
	d := start(t, px.Addr(), "restart.js", map[string]any{"minBackoffMs": 50, "maxBackoffMs": 500})
	waitJS(t, d, 15*time.Second, "subscribed", func(s jsState) bool { return s.Ready })

	pub := startPublisher(dial(t, "ws://"+px.Addr()+"/ws", client.Options{MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond}),
		"restart.js", 3*time.Millisecond)
	defer pub.halt()
	waitJS(t, d, 10*time.Second, "first messages", func(s jsState) bool { return len(s.Msgs) >= 50 })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	a2 := startServer(t, cfg, b)
	px.SetTarget(a2.Addr().String())
	before := pub.ackedCount()
	testutil.Eventually(t, 15*time.Second, func() bool { return pub.ackedCount() >= before+100 }, "publishes after the restart")
	pub.halt()

	s := waitJS(t, d, 10*time.Second, fmt.Sprintf("catch up with offset %d", pub.maxOffset),
		func(s jsState) bool { return s.lastOffset(t) >= pub.maxOffset })
	msgs := s.messages(t)
	checkExactlyOnce(t, msgs, pub)
	if len(s.events("recovered")) == 0 || len(s.events("resync_needed")) != 0 {
		t.Fatalf("want recovered and no resync_needed events: %v", s.Events)
	}
	t.Logf("%d messages, offsets %d..%d, exactly once and in order across the restart", len(msgs), msgs[0].Offset, msgs[len(msgs)-1].Offset)
}

// jsWatchdogScenario freezes the path between the harness and the node: the
// watchdog must notice within ping interval + grace, and the harness must
// recover what was published meanwhile.
func jsWatchdogScenario(t *testing.T, start startJS) {
	const interval, grace = 300 * time.Millisecond, 300 * time.Millisecond
	srv := startServer(t, server.Config{AllowClientPublish: true, PingInterval: interval, PongTimeout: 5 * time.Second}, newBus(t))
	px := startProxy(t, srv.Addr().String())
	d := start(t, px.Addr(), "frozen.js", map[string]any{"watchdogGraceMs": grace.Milliseconds(), "minBackoffMs": 20})
	waitJS(t, d, 15*time.Second, "subscribed", func(s jsState) bool { return s.Ready })

	pub := dial(t, wsURL(srv), client.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	publish := func(n int) {
		for i := 0; i < n; i++ {
			if _, err := pub.Publish(ctx, "frozen.js", i); err != nil {
				t.Fatal(err)
			}
		}
	}
	publish(3)
	waitJS(t, d, 5*time.Second, "messages before the freeze", func(s jsState) bool { return len(s.Msgs) == 3 })
	frozenAt := time.Now()
	px.FreezeAll()
	publish(5)
	s := waitJS(t, d, 10*time.Second, "watchdog", func(s jsState) bool { return len(s.events("disconnected")) > 0 })
	ev := s.events("disconnected")[0]
	if ev["reason"] != "watchdog" {
		t.Fatalf("disconnected for %v, want the watchdog", ev)
	}
	at := time.UnixMilli(int64(ev["at"].(float64)))
	took := at.Sub(frozenAt)
	if took > interval+grace+time.Second {
		t.Fatalf("watchdog fired %v after the freeze, want within %v + slack", took, interval+grace)
	}
	t.Logf("watchdog fired %v after the freeze (ping interval %v + grace %v)", took.Round(time.Millisecond), interval, grace)
	s = waitJS(t, d, 10*time.Second, "recovered messages", func(s jsState) bool { return len(s.Msgs) == 8 })
	for i, m := range s.messages(t) {
		if m.Offset != uint64(i+1) {
			t.Fatalf("message %d has offset %d", i, m.Offset)
		}
	}
	if len(s.events("recovered")) != 1 {
		t.Fatalf("want one recovered event: %v", s.Events)
	}
}

// tokenServer serves a token from issue on every request, to the harness's
// getToken (fetch, from the page's origin too).
func tokenServer(t *testing.T, issue func() string) *httptest.Server {
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Access-Control-Allow-Origin", "*")
		io.WriteString(w, issue())
	}))
	t.Cleanup(ts.Close)
	return ts
}

// jsTokenScenario gives the harness tokens it cannot refresh in place (each
// is for another user, so the node refuses it in a refresh): refresh_due is
// answered with a token the node refuses (refresh_failed), the connection is
// closed with 4001 at exp, and the harness reconnects with a new token from
// getToken and recovers its subscription.
func jsTokenScenario(t *testing.T, start startJS) {
	secret := []byte("js-secret")
	var issued atomic.Int64
	tokens := tokenServer(t, func() string {
		return signToken(secret, fmt.Sprintf("u%d", issued.Add(1)), time.Now().Add(2*time.Second))
	})
	srv := startServer(t, server.Config{JWTSecret: secret, PingInterval: 500 * time.Millisecond, RefreshWindow: time.Second}, newBus(t))
	d := start(t, srv.Addr().String(), "token.js", map[string]any{"tokenURL": tokens.URL, "minBackoffMs": 20})
	waitJS(t, d, 15*time.Second, "subscribed", func(s jsState) bool { return s.Ready })
	s := waitJS(t, d, 10*time.Second, "reconnect with a fresh token", func(s jsState) bool { return len(s.events("connected")) >= 2 })
	if ev := s.events("disconnected")[0]; ev["reason"] != "unauthorized" || ev["code"] != 4001.0 {
		t.Fatalf("disconnected with %v, want 4001", ev)
	}
	if f := s.events("refresh_failed"); len(f) == 0 || f[0]["at"].(float64) > s.events("disconnected")[0]["at"].(float64) ||
		!strings.HasPrefix(f[0]["error"].(string), "unauthorized") {
		t.Fatalf("want a refused refresh before the 4001: %v", s.Events)
	}
	if len(s.events("token_refreshed")) != 0 {
		t.Fatalf("a token of another user was accepted in a refresh: %v", s.Events)
	}
	apiPublish(t, srv, "token.js", "after refresh")
	waitJS(t, d, 5*time.Second, "message after the refresh", func(s jsState) bool { return len(s.Msgs) == 1 })
	t.Logf("%d tokens issued: the first, one per refused refresh, one per reconnect", issued.Load())
}

// jsRefreshScenario: tokens live 3 s and the refresh window is 2 s, so the
// node asks for a new token every 1.5–2 s; the harness answers each
// refresh_due with getToken's token on the open connection: five refreshes
// on one connection, the subscription untouched.
func jsRefreshScenario(t *testing.T, start startJS) {
	secret := []byte("js-refresh")
	var issued atomic.Int64
	tokens := tokenServer(t, func() string {
		issued.Add(1)
		return signTokenFor(secret, "u1", time.Now().Add(3*time.Second), "refresh.*")
	})
	srv := startServer(t, server.Config{JWTSecret: secret, PingInterval: time.Second, RefreshWindow: 2 * time.Second}, newBus(t))
	d := start(t, srv.Addr().String(), "refresh.js", map[string]any{"tokenURL": tokens.URL, "minBackoffMs": 20})
	waitJS(t, d, 15*time.Second, "subscribed", func(s jsState) bool { return s.Ready })
	apiPublish(t, srv, "refresh.js", "before")
	s := waitJS(t, d, 30*time.Second, "five refreshes", func(s jsState) bool { return len(s.events("token_refreshed")) >= 5 })
	if len(s.events("connected")) != 1 || len(s.events("disconnected")) != 0 || len(s.events("refresh_failed")) != 0 {
		t.Fatalf("want one connection, no disconnect, no failed refresh: %v", s.Events)
	}
	var exps []int64
	for _, e := range s.events("token_refreshed") {
		exps = append(exps, int64(e["exp"].(float64)))
	}
	for i := 1; i < len(exps); i++ {
		if exps[i] < exps[i-1] {
			t.Fatalf("expiries go back: %v", exps)
		}
	}
	apiPublish(t, srv, "refresh.js", "after")
	s = waitJS(t, d, 5*time.Second, "messages before and after the refreshes", func(s jsState) bool { return len(s.Msgs) == 2 })
	if m := s.messages(t); m[0].Offset != 1 || m[1].Offset != 2 {
		t.Fatalf("messages %v", m)
	}
	t.Logf("%d refreshes on one connection (tokens issued: %d), expiries %v", len(exps), issued.Load(), exps)
}

// jsServerSubsScenario: the application subscribes the harness's user to a
// channel through POST /api/subscribe; tether.js reports it (subscribed),
// hands its messages to onServerMessage, restores it after a reconnect with
// recovery, and drops it on POST /api/unsubscribe (unsubscribed, reason
// server).
// jsIdempotentScenario publishes three times with one idempotency key:
// one message, offset 1 three times.
func jsIdempotentScenario(t *testing.T, start startJS) {
	b := bus.NewLocal(bus.Config{HistorySize: 100, IdempotencyWindow: time.Minute})
	t.Cleanup(func() { b.Close() })
	srv := startServer(t, server.Config{AllowClientPublish: true}, b)
	d := start(t, srv.Addr().String(), "orders.js", map[string]any{
		"idempotentPublish": map[string]any{"channel": "orders.js", "key": "order-17", "count": 3},
	})
	s := waitJS(t, d, 15*time.Second, "three publishes and a message", func(s jsState) bool {
		return len(s.events("published")) == 3 && len(s.Msgs) == 1
	})
	// Offset 1 each time: a second publish would have been offset 2.
	for _, e := range s.events("published") {
		if e["offset"] != 1.0 {
			t.Errorf("published %v, want offset 1", e)
		}
	}
}

func jsServerSubsScenario(t *testing.T, start startJS) {
	secret := []byte("js-server-subs")
	tokens := tokenServer(t, func() string {
		return signTokenFor(secret, "u7", time.Now().Add(time.Hour), "own.*", "news.*")
	})
	srv := startServer(t, server.Config{JWTSecret: secret}, newBus(t))
	d := start(t, srv.Addr().String(), "own.js", map[string]any{"tokenURL": tokens.URL, "minBackoffMs": 20})
	waitJS(t, d, 15*time.Second, "subscribed", func(s jsState) bool { return s.Ready })
	apiPublish(t, srv, "news.u7", "before") // offset 1: not the harness's yet

	if code, body := apiPost(t, srv, "/api/subscribe", map[string]any{"user": "u7", "channel": "news.u7"}); code != 200 {
		t.Fatalf("api subscribe: %d %s", code, body)
	}
	s := waitJS(t, d, 5*time.Second, "subscribed event", func(s jsState) bool { return len(s.events("subscribed")) == 1 })
	if ev := s.events("subscribed")[0]; ev["channel"] != "news.u7" || ev["offset"] != 1.0 {
		t.Fatalf("subscribed event %v", ev)
	}
	apiPublish(t, srv, "news.u7", "live")
	waitJS(t, d, 5*time.Second, "server subscription's message", func(s jsState) bool { return len(s.ServerMsgs) == 1 })

	// A reconnect restores it with since: what was published meanwhile is
	// recovered.
	if code, body := apiPost(t, srv, "/api/disconnect", map[string]any{"user": "u7", "code": 4000}); code != 200 {
		t.Fatalf("api disconnect: %d %s", code, body)
	}
	waitJS(t, d, 5*time.Second, "disconnected", func(s jsState) bool { return len(s.events("disconnected")) == 1 })
	apiPublish(t, srv, "news.u7", "while away")
	s = waitJS(t, d, 10*time.Second, "recovered after the reconnect", func(s jsState) bool {
		for _, e := range s.events("recovered") {
			if e["channel"] == "news.u7" {
				return len(s.ServerMsgs) == 2
			}
		}
		return false
	})
	if m := s.ServerMsgs[1]; string(m[0]) != `"news.u7"` || string(m[1]) != "3" || string(m[2]) != `"while away"` {
		t.Fatalf("recovered message %s", m)
	}

	if code, body := apiPost(t, srv, "/api/unsubscribe", map[string]any{"user": "u7", "channel": "news.u7"}); code != 200 {
		t.Fatalf("api unsubscribe: %d %s", code, body)
	}
	s = waitJS(t, d, 5*time.Second, "unsubscribed event", func(s jsState) bool { return len(s.events("unsubscribed")) == 1 })
	if ev := s.events("unsubscribed")[0]; ev["channel"] != "news.u7" || ev["reason"] != "server" || ev["offset"] != 3.0 {
		t.Fatalf("unsubscribed event %v", ev)
	}
	apiPublish(t, srv, "news.u7", "after")
	apiPublish(t, srv, "own.js", "own")
	s = waitJS(t, d, 5*time.Second, "own channel's message", func(s jsState) bool { return len(s.Msgs) == 1 })
	if len(s.ServerMsgs) != 2 {
		t.Fatalf("messages after the server's unsubscribe: %s", s.ServerMsgs)
	}
}

// nodeDriver runs the harness in a Node process.
type nodeDriver struct {
	stdin io.WriteCloser
	out   *bufio.Scanner
}

func (d *nodeDriver) snapshot(t testing.TB) jsState {
	t.Helper()
	if _, err := io.WriteString(d.stdin, "state\n"); err != nil {
		t.Fatalf("node driver: %v", err)
	}
	if !d.out.Scan() {
		t.Fatalf("node driver ended: %v", d.out.Err())
	}
	var s jsState
	if err := json.Unmarshal(d.out.Bytes(), &s); err != nil {
		t.Fatalf("node driver: %v: %s", err, d.out.Bytes())
	}
	return s
}

// nodeCommand returns the node binary and the flags it needs for a global
// WebSocket, or skips the test (fails it when CI=true) without a usable
// node.
func nodeCommand(t *testing.T) []string {
	path, err := exec.LookPath("node")
	if err != nil {
		skipOrFail(t, "node not found on PATH")
	}
	out, err := exec.Command(path, "--version").Output()
	if err != nil {
		skipOrFail(t, "cannot run node: "+err.Error())
	}
	major, _ := strconv.Atoi(strings.SplitN(strings.TrimPrefix(strings.TrimSpace(string(out)), "v"), ".", 2)[0])
	switch {
	case major >= 22:
		return []string{path}
	case major >= 20:
		return []string{path, "--experimental-websocket"}
	}
	skipOrFail(t, "node "+strings.TrimSpace(string(out))+" has no WebSocket; need 20 (with a flag) or 22")
	return nil
}

// skipOrFail skips the test, or fails it when the environment variable CI is
// "true", so that CI cannot silently lose a test to a missing tool.
func skipOrFail(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

func startNode(t *testing.T, hostport, channel string, opts map[string]any) jsDriver {
	argv := nodeCommand(t)
	o, _ := json.Marshal(opts)
	driver, _ := filepath.Abs("js/testdata/node_driver.mjs")
	cmd := exec.Command(argv[0], append(argv[1:], driver, "ws://"+hostport+"/ws", channel, string(o))...)
	cmd.Stderr = tWriter{t}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close() // the driver exits when stdin closes
		done := make(chan struct{})
		go func() {
			cmd.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	return &nodeDriver{stdin: stdin, out: sc}
}

func TestNode(t *testing.T) {
	nodeCommand(t)
	testutil.CheckGoroutines(t)
	t.Run("recovery", func(t *testing.T) { jsRecoveryScenario(t, startNode) })
	t.Run("watchdog", func(t *testing.T) { jsWatchdogScenario(t, startNode) })
	t.Run("token", func(t *testing.T) { jsTokenScenario(t, startNode) })
	t.Run("refresh", func(t *testing.T) { jsRefreshScenario(t, startNode) })
	t.Run("server-subs", func(t *testing.T) { jsServerSubsScenario(t, startNode) })
	t.Run("idempotent", func(t *testing.T) { jsIdempotentScenario(t, startNode) })
}
