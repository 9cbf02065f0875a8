package server

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"tether/internal/proto"
)

// expectSkipping reads frames until one with op arrives, skipping pings
// and the ops in skip.
func (c *testClient) expectSkipping(op string, skip ...string) map[string]any {
	c.t.Helper()
	for {
		m, raw, err := c.next(10 * time.Second)
		if err != nil {
			c.t.Fatalf("waiting for %q: %v", op, err)
		}
		if m["op"] == op {
			return m
		}
		skipped := m["op"] == proto.OpPing
		for _, s := range skip {
			skipped = skipped || m["op"] == s
		}
		if !skipped {
			c.t.Fatalf("want op %q, got %s", op, raw)
		}
	}
}

// TestRefreshInPlace refreshes one connection's token five times, each on
// the server's refresh_due, with no reconnect; the fifth token drops a
// channel, which the server unsubscribes with reason forbidden; refused
// refreshes keep the old expiry, which then closes the connection with 4001.
func TestRefreshInPlace(t *testing.T) {
	ts := startServer(t, Config{JWTSecret: testSecret, PingInterval: time.Second, PongTimeout: 5 * time.Second, RefreshWindow: 2 * time.Second})
	token := func(sub string, life time.Duration, channels ...string) (string, int64) {
		exp := time.Now().Add(life).Unix()
		return makeJWT(testSecret, "HS256", map[string]any{"sub": sub, "exp": exp, "channels": channels}), exp
	}
	first, exp := token("u1", 3*time.Second, "a.*", "b")
	c, _, err := dialWS(ts.addr, "/ws?token="+first, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.t = t
	t.Cleanup(func() { c.conn.Close() })
	welcome := c.expect(proto.OpWelcome)
	c.send(map[string]any{"op": "subscribe", "channel": "a.1", "id": 1})
	c.expect(proto.OpSubscribed)
	c.send(map[string]any{"op": "subscribe", "channel": "b", "id": 2})
	c.expect(proto.OpSubscribed)

	for i := range 5 {
		due := c.expectSkipping(proto.OpRefreshDue)
		if got := int64(num(due["exp"])); got != exp {
			t.Fatalf("refresh %d: refresh_due exp %d, want %d", i, got, exp)
		}
		if left := time.Until(time.Unix(exp, 0)); left < 0 || left > 2*time.Second {
			t.Fatalf("refresh %d: refresh_due %v before exp, want within the 2s window", i, left)
		}
		channels := []string{"a.*", "b"}
		if i == 4 {
			channels = channels[:1]
		}
		var next string
		next, exp = token("u1", 3*time.Second, channels...)
		c.send(map[string]any{"op": "refresh", "token": next, "id": 10 + i})
		if i == 4 {
			u := c.expectSkipping(proto.OpUnsubscribed)
			if u["channel"] != "b" || u["reason"] != proto.ReasonForbidden || u["id"] != nil {
				t.Fatalf("want b unsubscribed as forbidden, got %v", u)
			}
		}
		r := c.expectSkipping(proto.OpRefreshed)
		if int64(num(r["exp"])) != exp || num(r["id"]) != uint64(10+i) {
			t.Fatalf("refresh %d: %v, want exp %d", i, r, exp)
		}
	}
	// Still the same connection, still subscribed to a.1.
	ts.mustPublish(t, "a.1", 7)
	if m := c.expectSkipping(proto.OpMessage); m["channel"] != "a.1" {
		t.Fatalf("got %v", m)
	}
	if n := ts.metric(t, `tether_connections_accepted_total`); n != 1 {
		t.Fatalf("%v connections accepted, want 1 (%v)", n, welcome)
	}

	refused := func(tok, code string) {
		t.Helper()
		c.send(map[string]any{"op": "refresh", "token": tok, "id": 99})
		e := c.expectSkipping(proto.OpError, proto.OpRefreshDue)
		if e["code"] != code || num(e["id"]) != 99 {
			t.Fatalf("refresh with %q: %v, want %s", tok, e, code)
		}
	}
	foreign, _ := token("u2", time.Hour, "a.*")
	refused(foreign, proto.CodeUnauthorized)
	expired, _ := token("u1", -time.Minute, "a.*")
	refused(expired, proto.CodeUnauthorized)
	refused(makeJWT([]byte("other-secret"), "HS256", map[string]any{"sub": "u1", "exp": time.Now().Add(time.Hour).Unix()}), proto.CodeUnauthorized)
	refused("a.b.c", proto.CodeUnauthorized)
	refused("", proto.CodeBadRequest)
	// The old expiry holds.
	if code := c.expectClose(6 * time.Second); code != proto.CloseUnauthorized {
		t.Fatalf("close %d, want 4001", code)
	}
	if ok, failed := ts.metric(t, `tether_token_refreshes_total{result="ok"}`), ts.metric(t, `tether_token_refreshes_total{result="failed"}`); ok != 5 || failed != 4 {
		t.Fatalf("refreshes counted ok=%v failed=%v, want 5 and 4 (the empty token is a bad_request, not a refresh)", ok, failed)
	}
}

// TestRefreshOpenServer: a server without tokens refuses refresh.
func TestRefreshOpenServer(t *testing.T) {
	ts := startServer(t, Config{})
	c := mustDial(t, ts.addr)
	c.send(map[string]any{"op": "refresh", "token": "x.y.z", "id": 1})
	if e := c.expect(proto.OpError); e["code"] != proto.CodeBadRequest {
		t.Fatalf("got %v", e)
	}
}

// TestRefreshDueSpread opens 2,000 connections whose tokens were issued in
// the same second (the same exp) and checks that their refresh_due frames
// spread over the window's later half instead of arriving together. It
// logs the histogram; the bound is on the spread, not on timing: no tenth
// of the spread gets more than 3× its share.
func TestRefreshDueSpread(t *testing.T) {
	const n = 2000
	window := 10 * time.Second
	ts := startServer(t, Config{JWTSecret: testSecret, PingInterval: 5 * time.Second, PongTimeout: 30 * time.Second, RefreshWindow: window})
	exp := time.Now().Add(window + 5*time.Second).Unix()
	token := makeJWT(testSecret, "HS256", map[string]any{"sub": "u", "exp": exp})
	arrivals := make([]time.Time, n)
	var wg sync.WaitGroup
	for i := range n {
		c, _, err := dialWS(ts.addr, "/ws?token="+token, nil)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		c.t = t
		t.Cleanup(func() { c.conn.Close() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				m, _, err := c.next(window + 10*time.Second)
				if err != nil {
					return
				}
				if m["op"] == proto.OpRefreshDue {
					arrivals[i] = time.Now()
					return
				}
			}
		}()
	}
	if left := time.Until(time.Unix(exp, 0).Add(-window)); left < 0 {
		t.Skipf("dialing %d connections took past the window's start (%v late): machine too busy", n, -left)
	}
	wg.Wait()
	start := time.Unix(exp, 0).Add(-window)
	spread := window / 2
	const slices = 10
	var hist [slices + 1]int // the last: after the spread (a late tick)
	for i, at := range arrivals {
		if at.IsZero() {
			t.Fatalf("connection %d got no refresh_due", i)
		}
		k := int(at.Sub(start) * slices / spread)
		hist[min(max(k, 0), slices)]++
	}
	var b strings.Builder
	fmt.Fprintf(&b, "refresh_due of %d connections, exp %d, window %v (sent %v..%v before exp):\n", n, exp, window, window, window-spread)
	for k, v := range hist {
		label := fmt.Sprintf("%4.1fs..%4.1fs before exp", (window - time.Duration(k)*spread/slices).Seconds(), (window - time.Duration(k+1)*spread/slices).Seconds())
		if k == slices {
			label = "later                   "
		}
		fmt.Fprintf(&b, "  %s %5d %s\n", label, v, strings.Repeat("#", v/10))
	}
	t.Log(b.String())
	for k, v := range hist[:slices] {
		if v > 3*n/slices {
			t.Errorf("slice %d got %d of %d refresh_due, over 3× its share", k, v, n)
		}
	}
	if hist[slices] > n/slices {
		t.Errorf("%d refresh_due after the window", hist[slices])
	}
}
