//go:build !race

package client

import "testing"

// TestFrameAllocs checks that reading and writing frames allocates nothing
// once the buffers have grown.
func TestFrameAllocs(t *testing.T) {
	fr := &frameReader{r: &loopReader{b: appendFrame(nil, opText, benchMessage, false, [4]byte{})}, maxSize: 1 << 20}
	fr.next()
	if n := testing.AllocsPerRun(1000, func() { fr.next() }); n != 0 {
		t.Errorf("frameReader.next: %v allocations per frame", n)
	}
	buf := make([]byte, 0, 1024)
	if n := testing.AllocsPerRun(1000, func() { buf = appendFrame(buf[:0], opText, benchMessage, true, [4]byte{1, 2, 3, 4}) }); n != 0 {
		t.Errorf("appendFrame: %v allocations per frame", n)
	}
}
