package client

import (
	"testing"
)

// loopReader returns the same bytes over and over.
type loopReader struct {
	b   []byte
	off int
}

func (r *loopReader) Read(p []byte) (int, error) {
	n := copy(p, r.b[r.off:])
	r.off = (r.off + n) % len(r.b)
	return n, nil
}

var benchMessage = []byte(`{"op":"message","channel":"scores.m1","offset":12345,"data":{"home":"Lyon","away":"Nantes","score":"1-0"}}`)

func BenchmarkFrameReader(b *testing.B) {
	fr := &frameReader{r: &loopReader{b: appendFrame(nil, opText, benchMessage, false, [4]byte{})}, maxSize: 1 << 20}
	b.SetBytes(int64(len(benchMessage)))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := fr.next(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendFrameMasked(b *testing.B) {
	buf := make([]byte, 0, 1024)
	key := [4]byte{1, 2, 3, 4}
	b.SetBytes(int64(len(benchMessage)))
	b.ReportAllocs()
	for b.Loop() {
		buf = appendFrame(buf[:0], opText, benchMessage, true, key)
	}
}
