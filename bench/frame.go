package bench

import (
	"bytes"
	"errors"
	"strconv"

	"tether/internal/wsframe"
)

// This file holds the bench client's side of the WebSocket upgrade (RFC
// 6455, client side only, no extensions) and the check of a server frame's
// header; the framing itself is internal/wsframe's, and jsonscan.go holds
// the cheap scanners for tether's JSON frames. Owning this code keeps a
// connection down to a few hundred bytes on top of nbio's, with no
// goroutine and no allocation per delivery.

// Errors of the framing layer.
var (
	errFrameTooLarge = errors.New("bench: frame too large")
	errBadHandshake  = errors.New("bench: bad handshake response")
)

// maxFrame bounds a frame or reassembled message the client accepts.
const maxFrame = 16 << 20

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

// parseFrameHeader decodes the header of the server frame at the start of
// b (wsframe.ParseHeader's rules: a server frame is never masked). It
// returns n == 0 when b does not yet hold the whole header and payload;
// otherwise n is the header length and the payload is b[n:n+h.Length].
func parseFrameHeader(b []byte) (h wsframe.Header, n int, err error) {
	h, n, err = wsframe.ParseHeader(b, wsframe.FromServer)
	switch {
	case errors.Is(err, wsframe.ErrShort):
		return h, 0, nil
	case err != nil:
		return h, 0, err
	case h.Length > maxFrame:
		return h, 0, errFrameTooLarge
	case int64(len(b)-n) < h.Length:
		return h, 0, nil
	}
	return h, n, nil
}
