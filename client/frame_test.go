package client

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// frames concatenates unmasked server frames.
func frames(fs ...[]byte) []byte { return bytes.Join(fs, nil) }

func frame(fin bool, op byte, payload string) []byte {
	b := appendFrame(nil, op, []byte(payload), false, [4]byte{})
	if !fin {
		b[0] &^= 0x80
	}
	return b
}

func TestFrameReader(t *testing.T) {
	type result struct {
		op      byte
		payload string
	}
	f := func(name string, in []byte, want []result, wantErr error) {
		t.Helper()
		fr := &frameReader{r: bytes.NewReader(in), maxSize: 1000}
		var got []result
		var err error
		for {
			var op byte
			var p []byte
			op, p, err = fr.next()
			if err != nil {
				break
			}
			got = append(got, result{op, string(p)})
		}
		if len(got) != len(want) {
			t.Fatalf("%s: got %v, want %v (err %v)", name, got, want, err)
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("%s: frame %d is %v, want %v", name, i, got[i], want[i])
			}
		}
		if !errors.Is(err, wantErr) {
			t.Fatalf("%s: error %v, want %v", name, err, wantErr)
		}
	}
	f("text", frame(true, opText, `{"op":"ping"}`), []result{{opText, `{"op":"ping"}`}}, io.EOF)
	f("empty", frame(true, opText, ""), []result{{opText, ""}}, io.EOF)
	long := strings.Repeat("x", 300)
	f("16-bit length", frame(true, opText, long), []result{{opText, long}}, io.EOF)
	f("fragmented with a ping between",
		frames(frame(false, opText, "ab"), frame(true, opPing, "p"), frame(false, opContinuation, "cd"), frame(true, opContinuation, "ef")),
		[]result{{opPing, "p"}, {opText, "abcdef"}}, io.EOF)
	f("close", frame(true, opClose, "\x03\xe8bye"), []result{{opClose, "\x03\xe8bye"}}, io.EOF)
	f("truncated header", []byte{0x81}, nil, io.ErrUnexpectedEOF)
	f("truncated payload", frame(true, opText, "hello")[:4], nil, io.ErrUnexpectedEOF)
	f("reserved bits", []byte{0xC1, 0x00}, nil, errFrame)
	f("unknown opcode", []byte{0x83, 0x00}, nil, errFrame)
	f("masked from a server", []byte{0x81, 0x80, 1, 2, 3, 4}, nil, errFrame)
	f("fragmented control", frame(false, opPing, ""), nil, errFrame)
	f("oversized control", frame(true, opPing, strings.Repeat("x", 126)), nil, errFrame)
	f("one-byte close", frame(true, opClose, "x"), nil, errFrame)
	f("continuation first", frame(true, opContinuation, "x"), nil, errFrame)
	f("text inside a fragmented message", frames(frame(false, opText, "a"), frame(true, opText, "b")), nil, errFrame)
	f("non-minimal 16-bit length", []byte{0x81, 126, 0, 5, 'h', 'e', 'l', 'l', 'o'}, nil, errFrame)
	f("non-minimal 64-bit length", []byte{0x81, 127, 0, 0, 0, 0, 0, 0, 0, 5}, nil, errFrame)
	f("64-bit length with the high bit", []byte{0x81, 127, 0x80, 0, 0, 0, 0, 0, 0, 0}, nil, errFrame)
	f("too large", frame(true, opText, strings.Repeat("x", 1001)), nil, errTooBig)
	f("too large across fragments", frames(frame(false, opText, strings.Repeat("x", 600)), frame(true, opContinuation, strings.Repeat("x", 600))), nil, errTooBig)
	f("invalid utf-8", frame(true, opText, "\xff"), nil, errInvalidUTF8)
	f("binary may be anything", frame(true, opBinary, "\xff"), []result{{opBinary, "\xff"}}, io.EOF)
}

func TestAppendFrameMasked(t *testing.T) {
	key := [4]byte{1, 2, 3, 4}
	for _, n := range []int{0, 125, 126, 0xFFFF, 0x10000} {
		p := bytes.Repeat([]byte{'a'}, n)
		b := appendFrame(nil, opText, p, true, key)
		fr := &frameReader{r: bytes.NewReader(b), maxSize: 1 << 20, expectMasked: true}
		op, got, err := fr.next()
		if err != nil || op != opText || !bytes.Equal(got, p) {
			t.Fatalf("length %d: op %d, %d bytes, %v", n, op, len(got), err)
		}
	}
}

func TestClosePayload(t *testing.T) {
	code, reason := parseClose(closePayload(4001, strings.Repeat("r", 200)))
	if code != 4001 || len(reason) != maxControlPayload-2 {
		t.Fatalf("got %d %q", code, reason)
	}
	if code, _ := parseClose(nil); code != closeNoStatus {
		t.Fatalf("empty close payload: %d", code)
	}
}

// FuzzFrameReader feeds arbitrary bytes to the frame parser: it must never
// panic, never return more than its bound, and return only valid opcodes
// and UTF-8 text.
func FuzzFrameReader(f *testing.F) {
	f.Add(frame(true, opText, `{"op":"message","channel":"a","offset":1,"data":1}`))
	f.Add(frames(frame(false, opText, "ab"), frame(true, opPing, "p"), frame(true, opContinuation, "cd")))
	f.Add(frame(true, opClose, "\x03\xe8"))
	f.Add(frame(true, opText, strings.Repeat("x", 300)))
	f.Add([]byte{0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0})
	f.Add([]byte{0x81, 0x80, 1, 2, 3, 4})
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, masked := range []bool{false, true} {
			fr := &frameReader{r: bytes.NewReader(in), maxSize: 512, expectMasked: masked}
			for range 64 {
				op, p, err := fr.next()
				if err != nil {
					break
				}
				switch op {
				case opText:
					if !isUTF8(p) {
						t.Fatalf("invalid utf-8 text returned")
					}
				case opBinary:
				case opClose, opPing, opPong:
					if len(p) > maxControlPayload {
						t.Fatalf("control payload of %d bytes", len(p))
					}
				default:
					t.Fatalf("opcode %d returned", op)
				}
				if len(p) > 512 {
					t.Fatalf("payload of %d bytes over the bound", len(p))
				}
			}
		}
	})
}

// FuzzFrameRoundTrip checks that what appendFrame writes (masked, as the
// client sends it) parses back to the same message.
func FuzzFrameRoundTrip(f *testing.F) {
	f.Add([]byte(`{"op":"publish"}`), uint32(0x01020304), true)
	f.Add(bytes.Repeat([]byte{0xff}, 200), uint32(0), false)
	f.Add([]byte{}, uint32(7), true)
	f.Fuzz(func(t *testing.T, p []byte, k uint32, text bool) {
		op := byte(opBinary)
		if text {
			if !isUTF8(p) {
				return
			}
			op = opText
		}
		key := [4]byte{byte(k), byte(k >> 8), byte(k >> 16), byte(k >> 24)}
		b := appendFrame(nil, op, p, true, key)
		fr := &frameReader{r: bytes.NewReader(b), maxSize: 1 << 20, expectMasked: true}
		gotOp, got, err := fr.next()
		if err != nil || gotOp != op || !bytes.Equal(got, p) {
			t.Fatalf("round trip of %d bytes: op %d, %v", len(p), gotOp, err)
		}
		if _, _, err := fr.next(); err != io.EOF {
			t.Fatalf("trailing bytes: %v", err)
		}
	})
}

func isUTF8(p []byte) bool { return strings.ToValidUTF8(string(p), "\uFFFD") == string(p) }
