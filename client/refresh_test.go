package client_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"sync/atomic"
	"testing"
	"time"

	"tether/client"
	"tether/internal/testutil"
	"tether/server"
)

// signTokenFor returns an HS256 JWT for sub expiring at exp that may
// subscribe to channels.
func signTokenFor(secret []byte, sub string, exp time.Time, channels ...string) string {
	enc := base64.RawURLEncoding
	head := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))
	claims, _ := json.Marshal(map[string]any{"sub": sub, "exp": exp.Unix(), "channels": channels})
	msg := head + "." + enc.EncodeToString(claims)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(msg))
	return msg + "." + enc.EncodeToString(mac.Sum(nil))
}

// TestTokenRefreshInPlace: tokens that live 3 s, a refresh window of 2 s:
// the client refreshes on each refresh_due through GetToken, five times,
// on one connection; the fourth token drops channel b.*, which the server
// unsubscribes (reason forbidden) and the client reports.
func TestTokenRefreshInPlace(t *testing.T) {
	testutil.CheckGoroutines(t)
	secret := []byte("test-secret")
	srv := startServer(t, server.Config{JWTSecret: secret, PingInterval: time.Second, RefreshWindow: 2 * time.Second}, newBus(t))
	var issued atomic.Int64
	var evs events
	c := dial(t, wsURL(srv), client.Options{
		OnEvent: evs.add,
		GetToken: func(ctx context.Context) (string, error) {
			n := issued.Add(1)
			channels := []string{"a.*", "b.*"}
			if n >= 4 { // the first connect is token 1
				channels = channels[:1]
			}
			return signTokenFor(secret, "u1", time.Now().Add(3*time.Second), channels...), nil
		},
	})
	var a, b inbox
	if _, err := c.Subscribe("a.x", a.handle); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Subscribe("b.x", b.handle); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, func() bool { return len(evs.of(client.EventTokenRefreshed)) >= 5 }, "five refreshes")
	if n := len(evs.of(client.EventConnected)); n != 1 {
		t.Fatalf("%d connections, want one:%s", n, evs.String())
	}
	if d := evs.of(client.EventDisconnected); len(d) != 0 || len(evs.of(client.EventRefreshFailed)) != 0 {
		t.Fatalf("want no disconnect and no failed refresh:%s", evs.String())
	}
	u := evs.of(client.EventUnsubscribed)
	if len(u) != 1 || u[0].Channel != "b.x" || u[0].Reason != "forbidden" {
		t.Fatalf("want b.x unsubscribed as forbidden:%s", evs.String())
	}
	for i, e := range evs.of(client.EventTokenRefreshed) {
		if left := time.Until(e.Exp); i == 4 && (left < 0 || left > 3*time.Second) {
			t.Fatalf("refresh %d: exp %v", i, e.Exp)
		}
	}
	apiPublish(t, srv, "a.x", 1)
	testutil.Eventually(t, 5*time.Second, func() bool { return a.len() == 1 }, "message on the refreshed connection")
	t.Logf("events:%s", evs.String())
}
