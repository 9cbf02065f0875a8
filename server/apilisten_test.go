package server

import (
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestAPIListenKeepsTheAPIOffThePublicListener(t *testing.T) {
	ts := startServer(t, Config{APIListen: "127.0.0.1:0"})
	api := &testServer{Server: ts.Server, addr: ts.APIAddr().String(), bus: ts.bus}
	f := func(srv *testServer, method, path string, want int) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://"+srv.addr+path, strings.NewReader(`{"channel":"a","data":1}`))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("%s %s on %s: %d, want %d", method, path, srv.addr, resp.StatusCode, want)
		}
	}
	for _, p := range []string{"/api/publish", "/metrics", "/healthz", "/readyz", "/api/info", "/api/channels",
		"/api/presence?channel=a", "/api/history?channel=a", "/admin", "/admin/data"} {
		f(ts, "GET", p, 404)
	}
	f(ts, "POST", "/api/publish", 404)
	f(ts, "POST", "/api/disconnect", 404)
	f(ts, "POST", "/api/subscribe", 404)
	f(api, "GET", "/api/info", 200)
	f(api, "GET", "/admin", 200)
	f(api, "POST", "/api/publish", 200)
	f(api, "GET", "/metrics", 200)
	f(api, "GET", "/healthz", 200)
	f(api, "GET", "/readyz", 200)
	f(api, "GET", "/ws", 404)

	c := mustDial(t, ts.addr) // the public listener still upgrades
	c.send(map[string]any{"op": "subscribe", "id": 1, "channel": "a"})
	c.expect("subscribed")
	api.mustPublish(t, "a", 7)
	if m := c.expect("message"); m["data"] != float64(7) {
		t.Fatalf("message %v", m)
	}

	addr := api.addr
	if err := ts.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatal("the API listener still accepts after Shutdown")
	}
}

func TestAPIRefusesProxiedLoopbackCallers(t *testing.T) {
	ts := startServer(t, Config{})
	body := `{"channel":"a","data":1}`
	for _, h := range []string{"X-Forwarded-For", "Forwarded", "X-Real-IP", "x-forwarded-for"} {
		if code, m := ts.publish(t, body, h, "203.0.113.9"); code != 401 {
			t.Fatalf("loopback with %s: %d %v", h, code, m)
		}
	}
	if code, m := ts.publish(t, body); code != 200 {
		t.Fatalf("plain loopback: %d %v", code, m)
	}
	// With a key, the key decides, proxy or not.
	keyed := startServer(t, Config{APIKey: "k"})
	if code, m := keyed.publish(t, body, "Authorization", "Bearer k", "X-Forwarded-For", "203.0.113.9"); code != 200 {
		t.Fatalf("keyed through a proxy: %d %v", code, m)
	}
}
