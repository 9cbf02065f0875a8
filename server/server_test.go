package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"tether/bus"
)

// testServer is a running node with a local bus.
type testServer struct {
	*Server
	addr string
	bus  *bus.Bus
}

func startServer(t testing.TB, cfg Config) *testServer {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.NodeID == "" {
		cfg.NodeID = "test"
	}
	b := bus.NewLocal(bus.Config{HistorySize: 1000})
	return startServerWithBus(t, cfg, b)
}

func startServerWithBus(t testing.TB, cfg Config, b *bus.Bus) *testServer {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: testLogLevel}))
	s, err := New(cfg, b, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Generous: CI runs every package's -race tests at once on two cores.
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			var buf bytes.Buffer
			_ = pprof.Lookup("goroutine").WriteTo(&buf, 1)
			t.Errorf("shutdown: %v; goroutines:\n%s", err, buf.String())
		}
		_ = b.Close()
	})
	return &testServer{Server: s, addr: s.Addr().String(), bus: b}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// publish publishes through the HTTP API and returns the status and body.
func (ts *testServer) publish(t testing.TB, body string, header ...string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+ts.addr+"/api/publish", strings.NewReader(body))
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("publish answered non-JSON %q (status %d)", raw, resp.StatusCode)
	}
	return resp.StatusCode, m
}

func (ts *testServer) mustPublish(t testing.TB, channel string, data any) uint64 {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"channel": channel, "data": data})
	code, m := ts.publish(t, string(b))
	if code != 200 {
		t.Fatalf("publish: %d %v", code, m)
	}
	return num(m["offset"])
}

func (ts *testServer) get(t testing.TB, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + ts.addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metric returns the value of a metric line from /metrics.
func (ts *testServer) metric(t testing.TB, name string) float64 {
	t.Helper()
	_, body := ts.get(t, "/metrics")
	for _, line := range strings.Split(body, "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			var v float64
			fmt.Sscan(rest, &v)
			return v
		}
	}
	return 0
}

func eventually(t testing.TB, timeout time.Duration, cond func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out: %s", msg)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSubscribePublishReceive(t *testing.T) {
	ts := startServer(t, Config{})
	c := mustDial(t, ts.addr)
	c.send(map[string]any{"op": "subscribe", "channel": "scores.m1", "id": 1})
	sub := c.expect("subscribed")
	if sub["channel"] != "scores.m1" || num(sub["id"]) != 1 || sub["recovered"] != false {
		t.Fatalf("bad subscribed: %v", sub)
	}
	base := num(sub["offset"])
	for i := 1; i <= 5; i++ {
		off := ts.mustPublish(t, "scores.m1", map[string]any{"n": i})
		if off != base+uint64(i) {
			t.Fatalf("offset %d, want %d", off, base+uint64(i))
		}
	}
	for i := 1; i <= 5; i++ {
		m := c.expect("message")
		if num(m["offset"]) != base+uint64(i) || m["channel"] != "scores.m1" {
			t.Fatalf("bad message %v", m)
		}
		if d := m["data"].(map[string]any); num(d["n"]) != uint64(i) {
			t.Fatalf("bad data %v", m)
		}
	}
	c.send(map[string]any{"op": "unsubscribe", "channel": "scores.m1", "id": "u"})
	if u := c.expect("unsubscribed"); u["id"] != "u" {
		t.Fatalf("bad unsubscribed %v", u)
	}
	ts.mustPublish(t, "scores.m1", 1)
	c.send(map[string]any{"op": "ping"})
	c.expect("pong") // nothing from scores.m1 in between
	eventually(t, 2*time.Second, func() bool { return ts.index.count() == 0 }, "channel freed")
}

func TestBatchPublish(t *testing.T) {
	ts := startServer(t, Config{})
	c := mustDial(t, ts.addr)
	c.send(map[string]any{"op": "subscribe", "channel": "a"})
	c.expect("subscribed")
	code, m := ts.publish(t, `{"messages":[{"channel":"a","data":1},{"channel":"b","data":2},{"channel":"a","data":3}]}`)
	if code != 200 {
		t.Fatalf("batch: %d %v", code, m)
	}
	offs := m["offsets"].([]any)
	if len(offs) != 3 || num(offs[0]) != 1 || num(offs[1]) != 1 || num(offs[2]) != 2 {
		t.Fatalf("bad offsets %v", m)
	}
	for _, want := range []float64{1, 3} {
		if got := c.expect("message"); got["data"] != want {
			t.Fatalf("got %v, want data %v", got, want)
		}
	}
}

func TestHTTPAPIErrors(t *testing.T) {
	ts := startServer(t, Config{MaxMessageSize: 1000})
	f := func(body string, wantStatus int, wantCode string) {
		t.Helper()
		code, m := ts.publish(t, body)
		if code != wantStatus {
			t.Fatalf("%s: status %d, want %d (%v)", body, code, wantStatus, m)
		}
		e, _ := m["error"].(map[string]any)
		if e == nil || e["code"] != wantCode || e["message"] == "" {
			t.Fatalf("%s: body %v, want code %s", body, m, wantCode)
		}
	}
	f(`{"channel":"a",`, 400, "bad_request")
	f(`{"channel":"a b","data":1}`, 400, "bad_request")
	f(`{"channel":"","data":1}`, 400, "bad_request")
	f(`{"channel":"a"}`, 400, "bad_request")
	f(`{"messages":[]}`, 400, "bad_request")
	f(`{"channel":"`+strings.Repeat("x", 256)+`","data":1}`, 400, "bad_request")
	f(`{"channel":"a","data":"`+strings.Repeat("x", 2000)+`"}`, 413, "too_large")

	resp, err := http.Get("http://" + ts.addr + "/api/publish")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 {
		t.Fatalf("GET publish: %d", resp.StatusCode)
	}
	if n := ts.metric(t, "tether_api_errors_total"); n < 8 {
		t.Fatalf("api errors counted %v", n)
	}

	// With an API key, callers need it (loopback is not enough).
	keyed := startServer(t, Config{APIKey: "s3cret"})
	code, m := keyed.publish(t, `{"channel":"a","data":1}`)
	if code != 401 || m["error"].(map[string]any)["code"] != "unauthorized" {
		t.Fatalf("no key: %d %v", code, m)
	}
	if code, _ := keyed.publish(t, `{"channel":"a","data":1}`, "Authorization", "Bearer wrong"); code != 401 {
		t.Fatalf("wrong key: %d", code)
	}
	if code, _ := keyed.publish(t, `{"channel":"a","data":1}`, "Authorization", "Bearer s3cret"); code != 200 {
		t.Fatalf("right key: %d", code)
	}

	// A closed bus makes publishes unavailable, with Retry-After.
	closed := startServer(t, Config{})
	closed.bus.Close()
	req, _ := http.NewRequest("POST", "http://"+closed.addr+"/api/publish", bytes.NewReader([]byte(`{"channel":"a","data":1}`)))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("closed bus: %d %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

func TestHealthReadyMetrics(t *testing.T) {
	ts := startServer(t, Config{})
	if code, _ := ts.get(t, "/healthz"); code != 200 {
		t.Fatalf("healthz %d", code)
	}
	if code, _ := ts.get(t, "/readyz"); code != 200 {
		t.Fatalf("readyz %d", code)
	}
	_ = mustDial(t, ts.addr)
	_, body := ts.get(t, "/metrics")
	for _, name := range []string{
		"tether_connections 1", "tether_connections_accepted_total 1", "tether_connections_rejected_total{reason=",
		"tether_disconnects_total{reason=", "tether_channels", "tether_subscriptions", "tether_messages_published_total",
		"tether_messages_delivered_total", "tether_delivered_bytes_total", "tether_heartbeat_timeouts_total",
		"tether_slow_consumer_disconnects_total", "process_resident_memory_bytes", "process_cpu_seconds_total",
	} {
		if !strings.Contains(body, name) {
			t.Errorf("metrics lack %q", name)
		}
	}
	if code, body := ts.get(t, "/nope"); code != 404 || !strings.Contains(body, `"not_found"`) {
		t.Fatalf("404: %d %s", code, body)
	}
}

func stringsReader(s string) *strings.Reader { return strings.NewReader(s) }

func httpPost(addr, body string) (int, error) {
	resp, err := http.Post("http://"+addr+"/api/publish", "application/json", strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

var testLogLevel = slog.LevelWarn
