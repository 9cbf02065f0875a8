package server

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"tether/bus"
	"tether/internal/proto"
)

// TestAPIBadInput sends every kind of bad request to the API: each gets
// its documented status (docs/api.md, "Errors") with a JSON error body, and
// is counted in tether_api_commands_total by command and outcome.
func TestAPIBadInput(t *testing.T) {
	b := bus.NewLocal(bus.Config{HistorySize: 100, IdempotencyWindow: time.Minute})
	ts := startServerWithBus(t, Config{NodeID: "test", APIKey: testAPIKey, JWTSecret: testSecret, MaxAPIBody: 1024, Presence: []string{"room.*"}}, b)
	dialUser(t, ts.addr, "alice")
	apiOK(t, "POST", ts.addr, "/api/publish", `{"channel":"a","data":1,"idempotency_key":"k1"}`)
	long := strings.Repeat("x", 256)
	for _, c := range []struct {
		name, method, path, key, body string
		status                        int
		code, command                 string
	}{
		{"unknown user", "POST", "/api/disconnect", testAPIKey, `{"user":"nobody"}`, 404, "not_found", "disconnect"},
		{"unknown user subscribe", "POST", "/api/subscribe", testAPIKey, `{"user":"nobody","channel":"a"}`, 404, "not_found", "subscribe"},
		{"missing user", "POST", "/api/subscribe", testAPIKey, `{"channel":"a"}`, 400, "bad_request", "subscribe"},
		{"missing channel", "POST", "/api/subscribe", testAPIKey, `{"user":"alice"}`, 400, "bad_request", "subscribe"},
		{"bad channel", "POST", "/api/unsubscribe", testAPIKey, `{"user":"alice","channel":"a b"}`, 400, "bad_request", "unsubscribe"},
		{"code under 4000", "POST", "/api/disconnect", testAPIKey, `{"user":"alice","code":1000}`, 400, "bad_request", "disconnect"},
		{"code over 4999", "POST", "/api/disconnect", testAPIKey, `{"user":"alice","code":5000}`, 400, "bad_request", "disconnect"},
		{"reason too long", "POST", "/api/disconnect", testAPIKey, `{"user":"alice","reason":"` + strings.Repeat("r", 124) + `"}`, 400, "bad_request", "disconnect"},
		{"bad JSON", "POST", "/api/disconnect", testAPIKey, `{"user":`, 400, "bad_request", "disconnect"},
		{"JSON not an object", "POST", "/api/subscribe", testAPIKey, `["alice"]`, 400, "bad_request", "subscribe"},
		{"wrong field type", "POST", "/api/disconnect", testAPIKey, `{"user":"alice","code":"4000"}`, 400, "bad_request", "disconnect"},
		{"empty body", "POST", "/api/unsubscribe", testAPIKey, ``, 400, "bad_request", "unsubscribe"},
		{"oversize body", "POST", "/api/subscribe", testAPIKey, `{"user":"` + strings.Repeat("u", 2000) + `"}`, 413, "too_large", "subscribe"},
		{"oversize publish", "POST", "/api/publish", testAPIKey, `{"channel":"a","data":"` + strings.Repeat("d", 2000) + `"}`, 413, "too_large", "publish"},
		{"idempotency key of another channel", "POST", "/api/publish", testAPIKey, `{"channel":"b","data":1,"idempotency_key":"k1"}`, 409, "conflict", "publish"},
		{"bad JSON publish", "POST", "/api/publish", testAPIKey, `{"channel":`, 400, "bad_request", "publish"},
		{"pattern with a space", "GET", "/api/channels?pattern=a%20*", testAPIKey, "", 400, "bad_request", "channels"},
		{"pattern not ASCII", "GET", "/api/channels?pattern=%C3%A9*", testAPIKey, "", 400, "bad_request", "channels"},
		{"pattern too long", "GET", "/api/channels?pattern=" + long, testAPIKey, "", 400, "bad_request", "channels"},
		{"limit 0", "GET", "/api/channels?limit=0", testAPIKey, "", 400, "bad_request", "channels"},
		{"limit not a number", "GET", "/api/channels?limit=ten", testAPIKey, "", 400, "bad_request", "channels"},
		{"history without channel", "GET", "/api/history", testAPIKey, "", 400, "bad_request", "history"},
		{"history bad since", "GET", "/api/history?channel=a&since=-1", testAPIKey, "", 400, "bad_request", "history"},
		{"history limit over 1000", "GET", "/api/history?channel=a&limit=1001", testAPIKey, "", 400, "bad_request", "history"},
		{"presence without channel", "GET", "/api/presence", testAPIKey, "", 400, "bad_request", "presence"},
		{"presence not enabled", "GET", "/api/presence?channel=news.1", testAPIKey, "", 404, "not_found", "presence"},
		{"GET disconnect", "GET", "/api/disconnect", testAPIKey, "", 405, "method_not_allowed", "disconnect"},
		{"POST info", "POST", "/api/info", testAPIKey, `{}`, 405, "method_not_allowed", "info"},
		{"DELETE channels", "DELETE", "/api/channels", testAPIKey, "", 405, "method_not_allowed", "channels"},
		{"GET publish", "GET", "/api/publish", testAPIKey, "", 405, "method_not_allowed", "publish"},
		{"POST admin", "POST", "/admin/data", testAPIKey, `{}`, 405, "method_not_allowed", "admin"},
		{"no key", "GET", "/api/info", "", "", 401, "unauthorized", "info"},
		{"wrong key", "GET", "/api/history?channel=a", "nope", "", 401, "unauthorized", "history"},
		{"no key with a body", "POST", "/api/disconnect", "", `{"user":"alice"}`, 401, "unauthorized", "disconnect"},
		{"wrong key with a body", "POST", "/api/publish", "nope", `{"channel":"a","data":1}`, 401, "unauthorized", "publish"},
		{"no key admin page", "GET", "/admin", "", "", 401, "unauthorized", "admin"},
	} {
		t.Run(c.name, func(t *testing.T) {
			metric := `tether_api_commands_total{command="` + c.command + `",outcome="` + c.code + `"}`
			before := ts.metric(t, metric)
			var rd io.Reader
			if c.body != "" {
				rd = strings.NewReader(c.body)
			}
			req, _ := http.NewRequest(c.method, "http://"+ts.addr+c.path, rd)
			if c.key != "" {
				req.Header.Set("Authorization", "Bearer "+c.key)
			}
			resp, err := clusterHTTP.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.status || resp.Header.Get("Content-Type") != "application/json" ||
				!strings.Contains(string(raw), `{"error":{"code":"`+c.code+`","message":"`) {
				t.Fatalf("%d %s %q, want %d with a JSON error %s", resp.StatusCode, resp.Header.Get("Content-Type"), raw, c.status, c.code)
			}
			if after := ts.metric(t, metric); after != before+1 {
				t.Fatalf("%s went from %v to %v, want one more", metric, before, after)
			}
		})
	}
}

// TestMaxConnsPerUser checks the per-user bound: the upgrade over it gets
// 429 with a JSON error, counted by reason; other users are not bound by
// it, and a closed connection frees its place.
func TestMaxConnsPerUser(t *testing.T) {
	ts := startServer(t, Config{JWTSecret: testSecret, MaxConnsPerUser: 2})
	first := dialUser(t, ts.addr, "alice")
	dialUser(t, ts.addr, "alice")
	apiOK(t, "POST", ts.addr, "/api/publish", `{"channel":"a","data":1,"idempotency_key":"k1"}`)
	token := makeJWT(testSecret, "HS256", map[string]any{"sub": "alice", "exp": time.Now().Add(time.Hour).Unix()})
	_, resp, err := dialWS(ts.addr, "/ws?token="+token, nil)
	if err == nil || resp == nil {
		t.Fatalf("a third connection of alice was accepted (err %v)", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Content-Type") != "application/json" ||
		!strings.Contains(string(body), `"code":"`+proto.CodeLimit+`"`) {
		t.Fatalf("third connection: %d %s %q, want 429 with a JSON error limit", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	if n := ts.metric(t, `tether_connections_rejected_total{reason="max_conns_per_user"}`); n != 1 {
		t.Fatalf("rejected for max_conns_per_user: %v, want 1", n)
	}
	dialUser(t, ts.addr, "bob")
	first.conn.Close()
	eventually(t, 5*time.Second, func() bool {
		c, _, err := dialWS(ts.addr, "/ws?token="+token, nil)
		if err != nil {
			return false
		}
		c.conn.Close()
		return true
	}, "alice may connect again once one of hers closed")
}
