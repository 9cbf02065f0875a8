package client

import (
	"context"
	"net/url"
	"testing"
	"time"

	"tether/internal/wsframe"
)

var benchMessage = []byte(`{"op":"message","channel":"scores.m1","offset":12345,"data":{"home":"Lyon","away":"Nantes","score":"1-0"}}`)

// startBlast connects a client connection to a fake server that then
// writes benchMessage over and over, from one pre-encoded batch so that
// the server allocates nothing per message. The writer stops when the test
// closes the connection.
func startBlast(t testing.TB) *wsConn {
	fs := startFakeServer(t, false)
	u, err := url.Parse(fs.url())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := handshake(ctx, u, "", &Options{})
	if err != nil {
		t.Fatal(err)
	}
	fc := fs.next()
	var batch []byte
	for range 256 {
		batch = wsframe.AppendFrame(batch, wsframe.OpText, true, benchMessage)
	}
	fc.nc.SetWriteDeadline(time.Time{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if _, err := fc.nc.Write(batch); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		conn.ws.CloseNow()
		fc.nc.Close()
		<-done
	})
	return conn
}

// BenchmarkRead reads messages from a real loopback socket through the
// WebSocket library into the connection's reused buffer.
func BenchmarkRead(b *testing.B) {
	conn := startBlast(b)
	b.SetBytes(int64(len(benchMessage)))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := conn.read(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}
