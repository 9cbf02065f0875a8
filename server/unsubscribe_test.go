package server

import (
	"testing"

	"tether/internal/proto"
)

func TestAppendUnsubscribedBy(t *testing.T) {
	got := string(appendUnsubscribedBy(nil, `a"b`, proto.ReasonForbidden))
	want := `{"op":"unsubscribed","channel":"a\"b","reason":"forbidden"}`
	if got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}
