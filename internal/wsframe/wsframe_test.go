package wsframe

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

func TestParseHeaderRules(t *testing.T) {
	u64 := func(b0, b1 byte, n uint64) []byte {
		return binary.BigEndian.AppendUint64([]byte{b0, b1}, n)
	}
	f := func(name string, buf []byte, from Sender, want error) {
		t.Helper()
		_, _, err := ParseHeader(buf, from)
		if !errors.Is(err, want) {
			t.Errorf("%s: err %v, want %v", name, err, want)
		}
	}
	f("rsv1", []byte{0xC1, 0x80}, FromClient, ErrRSV)
	f("rsv2", []byte{0xA1, 0x80}, FromClient, ErrRSV)
	f("rsv3", []byte{0x91, 0x80}, FromClient, ErrRSV)
	for _, op := range []byte{3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF} {
		f("reserved opcode", []byte{0x80 | op, 0x80}, FromClient, ErrReservedOpcode)
	}
	f("fragmented ping", []byte{0x09, 0x80}, FromClient, ErrFragmentedControl)
	f("fragmented close", []byte{0x08, 0x80}, FromClient, ErrFragmentedControl)
	f("ping 126", []byte{0x89, 0x80 | 126, 0, 126}, FromClient, ErrControlTooLong)
	f("ping 127, short buffer", []byte{0x89, 0x80 | 127}, FromClient, ErrControlTooLong)
	f("unmasked from client", []byte{0x81, 0x05}, FromClient, ErrUnmasked)
	f("masked from server", []byte{0x81, 0x85}, FromServer, ErrMasked)
	f("16-bit length 125", []byte{0x82, 126, 0, 125}, FromServer, ErrNonMinimalLength)
	f("64-bit length 0xFFFF", u64(0x82, 127, 0xFFFF), FromServer, ErrNonMinimalLength)
	f("64-bit length top bit", u64(0x82, 127, 1<<63), FromServer, ErrLengthTopBit)
	f("64-bit length 2^64-1", u64(0x82, 127, 1<<64-1), FromServer, ErrLengthTopBit)
	f("empty", nil, FromClient, ErrShort)
	f("one byte", []byte{0x81}, FromClient, ErrShort)
	f("16-bit length cut", []byte{0x82, 0x80 | 126, 1}, FromClient, ErrShort)
	f("64-bit length cut", []byte{0x82, 0x80 | 127, 0, 0, 0}, FromClient, ErrShort)
	f("key cut", []byte{0x81, 0x85, 1, 2, 3}, FromClient, ErrShort)
	f("ok masked", []byte{0x81, 0x85, 1, 2, 3, 4}, FromClient, nil)
	f("ok unmasked", []byte{0x81, 0x05}, FromServer, nil)
	f("ok empty close", []byte{0x88, 0x80, 1, 2, 3, 4}, FromClient, nil)
	f("ok ping 125", []byte{0x89, 0x80 | 125, 1, 2, 3, 4}, FromClient, nil)
	f("ok 64-bit 2^63-1", u64(0x82, 127, 1<<63-1), FromServer, nil)
	f("ok 64-bit 0x10000", u64(0x80, 127, 0x10000), FromServer, nil)
	f("ok 16-bit 126", []byte{0x01, 126, 0, 126}, FromServer, nil)
}

func TestParseHeaderFields(t *testing.T) {
	buf := []byte{0x01, 0x80 | 126, 0x12, 0x34, 9, 8, 7, 6, 0xEE}
	h, n, err := ParseHeader(buf, FromClient)
	if err != nil {
		t.Fatal(err)
	}
	want := Header{Fin: false, Opcode: OpText, Masked: true, Key: [4]byte{9, 8, 7, 6}, Length: 0x1234}
	if h != want || n != 8 {
		t.Fatalf("got %+v n=%d, want %+v n=8", h, n, want)
	}
}

// TestHeaderRoundTrip appends headers of every length class and parses
// them back.
func TestHeaderRoundTrip(t *testing.T) {
	for _, l := range []int64{0, 1, 125, 126, 127, 0xFFFF, 0x10000, 1 << 32, 1<<63 - 1} {
		for _, masked := range []bool{false, true} {
			h := Header{Fin: true, Opcode: OpBinary, Masked: masked, Length: l}
			if masked {
				h.Key = [4]byte{1, 2, 3, 4}
			}
			b := AppendHeader(nil, h)
			if len(b) != HeaderLen(l, masked) {
				t.Errorf("len %d masked %v: header of %d bytes, HeaderLen says %d", l, masked, len(b), HeaderLen(l, masked))
			}
			from := FromServer
			if masked {
				from = FromClient
			}
			got, n, err := ParseHeader(b, from)
			if err != nil || n != len(b) || got != h {
				t.Errorf("len %d masked %v: got %+v n=%d err=%v", l, masked, got, n, err)
			}
		}
	}
}

func TestAppendFrame(t *testing.T) {
	got := AppendFrame(nil, OpText, true, []byte("hi"))
	if !bytes.Equal(got, []byte{0x81, 2, 'h', 'i'}) {
		t.Errorf("AppendFrame: % x", got)
	}
	got = AppendFrame(nil, OpContinuation, false, nil)
	if !bytes.Equal(got, []byte{0x00, 0}) {
		t.Errorf("AppendFrame non-final: % x", got)
	}
	payload := []byte("Hello")
	// RFC 6455, section 5.7: a masked "Hello".
	got = AppendMaskedFrame(nil, OpText, true, payload, [4]byte{0x37, 0xfa, 0x21, 0x3d})
	want := []byte{0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58}
	if !bytes.Equal(got, want) {
		t.Errorf("AppendMaskedFrame: % x, want % x", got, want)
	}
	if string(payload) != "Hello" {
		t.Errorf("AppendMaskedFrame modified its payload: %q", payload)
	}
}

func maskNaive(p []byte, key [4]byte, pos int) {
	for i := range p {
		p[i] ^= key[(pos+i)&3]
	}
}

func TestMask(t *testing.T) {
	key := [4]byte{0xA1, 0xB2, 0xC3, 0xD4}
	src := make([]byte, 300)
	for i := range src {
		src[i] = byte(i * 7)
	}
	for n := 0; n <= len(src); n += 1 + n/8 {
		for pos := 0; pos < 8; pos++ {
			got := append([]byte(nil), src[:n]...)
			want := append([]byte(nil), src[:n]...)
			next := Mask(got, key, pos)
			maskNaive(want, key, pos)
			if !bytes.Equal(got, want) {
				t.Fatalf("n=%d pos=%d: masks differ", n, pos)
			}
			if next != (pos+n)&3 {
				t.Fatalf("n=%d pos=%d: next %d", n, pos, next)
			}
		}
	}
	// Masking in pieces equals masking at once.
	whole := append([]byte(nil), src...)
	Mask(whole, key, 0)
	pieces := append([]byte(nil), src...)
	pos := 0
	for i := 0; i < len(pieces); {
		j := min(len(pieces), i+1+i%13)
		pos = Mask(pieces[i:j], key, pos)
		i = j
	}
	if !bytes.Equal(whole, pieces) {
		t.Fatal("masking in pieces differs from masking at once")
	}
}

func TestAcceptKey(t *testing.T) {
	// RFC 6455, section 1.3.
	const key, want = "dGhlIHNhbXBsZSBub25jZQ==", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
	if got := AcceptKey(key); got != want {
		t.Errorf("AcceptKey = %q, want %q", got, want)
	}
	if got := AppendAcceptKey([]byte("x"), []byte(key)); string(got) != "x"+want {
		t.Errorf("AppendAcceptKey = %q", got)
	}
}

func TestCloseCodes(t *testing.T) {
	valid := []int{1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4001, 4400, 4999}
	invalid := []int{0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535}
	for _, c := range valid {
		if !ValidCloseCode(c) {
			t.Errorf("ValidCloseCode(%d) = false", c)
		}
	}
	for _, c := range invalid {
		if ValidCloseCode(c) {
			t.Errorf("ValidCloseCode(%d) = true", c)
		}
		if _, _, err := DecodeClose(AppendClose(nil, c, "")); !errors.Is(err, ErrCloseCode) {
			t.Errorf("DecodeClose(%d): err %v", c, err)
		}
	}
}

func TestDecodeClose(t *testing.T) {
	code, reason, err := DecodeClose(nil)
	if code != CloseNoStatus || reason != nil || err != nil {
		t.Errorf("empty: %d %q %v", code, reason, err)
	}
	if _, _, err := DecodeClose([]byte{3}); !errors.Is(err, ErrCloseLength) {
		t.Errorf("1 byte: %v", err)
	}
	if _, _, err := DecodeClose([]byte{0x03, 0xE8, 0xFF}); !errors.Is(err, ErrCloseReason) {
		t.Errorf("bad reason: %v", err)
	}
	code, reason, err = DecodeClose(AppendClose(nil, 4001, "bye"))
	if code != 4001 || string(reason) != "bye" || err != nil {
		t.Errorf("4001 bye: %d %q %v", code, reason, err)
	}
	// A long reason is cut at a rune boundary and stays UTF-8.
	long := string(bytes.Repeat([]byte("é"), 100))
	p := AppendClose(nil, CloseNormal, long)
	if len(p) > MaxControlPayload {
		t.Fatalf("close payload of %d bytes", len(p))
	}
	if _, reason, err := DecodeClose(p); err != nil || len(reason) != 122 {
		t.Errorf("long reason: %d bytes, err %v", len(reason), err)
	}
}

func TestCloseCodeOf(t *testing.T) {
	f := func(err error, want int) {
		t.Helper()
		if got := CloseCodeOf(err); got != want {
			t.Errorf("CloseCodeOf(%v) = %d, want %d", err, got, want)
		}
	}
	f(ErrRSV, CloseProtocolError)
	f(ErrTooBig, CloseTooBig)
	f(ErrInvalidUTF8, CloseInvalidPayload)
	f(ErrCloseReason, CloseInvalidPayload)
	f(ErrShort, 0)
	f(nil, 0)
	f(errors.Join(errors.New("x"), ErrUnmasked), CloseProtocolError)
}

func TestAllocs(t *testing.T) {
	hdr := AppendHeader(nil, Header{Fin: true, Opcode: OpText, Masked: true, Key: [4]byte{1, 2, 3, 4}, Length: 70000})
	dst := make([]byte, 0, 256)
	payload := make([]byte, 100)
	sink := 0
	f := func(name string, fn func()) {
		t.Helper()
		if n := testing.AllocsPerRun(100, fn); n != 0 {
			t.Errorf("%s: %v allocations per run", name, n)
		}
	}
	f("ParseHeader", func() {
		h, n, _ := ParseHeader(hdr, FromClient)
		sink += n + int(h.Length)
	})
	f("ParseHeader short", func() {
		_, _, err := ParseHeader(hdr[:3], FromClient)
		if err != ErrShort {
			panic(err)
		}
	})
	f("AppendHeader", func() { dst = AppendHeader(dst[:0], Header{Opcode: OpText, Length: 70000}) })
	f("AppendFrame", func() { dst = AppendFrame(dst[:0], OpText, true, payload) })
	f("AppendMaskedFrame", func() { dst = AppendMaskedFrame(dst[:0], OpText, true, payload, [4]byte{1, 2, 3, 4}) })
	f("Mask", func() { sink += Mask(payload, [4]byte{1, 2, 3, 4}, 1) })
	f("AppendClose", func() { dst = AppendClose(dst[:0], CloseNormal, "bye") })
	f("DecodeClose", func() {
		c, _, _ := DecodeClose([]byte{0x03, 0xE8, 'o', 'k'})
		sink += c
	})
	key := []byte("dGhlIHNhbXBsZSBub25jZQ==")
	f("AppendAcceptKey", func() { dst = AppendAcceptKey(dst[:0], key) })
	_ = sink
}
