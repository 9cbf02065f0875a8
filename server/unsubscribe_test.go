package server

import (
	"testing"

	"tether/bus"
	"tether/internal/proto"
)

func TestAppendUnsubscribedBy(t *testing.T) {
	got := string(appendUnsubscribedBy(nil, `a"b`, proto.ReasonForbidden, bus.Position{}, false))
	want := `{"op":"unsubscribed","channel":"a\"b","reason":"forbidden"}`
	if got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	got = string(appendUnsubscribedBy(nil, "a", proto.ReasonServer, bus.Position{Offset: 44, Epoch: "e1"}, true))
	want = `{"op":"unsubscribed","channel":"a","reason":"server","offset":44,"epoch":"e1"}`
	if got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}
