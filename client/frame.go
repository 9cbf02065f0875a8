package client

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// WebSocket opcodes (RFC 6455, section 5.2).
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA
)

// maxControlPayload is the largest payload a control frame may carry.
const maxControlPayload = 125

// Close codes the client sends or reacts to (docs/protocol.md).
const (
	closeNormal            = 1000
	closeProtocolError     = 1002
	closeNoStatus          = 1005
	closeAbnormal          = 1006
	closeInvalidPayload    = 1007
	closeTooBig            = 1009
	closeRestart           = 1012
	closeUnauthorized      = 4001
	closeHeartbeatTimeout  = 4008
	closeProtocolViolation = 4400
)

// errFrame marks a malformed frame; the connection is failed with 1002.
var errFrame = errors.New("client: malformed websocket frame")

// errTooBig marks a message over the reader's size bound (close 1009).
var errTooBig = errors.New("client: websocket message too large")

// errInvalidUTF8 marks a text message that is not UTF-8 (close 1007).
var errInvalidUTF8 = errors.New("client: websocket text message is not valid utf-8")

// frameReader parses WebSocket frames from r and reassembles fragmented
// messages. It is used by one goroutine at a time.
type frameReader struct {
	r            io.Reader
	maxSize      int  // bound of a reassembled message's payload
	expectMasked bool // the peer is a client: every frame must be masked

	msgOp  byte   // opcode of the message being reassembled, 0 if none
	msg    []byte // reassembled payload; reused between messages
	ctrl   [maxControlPayload]byte
	header [14]byte
}

// next returns the next complete data message (opText or opBinary) or
// control frame. The payload is valid until the next call. Control frames
// may arrive between the fragments of a data message; they are returned as
// they come and the message's reassembly continues on the next call.
func (fr *frameReader) next() (op byte, payload []byte, err error) {
	for {
		h := fr.header[:2]
		if _, err := io.ReadFull(fr.r, h); err != nil {
			return 0, nil, err
		}
		fin := h[0]&0x80 != 0
		if h[0]&0x70 != 0 {
			return 0, nil, fmt.Errorf("%w: reserved bits set", errFrame)
		}
		op = h[0] & 0x0F
		masked := h[1]&0x80 != 0
		if masked != fr.expectMasked {
			return 0, nil, fmt.Errorf("%w: unexpected mask bit %v", errFrame, masked)
		}
		n := uint64(h[1] & 0x7F)
		switch n {
		case 126:
			if _, err := io.ReadFull(fr.r, fr.header[2:4]); err != nil {
				return 0, nil, unexpectedEOF(err)
			}
			n = uint64(binary.BigEndian.Uint16(fr.header[2:4]))
			if n < 126 {
				return 0, nil, fmt.Errorf("%w: non-minimal length", errFrame)
			}
		case 127:
			if _, err := io.ReadFull(fr.r, fr.header[2:10]); err != nil {
				return 0, nil, unexpectedEOF(err)
			}
			n = binary.BigEndian.Uint64(fr.header[2:10])
			if n>>63 != 0 {
				return 0, nil, fmt.Errorf("%w: length with the high bit set", errFrame)
			}
			if n <= 0xFFFF {
				return 0, nil, fmt.Errorf("%w: non-minimal length", errFrame)
			}
		}
		var key [4]byte
		if masked {
			// Read into the reader's own buffer: a local array handed to
			// an io.Reader would escape, one allocation per frame.
			if _, err := io.ReadFull(fr.r, fr.header[10:14]); err != nil {
				return 0, nil, unexpectedEOF(err)
			}
			key = [4]byte(fr.header[10:14])
		}

		switch op {
		case opClose, opPing, opPong:
			if !fin || n > maxControlPayload {
				return 0, nil, fmt.Errorf("%w: fragmented or oversized control frame", errFrame)
			}
			p := fr.ctrl[:n]
			if _, err := io.ReadFull(fr.r, p); err != nil {
				return 0, nil, unexpectedEOF(err)
			}
			if masked {
				maskBytes(key, p)
			}
			if op == opClose && n == 1 {
				return 0, nil, fmt.Errorf("%w: close frame with a 1-byte payload", errFrame)
			}
			return op, p, nil
		case opText, opBinary:
			if fr.msgOp != 0 {
				return 0, nil, fmt.Errorf("%w: new message inside a fragmented one", errFrame)
			}
			fr.msgOp = op
			fr.msg = fr.msg[:0]
		case opContinuation:
			if fr.msgOp == 0 {
				return 0, nil, fmt.Errorf("%w: continuation without a message", errFrame)
			}
		default:
			return 0, nil, fmt.Errorf("%w: unknown opcode %#x", errFrame, op)
		}

		if n > uint64(fr.maxSize-len(fr.msg)) {
			return 0, nil, errTooBig
		}
		start := len(fr.msg)
		fr.msg = growBytes(fr.msg, int(n))
		p := fr.msg[start:]
		if _, err := io.ReadFull(fr.r, p); err != nil {
			return 0, nil, unexpectedEOF(err)
		}
		if masked {
			maskBytes(key, p)
		}
		if !fin {
			continue
		}
		op, fr.msgOp = fr.msgOp, 0
		if op == opText && !utf8.Valid(fr.msg) {
			return 0, nil, errInvalidUTF8
		}
		return op, fr.msg, nil
	}
}

// unexpectedEOF turns an EOF inside a frame into io.ErrUnexpectedEOF.
func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// growBytes extends b by n bytes, reallocating when its capacity is short.
func growBytes(b []byte, n int) []byte {
	if cap(b)-len(b) >= n {
		return b[:len(b)+n]
	}
	nb := make([]byte, len(b)+n, max(2*cap(b), len(b)+n))
	copy(nb, b)
	return nb
}

// maskBytes XORs p with the masking key (RFC 6455, section 5.3).
func maskBytes(key [4]byte, p []byte) {
	for i := range p {
		p[i] ^= key[i&3]
	}
}

// appendFrame appends one unfragmented frame to dst. With mask set the
// payload is masked with key, as every client frame must be.
func appendFrame(dst []byte, op byte, payload []byte, mask bool, key [4]byte) []byte {
	dst = append(dst, 0x80|op)
	var mbit byte
	if mask {
		mbit = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		dst = append(dst, mbit|byte(n))
	case n <= 0xFFFF:
		dst = append(dst, mbit|126)
		dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, mbit|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	if !mask {
		return append(dst, payload...)
	}
	dst = append(dst, key[:]...)
	start := len(dst)
	dst = append(dst, payload...)
	maskBytes(key, dst[start:])
	return dst
}

// closePayload encodes a close frame's payload: the code and a reason
// truncated to fit a control frame.
func closePayload(code int, reason string) []byte {
	if len(reason) > maxControlPayload-2 {
		reason = reason[:maxControlPayload-2]
	}
	p := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(reason)), uint16(code))
	return append(p, reason...)
}

// parseClose decodes a close frame's payload. An empty payload means no
// status (1005).
func parseClose(p []byte) (code int, reason string) {
	if len(p) < 2 {
		return closeNoStatus, ""
	}
	return int(binary.BigEndian.Uint16(p)), string(p[2:])
}
