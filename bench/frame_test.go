package bench

import (
	"bytes"
	"strings"
	"testing"

	"tether/internal/wsframe"
)

func TestFrameRoundTripSplit(t *testing.T) {
	// Frames of every length class, fed split at every point, decode to
	// the payloads that were encoded.
	var stream []byte
	var want [][]byte
	for _, n := range []int{0, 1, 125, 126, 200, 65535, 65536, 70000} {
		p := bytes.Repeat([]byte{byte('a' + n%26)}, n)
		want = append(want, p)
		stream = append(stream, serverFrame(wsframe.OpText, p)...)
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
				got = append(got, append([]byte(nil), buf[n:n+int(h.Length)]...))
				buf = buf[n+int(h.Length):]
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
func serverFrame(op wsframe.Opcode, p []byte) []byte {
	return wsframe.AppendFrame(nil, op, true, p)
}

func TestParseFrameHeaderErrors(t *testing.T) {
	for _, b := range [][]byte{
		{0xC1, 0x00},                               // RSV bit
		{0x89, 126, 0, 200},                        // control frame too long
		{0x09, 0x00},                               // fragmented control frame
		{0x81, 127, 0, 0, 0, 0, 0x10, 0, 0, 0},     // too large
		{0x81, 0x81, 1, 2, 3, 4, 'x'},              // masked: servers never mask
		{0x81, 126, 0, 5, 'h', 'e', 'l', 'l', 'o'}, // length not in its shortest form
	} {
		if _, _, err := parseFrameHeader(b); err == nil {
			t.Errorf("% x accepted", b)
		}
	}
}

func TestParseHandshake(t *testing.T) {
	acc := wsframe.AcceptKey("dGhlIHNhbXBsZSBub25jZQ==")
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
	f.Add(serverFrame(wsframe.OpText, []byte(`{"op":"ping"}`)))
	f.Add(serverFrame(wsframe.OpBinary, make([]byte, 300)))
	f.Add([]byte{0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, err := parseFrameHeader(b)
		if err != nil || n == 0 {
			return
		}
		if int64(n)+h.Length > int64(len(b)) || h.Length < 0 {
			t.Fatalf("header claims %d+%d of %d bytes", n, h.Length, len(b))
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
