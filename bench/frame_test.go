package bench

import (
	"bytes"
	"strings"
	"testing"
)

func TestFrameRoundTripSplit(t *testing.T) {
	// Frames of every length class, fed split at every point, decode to
	// the payloads that were encoded (the server side does not mask; the
	// client side does; the decoder accepts both).
	var stream []byte
	var want [][]byte
	for _, n := range []int{0, 1, 125, 126, 200, 65535, 65536, 70000} {
		p := bytes.Repeat([]byte{byte('a' + n%26)}, n)
		want = append(want, p)
		if n%2 == 0 {
			stream = append(stream, serverFrame(wsText, p)...)
		} else {
			stream = append(stream, appendClientFrame(nil, wsText, p, [4]byte{1, 2, 3, 4})...)
		}
	}
	for _, split := range []int{1, 2, 3, 7, 100, 4096, len(stream)} {
		var got [][]byte
		var buf []byte
		for off := 0; off < len(stream); off += split {
			buf = append(buf, stream[off:min(off+split, len(stream))]...)
			for {
				h, n, err := parseFrameHeader(buf)
				if err != nil {
					t.Fatal(err)
				}
				if n == 0 {
					break
				}
				p := append([]byte(nil), buf[n:n+h.length]...)
				if h.masked {
					maskBytes(p, h.mask)
				}
				got = append(got, p)
				buf = buf[n+h.length:]
			}
		}
		if len(got) != len(want) {
			t.Fatalf("split %d: %d frames, want %d", split, len(got), len(want))
		}
		for i := range want {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("split %d: frame %d differs", split, i)
			}
		}
	}
}

// serverFrame encodes an unmasked final frame.
func serverFrame(op byte, p []byte) []byte {
	b := appendClientFrame(nil, op, p, [4]byte{})
	// Clear the mask bit and drop the (zero) key.
	hl := 2
	switch b[1] & 0x7F {
	case 126:
		hl = 4
	case 127:
		hl = 10
	}
	b[1] &^= 0x80
	return append(b[:hl:hl], b[hl+4:]...)
}

func TestParseFrameHeaderErrors(t *testing.T) {
	for _, b := range [][]byte{
		{0xC1, 0x00},                           // RSV bit
		{0x89, 126, 0, 200},                    // control frame too long
		{0x09, 0x00},                           // fragmented control frame
		{0x81, 127, 0xFF, 0, 0, 0, 0, 0, 0, 0}, // too large
	} {
		if _, _, err := parseFrameHeader(b); err == nil {
			t.Errorf("% x accepted", b)
		}
	}
}

func TestParseHandshake(t *testing.T) {
	acc := wsAccept("dGhlIHNhbXBsZSBub25jZQ==")
	if acc != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" { // RFC 6455's example
		t.Fatalf("accept %q", acc)
	}
	resp := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nsec-websocket-accept: " + acc + "\r\n\r\n\x81\x02hi"
	for cut := 0; cut < len(resp)-4; cut++ {
		if _, n, err := parseHandshake([]byte(resp[:cut]), acc); n != 0 || err != nil {
			t.Fatalf("cut %d: n %d err %v", cut, n, err)
		}
	}
	res, n, err := parseHandshake([]byte(resp), acc)
	if err != nil || res.status != 101 || !res.acceptOK || resp[n:] != "\x81\x02hi" {
		t.Fatalf("%+v %d %v", res, n, err)
	}
	res, _, err = parseHandshake([]byte("HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n"), acc)
	if err != nil || res.status != 503 || res.retryAfter != 7 {
		t.Fatalf("%+v %v", res, err)
	}
	if _, _, err := parseHandshake([]byte("garbage\r\n\r\n"), acc); err == nil {
		t.Fatal("garbage accepted")
	}
	if _, _, err := parseHandshake([]byte(strings.Repeat("x", 20000)), acc); err == nil {
		t.Fatal("endless head accepted")
	}
}

func TestUpgradeRequest(t *testing.T) {
	got := string(appendUpgradeRequest(nil, "h:1", "/ws", "k", "tok"))
	want := "GET /ws HTTP/1.1\r\nHost: h:1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: k\r\nAuthorization: Bearer tok\r\n\r\n"
	if got != want {
		t.Fatalf("got %q", got)
	}
}

func FuzzParseFrameHeader(f *testing.F) {
	f.Add(serverFrame(wsText, []byte(`{"op":"ping"}`)))
	f.Add(appendClientFrame(nil, wsBinary, make([]byte, 300), [4]byte{9, 8, 7, 6}))
	f.Add([]byte{0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, err := parseFrameHeader(b)
		if err != nil || n == 0 {
			return
		}
		if n+h.length > len(b) || h.length < 0 {
			t.Fatalf("header claims %d+%d of %d bytes", n, h.length, len(b))
		}
	})
}

func FuzzParseHandshake(f *testing.F) {
	f.Add([]byte("HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: x\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 503 Service Unavailable\r\nRetry-After: 3\r\n\r\n"))
	f.Add([]byte("HTTP/1.0 4"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, n, _ := parseHandshake(b, "x")
		if n > len(b) {
			t.Fatalf("n %d > %d", n, len(b))
		}
	})
}
