package client_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"tether/bus"
	"tether/client"
	"tether/internal/testutil"
	"tether/server"
)

// TestPresence reads a channel's presence and receives its joins and
// leaves through the Go client, against a real node.
func TestPresence(t *testing.T) {
	srv := startServer(t, server.Config{JoinLeave: []string{"chat.*"}}, bus.NewLocal(bus.Config{}))
	url := "ws://" + srv.Addr().String() + "/ws"
	var evs events
	a := dial(t, url, client.Options{OnEvent: evs.add})
	if _, err := a.Subscribe("chat.r", func(client.Message) {}); err != nil {
		t.Fatal(err)
	}
	b := dial(t, url, client.Options{})
	if _, err := b.Subscribe("chat.r", func(client.Message) {}); err != nil {
		t.Fatal(err)
	}
	if !testutil.WaitFor(5*time.Second, func() bool { return len(evs.of(client.EventJoin)) == 2 }) {
		t.Fatalf("joins: %v", evs.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p, err := a.Presence(ctx, "chat.r")
	if err != nil || p.Clients != 2 || p.Users != 2 || len(p.Members) != 2 || p.Truncated {
		t.Fatalf("presence %+v, %v", p, err)
	}
	b.Close()
	if !testutil.WaitFor(5*time.Second, func() bool { return len(evs.of(client.EventLeave)) == 1 }) {
		t.Fatalf("leave: %v", evs.String())
	}
	if l := evs.of(client.EventLeave)[0]; l.Channel != "chat.r" || l.Conn == "" || l.User != l.Conn {
		t.Fatalf("leave event %+v", l.Event)
	}
	_, err = a.Presence(ctx, "news")
	var se *client.Error
	if !errors.As(err, &se) || se.Code != "not_found" {
		t.Fatalf("presence of a channel without presence: %v", err)
	}
}
