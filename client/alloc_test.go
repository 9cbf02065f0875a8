//go:build !race

package client

import (
	"bytes"
	"context"
	"testing"
)

// TestReadAllocs checks that reading a message from a real socket
// allocates nothing once the read buffer has grown: the library's reader
// with a background context, into the connection's reused buffer.
func TestReadAllocs(t *testing.T) {
	conn := startBlast(t)
	read := func() {
		_, p, err := conn.read(context.Background())
		if err != nil || !bytes.Equal(p, benchMessage) {
			t.Fatalf("read %q, %v", p, err)
		}
	}
	read()
	if n := testing.AllocsPerRun(1000, read); n != 0 {
		t.Errorf("read: %v allocations per message", n)
	}
}
