package server

import (
	"net"
	"testing"
	"time"

	"tether/internal/wsframe"
)

// TestResetAfterFrameIsReset checks that a client that sends a frame and
// then resets its connection is counted as a reset, not as an end of stream
// ("eof"): the poller sees the frame and the reset in one event. The soak
// found ~1 in 10,000 churn resets counted as eof before the poller reported
// the socket's pending error.
func TestResetAfterFrameIsReset(t *testing.T) {
	ts := startServer(t, Config{})
	const n = 50
	for range n {
		c := mustDial(t, ts.addr)
		if err := c.writeFrame(wsframe.OpText, []byte(`{"op":"pong"}`)); err != nil {
			t.Fatal(err)
		}
		_ = c.conn.(*net.TCPConn).SetLinger(0)
		_ = c.conn.Close()
	}
	eventually(t, 10*time.Second, func() bool {
		return ts.metric(t, `tether_disconnects_total{reason="reset"}`)+ts.metric(t, `tether_disconnects_total{reason="eof"}`) == n
	}, "not every connection was closed")
	if eof := ts.metric(t, `tether_disconnects_total{reason="eof"}`); eof != 0 {
		t.Fatalf("%v of %d client resets counted as eof", eof, n)
	}
}
