package bench

import (
	"bytes"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"strconv"
)

// This file holds the bench client's own minimal WebSocket code (RFC 6455,
// client side only, no extensions); jsonscan.go holds the cheap scanners
// for tether's JSON frames. Owning this code keeps a connection down to a
// few hundred bytes on top of nbio's, with no goroutine and no allocation
// per delivery.

// WebSocket opcodes.
const (
	wsCont   = 0x0
	wsText   = 0x1
	wsBinary = 0x2
	wsClose  = 0x8
	wsPing   = 0x9
	wsPong   = 0xA
)

// Errors of the framing layer.
var (
	errFrameTooLarge = errors.New("bench: frame too large")
	errBadFrame      = errors.New("bench: malformed frame")
	errBadHandshake  = errors.New("bench: bad handshake response")
)

// maxFrame bounds a frame or reassembled message the client accepts.
const maxFrame = 16 << 20

// wsGUID is the fixed string of RFC 6455's accept computation.
const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// wsAccept returns the Sec-WebSocket-Accept value for key.
func wsAccept(key string) string {
	sum := sha1.Sum([]byte(key + wsGUID))
	return base64.StdEncoding.EncodeToString(sum[:])
}

// appendUpgradeRequest appends the HTTP upgrade request for path on host.
// token, when set, is sent as a bearer token.
func appendUpgradeRequest(dst []byte, host, path, key, token string) []byte {
	dst = append(dst, "GET "...)
	dst = append(dst, path...)
	dst = append(dst, " HTTP/1.1\r\nHost: "...)
	dst = append(dst, host...)
	dst = append(dst, "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "...)
	dst = append(dst, key...)
	dst = append(dst, "\r\n"...)
	if token != "" {
		dst = append(dst, "Authorization: Bearer "...)
		dst = append(dst, token...)
		dst = append(dst, "\r\n"...)
	}
	return append(dst, "\r\n"...)
}

// handshakeResult is a parsed upgrade response.
type handshakeResult struct {
	status     int
	retryAfter int // seconds from Retry-After, or -1 if absent
	acceptOK   bool
}

// parseHandshake parses an HTTP response head in b. It returns n == 0 while
// the head is incomplete; otherwise n is the length of the head, including
// the blank line, and the bytes after it belong to the WebSocket stream.
// wantAccept is the expected Sec-WebSocket-Accept value.
func parseHandshake(b []byte, wantAccept string) (res handshakeResult, n int, err error) {
	end := bytes.Index(b, []byte("\r\n\r\n"))
	if end < 0 {
		if len(b) > 16<<10 {
			return res, 0, errBadHandshake
		}
		return res, 0, nil
	}
	head := b[:end]
	n = end + 4
	line, rest, _ := bytes.Cut(head, []byte("\r\n"))
	// "HTTP/1.1 101 Switching Protocols"
	if !bytes.HasPrefix(line, []byte("HTTP/1.")) || len(line) < 12 || line[8] != ' ' {
		return res, n, errBadHandshake
	}
	st, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return res, n, errBadHandshake
	}
	res.status = st
	res.retryAfter = -1
	for len(rest) > 0 {
		var h []byte
		h, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		name, val, ok := bytes.Cut(h, []byte(":"))
		if !ok {
			continue
		}
		val = bytes.TrimSpace(val)
		switch {
		case bytes.EqualFold(name, []byte("Sec-WebSocket-Accept")):
			res.acceptOK = string(val) == wantAccept
		case bytes.EqualFold(name, []byte("Retry-After")):
			if v, err := strconv.Atoi(string(val)); err == nil && v >= 0 {
				res.retryAfter = v
			}
		}
	}
	return res, n, nil
}

// frameHeader is a decoded WebSocket frame header.
type frameHeader struct {
	fin    bool
	opcode byte
	masked bool
	mask   [4]byte
	length int
}

// parseFrameHeader decodes the frame header at the start of b. It returns
// n == 0 when b does not yet hold the whole header and payload; otherwise n
// is the header length and the payload is b[n:n+h.length].
func parseFrameHeader(b []byte) (h frameHeader, n int, err error) {
	if len(b) < 2 {
		return h, 0, nil
	}
	if b[0]&0x70 != 0 {
		return h, 0, errBadFrame // no extensions were negotiated
	}
	h.fin = b[0]&0x80 != 0
	h.opcode = b[0] & 0x0F
	h.masked = b[1]&0x80 != 0
	n = 2
	l := uint64(b[1] & 0x7F)
	switch l {
	case 126:
		if len(b) < 4 {
			return h, 0, nil
		}
		l = uint64(binary.BigEndian.Uint16(b[2:]))
		n = 4
	case 127:
		if len(b) < 10 {
			return h, 0, nil
		}
		l = binary.BigEndian.Uint64(b[2:])
		n = 10
	}
	if l > maxFrame {
		return h, 0, errFrameTooLarge
	}
	if h.opcode >= wsClose && (l > 125 || !h.fin) {
		return h, 0, errBadFrame
	}
	if h.masked {
		if len(b) < n+4 {
			return h, 0, nil
		}
		copy(h.mask[:], b[n:])
		n += 4
	}
	h.length = int(l)
	if len(b) < n+h.length {
		return h, 0, nil
	}
	return h, n, nil
}

// maskBytes XORs b with mask, starting at mask position 0.
func maskBytes(b []byte, mask [4]byte) {
	for i := range b {
		b[i] ^= mask[i&3]
	}
}

// appendClientFrame appends one final, masked frame carrying payload.
func appendClientFrame(dst []byte, opcode byte, payload []byte, mask [4]byte) []byte {
	dst = append(dst, 0x80|opcode)
	switch l := len(payload); {
	case l < 126:
		dst = append(dst, 0x80|byte(l))
	case l <= 0xFFFF:
		dst = append(dst, 0x80|126, byte(l>>8), byte(l))
	default:
		dst = append(dst, 0x80|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(l))
	}
	dst = append(dst, mask[:]...)
	start := len(dst)
	dst = append(dst, payload...)
	maskBytes(dst[start:], mask)
	return dst
}
