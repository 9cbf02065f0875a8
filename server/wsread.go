package server

import (
	"math"
	"sync"
	"unicode/utf8"

	"tether/internal/wsframe"
)

// wsHandler receives what a wsReader reads. Its methods run on the
// goroutine that calls feed, during the call; a payload passed to them is
// valid only until the method returns (it aliases the engine's read buffer
// or a pooled buffer), so whatever outlives the call is copied. An error
// returned by a method stops the reader: feed returns it unchanged, and
// every later feed returns it again.
type wsHandler interface {
	// wsFrame is called for every frame, data or control, once its header
	// has passed every check of RFC 6455 and before its payload is read.
	// This is where the caller counts frames against the client's rate:
	// pings, pongs and the fragments of a message count like any frame.
	wsFrame(h wsframe.Header) error
	// wsMessage is called with each complete text or binary message; a
	// text message is valid UTF-8.
	wsMessage(op wsframe.Opcode, msg []byte) error
	// wsControl is called with each ping, pong and close frame and its
	// unmasked payload (at most 125 bytes). A close payload has passed
	// wsframe.DecodeClose (so decoding it again cannot fail); after a close
	// frame the reader reads nothing more. Answering a ping (or not, when
	// the client pings too fast) and answering a close are the caller's.
	wsControl(op wsframe.Opcode, payload []byte) error
}

// wsReader is the server's read side of RFC 6455: it turns the bytes a
// client sends, handed over by the engine in pieces of any size, into
// messages and control frames for a wsHandler, and refuses every frame or
// frame sequence RFC 6455 forbids. feed returns the reason as a
// *wsframe.Error; wsframe.CloseCodeOf gives the close code to answer with:
//
//   - 1002 (protocol error): an unmasked frame, a reserved bit or opcode, a
//     fragmented control frame, a control frame over 125 bytes, a length not
//     in its shortest form or with the top bit set (all from
//     wsframe.ParseHeader), a continuation without a message, a new text or
//     binary frame inside a fragmented message, a close payload of 1 byte or
//     with a code that may not be sent;
//   - 1007 (invalid payload): a text message or a close reason that is not
//     UTF-8;
//   - 1009 (too big): a message over maxMessage bytes, decided from the
//     frame header before any of its payload is buffered, so a frame that
//     declares 2^63−1 bytes costs nothing.
//
// Memory: a reader holds no buffer between frames. While a frame is
// unfinished it holds at most the unfinished header (in the struct, ≤ 14
// bytes), the unfinished control frame's payload (≤ 125 bytes, pooled) and
// the unfinished message's payload, which grows only with the bytes received
// and never beyond max(maxMessage, 4 KiB) (the first 4 KiB are pooled). So
// the memory one connection can make the node hold through its reader is at
// most max(maxMessage, 4 KiB) + 125 bytes plus the struct (104 bytes),
// whatever it sends; nothing is queued. A complete frame that arrives in one
// feed is unmasked in place and delivered without a copy or allocation.
//
// A wsReader is not safe for concurrent use; its zero value is not usable:
// create it with newWSReader, or set maxMessage before the first feed (a
// conn embeds its reader to save an allocation).
type wsReader struct {
	// immutable after newWSReader; an int32 packs with the small fields
	// below (a conn embeds its reader: every byte is a byte per connection)
	maxMessage int32

	// owned by the caller of feed
	closed  bool           // a close frame was read; the rest is ignored
	inFrame bool           // cur's payload is being read
	hdrLen  uint8          // bytes of an unfinished header in hdr
	ctrlLen uint8          // payload bytes of an unfinished control frame in ctrl
	msgOp   wsframe.Opcode // opcode of the unfinished message, 0 if none
	hdr     [wsframe.MaxHeaderLen]byte
	err     error          // sticky: the error that stopped the reader
	cur     wsframe.Header // the frame being read, when inFrame
	left    int64          // payload bytes of cur still to come
	maskPos int            // offset in cur's payload, for unmasking
	msg     []byte         // the unfinished message's payload; nil if none
	ctrl    *[wsframe.MaxControlPayload]byte
}

// newWSReader returns a reader that accepts messages of up to maxMessage
// payload bytes (after reassembly); maxMessage must be positive. A bound
// over math.MaxInt32 is math.MaxInt32.
func newWSReader(maxMessage int) *wsReader {
	return &wsReader{maxMessage: wsMaxMessage(maxMessage)}
}

// wsMaxMessage returns maxMessage as a wsReader keeps it.
func wsMaxMessage(maxMessage int) int32 {
	return int32(min(maxMessage, math.MaxInt32))
}

// Pools of the buffers an unfinished frame borrows.
const wsMsgPoolSize = 4 << 10

var (
	wsMsgPool  = sync.Pool{New: func() any { return new([wsMsgPoolSize]byte) }}
	wsCtrlPool = sync.Pool{New: func() any { return new([wsframe.MaxControlPayload]byte) }}
)

// feed reads data, the next bytes from the client, and calls h for every
// frame and message that data completes. data is modified (unmasked in
// place) and not retained: the bytes of a frame that data leaves unfinished
// are copied. feed returns nil when data is used up, a *wsframe.Error when
// the client broke RFC 6455, or the first error a method of h returned;
// after an error it returns the same error without reading. After a close
// frame it ignores everything.
func (r *wsReader) feed(data []byte, h wsHandler) error {
	if r.err != nil {
		return r.err
	}
	for !r.closed {
		if !r.inFrame {
			if len(data) == 0 {
				return nil
			}
			n, err := r.readHeader(data)
			if err == wsframe.ErrShort {
				return nil // data went into r.hdr
			}
			if err == nil {
				err = r.begin(h)
			}
			if err != nil {
				return r.fail(err)
			}
			data = data[n:]
			if r.left <= int64(len(data)) && r.whole() {
				// Fast path: the whole frame is here; no copy.
				p := data[:r.left]
				data = data[r.left:]
				wsframe.Mask(p, r.cur.Key, 0)
				r.inFrame = false
				if err := r.deliver(r.cur.Opcode, p, h); err != nil {
					return r.fail(err)
				}
				continue
			}
			if op := r.cur.Opcode; op == wsframe.OpText || op == wsframe.OpBinary {
				r.msgOp = op
			}
		}
		if len(data) == 0 && r.left > 0 {
			return nil
		}
		p := data[:min(int64(len(data)), r.left)]
		data = data[len(p):]
		r.maskPos = wsframe.Mask(p, r.cur.Key, r.maskPos)
		if r.cur.Opcode.IsControl() {
			r.appendControl(p)
		} else {
			r.appendMessage(p)
		}
		r.left -= int64(len(p))
		if r.left > 0 {
			return nil
		}
		r.inFrame = false
		if err := r.endFrame(h); err != nil {
			return r.fail(err)
		}
	}
	return nil
}

// readHeader parses the header at the start of r.hdr[:r.hdrLen] followed
// by data into r.cur, and returns how many bytes of data it used. On
// wsframe.ErrShort all of data is kept in r.hdr.
func (r *wsReader) readHeader(data []byte) (int, error) {
	if r.hdrLen == 0 {
		h, n, err := wsframe.ParseHeader(data, wsframe.FromClient)
		if err == wsframe.ErrShort {
			r.hdrLen = uint8(copy(r.hdr[:], data)) // data is shorter than a header
		}
		r.cur = h
		return n, err
	}
	had := int(r.hdrLen)
	k := copy(r.hdr[had:], data)
	h, n, err := wsframe.ParseHeader(r.hdr[:had+k], wsframe.FromClient)
	if err == wsframe.ErrShort {
		r.hdrLen += uint8(k) // k == len(data): r.hdr has room for any header
		return k, err
	}
	r.hdrLen = 0
	r.cur = h
	return n - had, err
}

// begin checks the frame r.cur against the frames before it and the size
// bound, tells h, and starts reading its payload.
func (r *wsReader) begin(h wsHandler) error {
	switch r.cur.Opcode {
	case wsframe.OpText, wsframe.OpBinary:
		if r.msgOp != 0 {
			return wsframe.ErrInterleaved
		}
	case wsframe.OpContinuation:
		if r.msgOp == 0 {
			return wsframe.ErrContinuationWithoutStart
		}
	}
	if !r.cur.Opcode.IsControl() && r.cur.Length > int64(int(r.maxMessage)-len(r.msg)) {
		return wsframe.ErrTooBig
	}
	r.inFrame = true
	r.left = r.cur.Length
	r.maskPos = 0
	return h.wsFrame(r.cur)
}

// whole reports whether r.cur, once its payload is here, is a whole
// message or control frame by itself.
func (r *wsReader) whole() bool {
	return r.cur.Opcode.IsControl() || r.cur.Fin && r.cur.Opcode != wsframe.OpContinuation
}

// endFrame acts on the frame r.cur whose payload has been buffered.
func (r *wsReader) endFrame(h wsHandler) error {
	if r.cur.Opcode.IsControl() {
		var p []byte
		if r.ctrl != nil {
			p = r.ctrl[:r.ctrlLen]
		}
		err := r.deliver(r.cur.Opcode, p, h)
		r.releaseControl()
		return err
	}
	if !r.cur.Fin {
		return nil
	}
	op := r.msgOp
	r.msgOp = 0
	err := r.deliver(op, r.msg, h)
	r.releaseMessage()
	return err
}

// deliver checks a complete message or control frame's payload and hands
// it to h.
func (r *wsReader) deliver(op wsframe.Opcode, p []byte, h wsHandler) error {
	switch op {
	case wsframe.OpText:
		if !utf8.Valid(p) {
			return wsframe.ErrInvalidUTF8
		}
		return h.wsMessage(op, p)
	case wsframe.OpBinary:
		return h.wsMessage(op, p)
	case wsframe.OpClose:
		if _, _, err := wsframe.DecodeClose(p); err != nil {
			return err
		}
		r.closed = true
	}
	return h.wsControl(op, p)
}

// appendControl buffers payload bytes of an unfinished control frame.
func (r *wsReader) appendControl(p []byte) {
	if len(p) == 0 {
		return
	}
	if r.ctrl == nil {
		r.ctrl = wsCtrlPool.Get().(*[wsframe.MaxControlPayload]byte)
	}
	r.ctrlLen += uint8(copy(r.ctrl[r.ctrlLen:], p)) // begin bounded the frame to 125 bytes
}

// appendMessage buffers payload bytes of an unfinished message. The buffer
// grows with the bytes received, never beyond the end of the current frame,
// which begin bounded by maxMessage.
func (r *wsReader) appendMessage(p []byte) {
	need := len(r.msg) + len(p)
	if need > cap(r.msg) {
		frameEnd := len(r.msg) + int(r.left) // r.left still counts p
		var nb []byte
		if r.msg == nil && frameEnd <= wsMsgPoolSize {
			nb = wsMsgPool.Get().(*[wsMsgPoolSize]byte)[:0]
		} else {
			nb = make([]byte, 0, min(max(2*cap(r.msg), need, 512), frameEnd))
		}
		nb = append(nb, r.msg...)
		r.releaseMessage()
		r.msg = nb
	}
	r.msg = append(r.msg, p...)
}

// releaseMessage drops the message buffer, giving a pooled one back.
func (r *wsReader) releaseMessage() {
	if cap(r.msg) == wsMsgPoolSize {
		wsMsgPool.Put((*[wsMsgPoolSize]byte)(r.msg[:wsMsgPoolSize]))
	}
	r.msg = nil
}

// releaseControl gives the control frame buffer back.
func (r *wsReader) releaseControl() {
	if r.ctrl != nil {
		wsCtrlPool.Put(r.ctrl)
		r.ctrl = nil
	}
	r.ctrlLen = 0
}

// fail stops the reader with err and gives its buffers back.
func (r *wsReader) fail(err error) error {
	r.err = err
	r.release()
	return err
}

// release gives back the buffers of an unfinished frame and message. The
// connection calls it when it closes; feed ignores what it gets after.
func (r *wsReader) release() {
	r.closed = true
	r.releaseMessage()
	r.releaseControl()
}

// buffered returns the bytes of buffer the reader holds now, for tests
// and metrics.
func (r *wsReader) buffered() int {
	n := cap(r.msg)
	if r.ctrl != nil {
		n += len(r.ctrl)
	}
	return n
}
