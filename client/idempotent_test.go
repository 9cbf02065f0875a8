package client_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"tether/bus"
	"tether/client"
	"tether/internal/testutil"
	"tether/server"
)

func TestPublishIdempotent(t *testing.T) {
	testutil.CheckGoroutines(t)
	b := bus.NewLocal(bus.Config{HistorySize: 100, IdempotencyWindow: time.Minute})
	t.Cleanup(func() { b.Close() })
	srv := startServer(t, server.Config{AllowClientPublish: true}, b)
	c := dial(t, wsURL(srv), client.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	off, replayed, err := c.PublishIdempotent(ctx, "orders", "first", "order-17")
	if err != nil || replayed {
		t.Fatalf("first: %d %v %v", off, replayed, err)
	}
	again, replayed, err := c.PublishIdempotent(ctx, "orders", "second", "order-17")
	if err != nil || !replayed || again != off {
		t.Fatalf("again: %d %v %v, first at %d", again, replayed, err, off)
	}
	if next, err := c.Publish(ctx, "orders", "plain"); err != nil || next != off+1 {
		t.Fatalf("plain publish after: %d %v", next, err)
	}
	var pe *client.Error
	if _, _, err := c.PublishIdempotent(ctx, "other", 1, "order-17"); !errors.As(err, &pe) || pe.Code != "conflict" {
		t.Fatalf("same key, other channel: %v", err)
	}
	if _, _, err := c.PublishIdempotent(ctx, "orders", 1, strings.Repeat("k", 129)); err == nil {
		t.Fatal("129-byte key accepted")
	}
}
