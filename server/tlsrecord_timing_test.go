package server

import (
	"bytes"
	"crypto/tls"
	"strconv"
	"testing"
)

// BenchmarkTLSRecordSeal measures sealing one write into records: a small
// frame and a flusher's coalesced write of 64 KiB.
func BenchmarkTLSRecordSeal(b *testing.B) {
	for _, size := range []int{100, 64 << 10} {
		b.Run(strconv.Itoa(size)+"B", func(b *testing.B) {
			tx, _ := testKeyPair(b, tls.TLS_AES_128_GCM_SHA256)
			p := bytes.Repeat([]byte("m"), size)
			buf := make([]byte, 0, sealedLen(size))
			b.ReportAllocs()
			b.SetBytes(int64(size))
			for b.Loop() {
				out, n := tx.seal(buf[:0], p, recordApplicationData)
				tx.commit(n)
				buf = out
			}
		})
	}
}
