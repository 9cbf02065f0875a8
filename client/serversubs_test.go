package client_test

import (
	"context"
	"testing"
	"time"

	"tether/client"
	"tether/internal/testutil"
	"tether/server"
)

// TestServerSubscriptions: the application subscribes a user through POST
// /api/subscribe: the Go client reports it (EventSubscribed), hands its
// messages to OnServerMessage, restores it after a reconnect with
// recovery, and drops it on POST /api/unsubscribe (EventUnsubscribed,
// reason server) or on its own Unsubscribe.
func TestServerSubscriptions(t *testing.T) {
	testutil.CheckGoroutines(t)
	secret := []byte("server-subs")
	srv := startServer(t, server.Config{JWTSecret: secret}, newBus(t))
	var evs events
	var news, own inbox
	c := dial(t, wsURL(srv), client.Options{
		OnEvent:         evs.add,
		OnServerMessage: news.handle,
		MinBackoff:      20 * time.Millisecond,
		GetToken: func(context.Context) (string, error) {
			return signTokenFor(secret, "u7", time.Now().Add(time.Hour), "own.*", "news.*"), nil
		},
	})
	if _, err := c.Subscribe("own.x", own.handle); err != nil {
		t.Fatal(err)
	}
	apiPublish(t, srv, "news.u7", "before") // offset 1, before the subscription
	post := func(path string, body map[string]any) {
		t.Helper()
		if code, reply := apiPost(t, srv, path, body); code != 200 {
			t.Fatalf("%s: HTTP %d %s", path, code, reply)
		}
	}

	post("/api/subscribe", map[string]any{"user": "u7", "channel": "news.u7"})
	testutil.Eventually(t, 5*time.Second, func() bool { return len(evs.of(client.EventSubscribed)) == 1 }, "EventSubscribed")
	if e := evs.of(client.EventSubscribed)[0]; e.Channel != "news.u7" || e.Offset != 1 || e.Epoch == "" {
		t.Fatalf("EventSubscribed %+v", e.Event)
	}
	if s := c.Subscription("news.u7"); s == nil || !s.Server() || c.Subscription("own.x").Server() {
		t.Fatalf("Subscription(news.u7) = %v", s)
	}
	// A channel the client already has: nothing changes, no event.
	post("/api/subscribe", map[string]any{"user": "u7", "channel": "own.x"})
	apiPublish(t, srv, "news.u7", "live")
	testutil.Eventually(t, 5*time.Second, func() bool { return news.len() == 1 }, "the server subscription's message")

	// A reconnect restores it with since: what was published meanwhile is
	// recovered, once.
	post("/api/disconnect", map[string]any{"user": "u7", "code": 4000})
	apiPublish(t, srv, "news.u7", "while away")
	testutil.Eventually(t, 10*time.Second, func() bool {
		for _, e := range evs.of(client.EventRecovered) {
			if e.Channel == "news.u7" {
				return news.len() == 2
			}
		}
		return false
	}, "news.u7 recovered after the reconnect")
	if m := news.snapshot(); m[0].Offset != 2 || m[1].Offset != 3 || string(m[1].Data) != `"while away"` {
		t.Fatalf("messages %v", m)
	}

	post("/api/unsubscribe", map[string]any{"user": "u7", "channel": "news.u7"})
	testutil.Eventually(t, 5*time.Second, func() bool { return len(evs.of(client.EventUnsubscribed)) == 1 }, "EventUnsubscribed")
	if e := evs.of(client.EventUnsubscribed)[0]; e.Channel != "news.u7" || e.Reason != "server" || e.Offset != 3 {
		t.Fatalf("EventUnsubscribed %+v", e.Event)
	}
	if c.Subscription("news.u7") != nil {
		t.Fatal("the subscription outlived the server's unsubscribe")
	}
	apiPublish(t, srv, "news.u7", "after")

	// Subscribed again by the server, then ended by the client.
	post("/api/subscribe", map[string]any{"user": "u7", "channel": "news.u7"})
	testutil.Eventually(t, 5*time.Second, func() bool { return c.Subscription("news.u7") != nil }, "subscribed again")
	c.Subscription("news.u7").Unsubscribe()
	apiPublish(t, srv, "news.u7", "after the client's unsubscribe")
	apiPublish(t, srv, "own.x", "own")
	testutil.Eventually(t, 5*time.Second, func() bool { return own.len() == 1 }, "the own channel's message")
	if n := news.len(); n != 2 {
		t.Fatalf("%d messages of news.u7, want 2: %v", n, news.snapshot())
	}
	if n := len(evs.of(client.EventSubscribed)); n != 2 {
		t.Fatalf("%d EventSubscribed, want 2:%s", n, evs.String())
	}
}
