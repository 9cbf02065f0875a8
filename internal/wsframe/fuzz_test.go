package wsframe

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzParseHeader checks that ParseHeader never panics, that a header it
// accepts re-encodes to the same bytes (it accepts only the shortest
// encoding), and that ErrShort is only returned while a longer buffer could
// still hold a header.
func FuzzParseHeader(f *testing.F) {
	f.Add([]byte{0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58}, uint8(FromClient))
	f.Add([]byte{0x82, 127, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfa}, uint8(FromServer))
	f.Add([]byte{0x89, 0xfe, 0, 126}, uint8(FromClient))
	f.Add([]byte{0x01, 126, 0, 125}, uint8(0))
	f.Fuzz(func(t *testing.T, buf []byte, from uint8) {
		h, n, err := ParseHeader(buf, Sender(from))
		if errors.Is(err, ErrShort) {
			if len(buf) >= MaxHeaderLen {
				t.Fatalf("ErrShort with %d bytes", len(buf))
			}
			return
		}
		if err != nil {
			if CloseCodeOf(err) == 0 {
				t.Fatalf("error without a close code: %v", err)
			}
			return
		}
		if n < 2 || n > MaxHeaderLen || n > len(buf) || h.Length < 0 {
			t.Fatalf("n=%d len=%d h=%+v", n, len(buf), h)
		}
		if got := AppendHeader(nil, h); !bytes.Equal(got, buf[:n]) {
			t.Fatalf("re-encoded % x, parsed % x", got, buf[:n])
		}
		// Any prefix is short, never an error of a different kind.
		for i := range n {
			if _, _, err := ParseHeader(buf[:i], Sender(from)); err != ErrShort {
				t.Fatalf("prefix of %d bytes: %v", i, err)
			}
		}
	})
}

// FuzzFrameRoundTrip appends a frame and parses it back: the header and,
// after unmasking, the payload come back unchanged.
func FuzzFrameRoundTrip(f *testing.F) {
	f.Add(uint8(OpText), true, []byte("hello"), true, uint32(0x37fa213d))
	f.Add(uint8(OpBinary), false, bytes.Repeat([]byte{1}, 200), false, uint32(0))
	f.Add(uint8(OpPing), true, []byte{}, true, uint32(1))
	f.Fuzz(func(t *testing.T, op uint8, fin bool, payload []byte, masked bool, key uint32) {
		o := Opcode(op & 0x0F)
		var frame []byte
		k := [4]byte{byte(key >> 24), byte(key >> 16), byte(key >> 8), byte(key)}
		from := FromServer
		if masked {
			from = FromClient
			frame = AppendMaskedFrame(nil, o, fin, payload, k)
		} else {
			frame = AppendFrame(nil, o, fin, payload)
		}
		h, n, err := ParseHeader(frame, from)
		valid := o.String() != "reserved" && (!o.IsControl() || fin && len(payload) <= MaxControlPayload)
		if !valid {
			if err == nil {
				t.Fatalf("accepted %v fin=%v len=%d", o, fin, len(payload))
			}
			return
		}
		if err != nil {
			t.Fatalf("%v fin=%v len=%d: %v", o, fin, len(payload), err)
		}
		want := Header{Fin: fin, Opcode: o, Masked: masked, Length: int64(len(payload))}
		if masked {
			want.Key = k
		}
		if h != want || n+len(payload) != len(frame) {
			t.Fatalf("got %+v n=%d, want %+v", h, n, want)
		}
		p := frame[n:]
		if masked {
			Mask(p, h.Key, 0)
		}
		if !bytes.Equal(p, payload) {
			t.Fatal("payload changed")
		}
	})
}
