package server

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"

	"tether/internal/wsframe"
)

// wsRecorder is a wsHandler that writes down what it is given.
type wsRecorder struct {
	events   []string
	frames   int
	frameErr error // returned by wsFrame when set
}

func (w *wsRecorder) wsFrame(h wsframe.Header) error {
	w.frames++
	return w.frameErr
}

func (w *wsRecorder) wsMessage(op wsframe.Opcode, msg []byte) error {
	w.events = append(w.events, fmt.Sprintf("%v %q", op, msg))
	return nil
}

func (w *wsRecorder) wsControl(op wsframe.Opcode, p []byte) error {
	w.events = append(w.events, fmt.Sprintf("%v %q", op, p))
	return nil
}

var testMaskKey = [4]byte{0x11, 0x22, 0x33, 0x44}

// cf builds one masked client frame.
func cf(op wsframe.Opcode, fin bool, payload string) []byte {
	return wsframe.AppendMaskedFrame(nil, op, fin, []byte(payload), testMaskKey)
}

// rawHeader builds a masked client frame header declaring length bytes,
// without any check, followed by no payload.
func rawHeader(b0 byte, length uint64) []byte {
	h := []byte{b0, 0x80 | 127}
	h = binary.BigEndian.AppendUint64(h, length)
	return append(h, testMaskKey[:]...)
}

func cat(frames ...[]byte) []byte { return bytes.Join(frames, nil) }

// feedAll feeds stream in pieces of the given sizes (cycled; nil means one
// piece), copying it first since feed unmasks in place.
func feedAll(r *wsReader, h wsHandler, stream []byte, sizes []int) error {
	data := append([]byte(nil), stream...)
	if len(sizes) == 0 {
		return r.feed(data, h)
	}
	for i := 0; len(data) > 0; i++ {
		n := min(sizes[i%len(sizes)], len(data))
		if err := r.feed(data[:n], h); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

// TestWSReaderRules gives the reader one stream per rule and checks the
// events before the failure and the close code of the failure, fed at once
// and fed byte by byte.
func TestWSReaderRules(t *testing.T) {
	long := strings.Repeat("x", 200)
	close1000 := string(wsframe.AppendClose(nil, 1000, "bye"))
	f := func(name string, stream []byte, wantCode int, want ...string) {
		t.Helper()
		for _, sizes := range [][]int{nil, {1}, {3, 7}} {
			r := newWSReader(1000)
			rec := &wsRecorder{}
			err := feedAll(r, rec, stream, sizes)
			if code := wsframe.CloseCodeOf(err); code != wantCode || (err != nil) != (wantCode != 0) {
				t.Errorf("%s (pieces %v): err %v, want close %d", name, sizes, err, wantCode)
			}
			if strings.Join(rec.events, "|") != strings.Join(want, "|") {
				t.Errorf("%s (pieces %v): events %q, want %q", name, sizes, rec.events, want)
			}
			if wantCode != 0 && r.buffered() != 0 {
				t.Errorf("%s: holds %d bytes after failing", name, r.buffered())
			}
		}
	}
	// Valid streams.
	f("text", cf(wsframe.OpText, true, "hello"), 0, `text "hello"`)
	f("binary delivered", cf(wsframe.OpBinary, true, "\xff\x00"), 0, `binary "\xff\x00"`)
	f("empty text", cf(wsframe.OpText, true, ""), 0, `text ""`)
	f("two texts", cat(cf(wsframe.OpText, true, "a"), cf(wsframe.OpText, true, "b")), 0, `text "a"`, `text "b"`)
	f("long text", cf(wsframe.OpText, true, long), 0, fmt.Sprintf("text %q", long))
	f("fragmented", cat(cf(wsframe.OpText, false, "he"), cf(wsframe.OpContinuation, false, ""), cf(wsframe.OpContinuation, true, "llo")), 0, `text "hello"`)
	f("ping inside a fragmented message",
		cat(cf(wsframe.OpText, false, "he"), cf(wsframe.OpPing, true, "p"), cf(wsframe.OpContinuation, true, "llo")), 0,
		`ping "p"`, `text "hello"`)
	f("pong", cf(wsframe.OpPong, true, "x"), 0, `pong "x"`)
	f("ping 125", cf(wsframe.OpPing, true, long[:125]), 0, fmt.Sprintf("ping %q", long[:125]))
	f("utf-8 split across fragments", cat(cf(wsframe.OpText, false, "\xc3"), cf(wsframe.OpContinuation, true, "\xa9")), 0, `text "é"`)
	f("message of exactly the limit", cf(wsframe.OpText, true, strings.Repeat("y", 1000)), 0, fmt.Sprintf("text %q", strings.Repeat("y", 1000)))
	f("empty close", cf(wsframe.OpClose, true, ""), 0, `close ""`)
	f("close, then nothing is read", cat(cf(wsframe.OpClose, true, close1000), cf(wsframe.OpText, true, "after"), []byte{0xFF}), 0,
		fmt.Sprintf("close %q", close1000))
	f("close 4001", cf(wsframe.OpClose, true, string(wsframe.AppendClose(nil, 4001, ""))), 0, `close "\x0f\xa1"`)

	// 1002: header rules (wsframe.ParseHeader).
	f("unmasked", cat(cf(wsframe.OpText, true, "a"), wsframe.AppendFrame(nil, wsframe.OpText, true, []byte("b"))), 1002, `text "a"`)
	f("rsv1", []byte{0xC1, 0x80, 1, 2, 3, 4}, 1002)
	f("reserved opcode 3", cf(3, true, ""), 1002)
	f("reserved opcode 0xB", cf(0xB, true, ""), 1002)
	f("fragmented ping", cf(wsframe.OpPing, false, ""), 1002)
	f("ping of 126 bytes", cf(wsframe.OpPing, true, long[:126]), 1002)
	f("non-minimal 16-bit length", []byte{0x81, 0x80 | 126, 0, 5, 1, 2, 3, 4}, 1002)
	f("non-minimal 64-bit length", rawHeader(0x81, 5), 1002)
	f("64-bit length with the top bit", rawHeader(0x81, 1<<63), 1002)
	// 1002: sequence rules.
	f("continuation without start", cf(wsframe.OpContinuation, true, "x"), 1002)
	f("text inside a fragmented message", cat(cf(wsframe.OpText, false, "a"), cf(wsframe.OpText, true, "b")), 1002)
	f("binary inside a fragmented message", cat(cf(wsframe.OpText, false, "a"), cf(wsframe.OpBinary, false, "b")), 1002)
	f("continuation after a finished message", cat(cf(wsframe.OpText, true, "a"), cf(wsframe.OpContinuation, true, "b")), 1002, `text "a"`)
	// 1002: close payloads.
	f("close of 1 byte", cf(wsframe.OpClose, true, "\x03"), 1002)
	f("close 1005", cf(wsframe.OpClose, true, "\x03\xed"), 1002)
	f("close 1006", cf(wsframe.OpClose, true, "\x03\xee"), 1002)
	f("close 999", cf(wsframe.OpClose, true, "\x03\xe7"), 1002)
	f("close 5000", cf(wsframe.OpClose, true, "\x13\x88"), 1002)
	// 1007.
	f("text not utf-8", cf(wsframe.OpText, true, "a\xffb"), 1007)
	f("fragmented text not utf-8", cat(cf(wsframe.OpText, false, "a"), cf(wsframe.OpContinuation, true, "\xc3")), 1007)
	f("close reason not utf-8", cf(wsframe.OpClose, true, "\x03\xe8\xff"), 1007)
	// 1009, decided from the header.
	f("text over the limit", cf(wsframe.OpText, true, strings.Repeat("y", 1001)), 1009)
	f("fragments over the limit", cat(cf(wsframe.OpText, false, strings.Repeat("y", 600)), cf(wsframe.OpContinuation, true, strings.Repeat("y", 401))), 1009)
	f("continuation of 2^63-6 after a fragment", cat(cf(wsframe.OpText, false, "a"), rawHeader(0x80, 1<<63-6)), 1009)
	f("text of 2^63-1", rawHeader(0x81, 1<<63-1), 1009)
}

// TestWSReaderSticky checks that an error stops the reader for good, and
// that an error from the handler stops it too.
func TestWSReaderSticky(t *testing.T) {
	r := newWSReader(100)
	rec := &wsRecorder{}
	err := feedAll(r, rec, cf(wsframe.OpContinuation, true, ""), nil)
	if !errors.Is(err, wsframe.ErrContinuationWithoutStart) {
		t.Fatalf("err %v", err)
	}
	if err2 := feedAll(r, rec, cf(wsframe.OpText, true, "a"), nil); err2 != err || len(rec.events) != 0 {
		t.Fatalf("second feed: %v, events %q", err2, rec.events)
	}

	errRate := errors.New("rate")
	r = newWSReader(100)
	rec = &wsRecorder{frameErr: errRate}
	if err := feedAll(r, rec, cf(wsframe.OpPing, true, "a"), nil); err != errRate || len(rec.events) != 0 || rec.frames != 1 {
		t.Fatalf("handler error: %v, events %q, frames %d", err, rec.events, rec.frames)
	}
}

// TestWSReaderCountsEveryFrame checks that control frames and fragments
// reach wsFrame, so the caller can rate-limit them.
func TestWSReaderCountsEveryFrame(t *testing.T) {
	r := newWSReader(100)
	rec := &wsRecorder{}
	stream := cat(cf(wsframe.OpPing, true, ""), cf(wsframe.OpPong, true, ""), cf(wsframe.OpText, false, "a"),
		cf(wsframe.OpContinuation, true, "b"), cf(wsframe.OpClose, true, ""))
	if err := feedAll(r, rec, stream, []int{2}); err != nil || rec.frames != 5 {
		t.Fatalf("err %v, frames %d, want 5", err, rec.frames)
	}
}

// TestWSReaderMemoryBound feeds the unfinished frames that make a reader
// hold the most, a byte at a time, and checks the documented bound.
func TestWSReaderMemoryBound(t *testing.T) {
	for _, limit := range []int{100, 64 << 10} {
		bound := max(limit, wsMsgPoolSize) + wsframe.MaxControlPayload
		r := newWSReader(limit)
		rec := &wsRecorder{}
		// An open message one byte short of the limit, then a ping one
		// byte short of its end.
		stream := cat(cf(wsframe.OpText, false, strings.Repeat("a", limit-1)),
			cf(wsframe.OpPing, true, strings.Repeat("p", 125))[:6+124])
		peak := 0
		data := append([]byte(nil), stream...)
		for i := range data {
			if err := r.feed(data[i:i+1], rec); err != nil {
				t.Fatal(err)
			}
			peak = max(peak, r.buffered())
		}
		if peak > bound {
			t.Errorf("limit %d: reader held %d bytes, bound %d", limit, peak, bound)
		}
		if r.buffered() == 0 {
			t.Errorf("limit %d: the unfinished frames hold nothing?", limit)
		}
		r.release()
		if r.buffered() != 0 {
			t.Errorf("limit %d: %d bytes after release", limit, r.buffered())
		}
	}
	// A frame that declares the limit and sends one byte holds little.
	r := newWSReader(1 << 20)
	data := append([]byte(nil), cf(wsframe.OpBinary, true, strings.Repeat("z", 1<<20))[:15]...)
	if err := r.feed(data, &wsRecorder{}); err != nil {
		t.Fatal(err)
	}
	if r.buffered() > 4096 {
		t.Errorf("one byte of a 1 MiB frame holds %d bytes", r.buffered())
	}
}

func TestWSReaderAllocs(t *testing.T) {
	frame := cf(wsframe.OpText, true, `{"op":"publish","channel":"a","data":1}`)
	two := cat(frame, cf(wsframe.OpPing, true, "x"))
	buf := make([]byte, len(two))
	r := newWSReader(1000)
	rec := &wsRecorder{events: make([]string, 0, 1)}
	h := &nopWSHandler{}
	for _, tc := range []struct {
		name   string
		stream []byte
	}{{"text frame", frame}, {"text and ping", two}} {
		n := testing.AllocsPerRun(1000, func() {
			copy(buf, tc.stream)
			if err := r.feed(buf[:len(tc.stream)], h); err != nil {
				panic(err)
			}
		})
		if n != 0 {
			t.Errorf("%s: %v allocations per feed", tc.name, n)
		}
	}
	_ = rec
}

// nopWSHandler counts what it gets, without allocating.
type nopWSHandler struct{ frames, messages, controls int }

func (h *nopWSHandler) wsFrame(wsframe.Header) error           { h.frames++; return nil }
func (h *nopWSHandler) wsMessage(wsframe.Opcode, []byte) error { h.messages++; return nil }
func (h *nopWSHandler) wsControl(wsframe.Opcode, []byte) error { h.controls++; return nil }

// FuzzWSReader feeds any stream at once and in pieces: the reader never
// panics, holds no more than its bound, and gives the same events and the
// same error whichever way the stream is cut.
func FuzzWSReader(f *testing.F) {
	f.Add(cat(cf(wsframe.OpText, false, "he"), cf(wsframe.OpPing, true, "p"), cf(wsframe.OpContinuation, true, "llo")), uint8(1))
	f.Add(cat(cf(wsframe.OpText, false, "a"), rawHeader(0x80, 1<<63-6)), uint8(3))
	f.Add(cat(cf(wsframe.OpBinary, true, strings.Repeat("b", 300)), cf(wsframe.OpClose, true, "\x03\xe8ok")), uint8(7))
	f.Add(cf(wsframe.OpText, true, "a\xffb"), uint8(2))
	f.Fuzz(func(t *testing.T, stream []byte, cut uint8) {
		const limit = 512
		bound := max(limit, wsMsgPoolSize) + wsframe.MaxControlPayload
		r1, rec1 := newWSReader(limit), &wsRecorder{}
		err1 := feedAll(r1, rec1, stream, nil)
		sizes := []int{1}
		if cut > 1 {
			sizes = []int{int(cut%17) + 1, int(cut/17) + 1}
		}
		r2, rec2 := newWSReader(limit), &wsRecorder{}
		data := append([]byte(nil), stream...)
		var err2 error
		for i := 0; len(data) > 0 && err2 == nil; i++ {
			n := min(sizes[i%len(sizes)], len(data))
			err2 = r2.feed(data[:n], rec2)
			data = data[n:]
			if b := r2.buffered(); b > bound {
				t.Fatalf("reader holds %d bytes, bound %d", b, bound)
			}
		}
		if err1 != err2 {
			t.Fatalf("at once: %v; in pieces of %v: %v", err1, sizes, err2)
		}
		if err1 != nil && wsframe.CloseCodeOf(err1) == 0 {
			t.Fatalf("error without a close code: %v", err1)
		}
		if strings.Join(rec1.events, "|") != strings.Join(rec2.events, "|") || rec1.frames != rec2.frames {
			t.Fatalf("events differ:\n%q\n%q", rec1.events, rec2.events)
		}
		r1.release()
		r2.release()
	})
}
