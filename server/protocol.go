package server

import (
	"bytes"
	"encoding/json"
	"strconv"
	"unicode/utf8"

	"tether/bus"
	"tether/internal/proto"
	"tether/internal/wsframe"
)

// clientFrame is a decoded client→server frame (docs/protocol.md).
type clientFrame struct {
	Op      string          `json:"op"`
	Channel string          `json:"channel"`
	ID      json.RawMessage `json:"id"`
	Data    json.RawMessage `json:"data"`
	Since   *sincePos       `json:"since"`
	Token   string          `json:"token"` // refresh
	// IdempotencyKey makes a publish happen at most once per
	// --idempotency-window (idempotency.go).
	IdempotencyKey string `json:"idempotency_key"`
}

type sincePos struct {
	Offset uint64 `json:"offset"`
	Epoch  string `json:"epoch"`
}

// decodeClientFrame parses and validates one client frame. The returned
// frame does not reference b. On failure it returns the best-effort id (so
// the error reply can echo it) and a bad_request error.
func decodeClientFrame(b []byte) (clientFrame, *protoError) {
	var f clientFrame
	if err := json.Unmarshal(b, &f); err != nil {
		return clientFrame{}, errf(proto.CodeBadRequest, "malformed JSON frame")
	}
	if len(f.ID) > 0 {
		if !validID(f.ID) {
			f.ID = nil
			return f, errf(proto.CodeBadRequest, "id must be a number or a string of at most 64 bytes")
		}
	}
	switch f.Op {
	case proto.OpSubscribe, proto.OpUnsubscribe:
		if err := checkChannel(f.Channel); err != nil {
			return f, err
		}
		if f.Op == proto.OpUnsubscribe && f.Since != nil {
			return f, errf(proto.CodeBadRequest, "since is only valid with subscribe")
		}
		if f.Since != nil && len(f.Since.Epoch) > 64 {
			return f, errf(proto.CodeBadRequest, "since.epoch is too long")
		}
	case proto.OpPublish:
		if err := checkChannel(f.Channel); err != nil {
			return f, err
		}
		if len(f.Data) == 0 {
			return f, errf(proto.CodeBadRequest, "publish needs data")
		}
		if err := checkIdempotencyKey(f.IdempotencyKey); err != nil {
			return f, err
		}
	case proto.OpPresence:
		if err := checkChannel(f.Channel); err != nil {
			return f, err
		}
	case proto.OpRefresh:
		if f.Token == "" {
			return f, errf(proto.CodeBadRequest, "refresh needs a token")
		}
	case proto.OpPing, proto.OpPong:
	case "":
		return f, errf(proto.CodeBadRequest, "missing op")
	default:
		return f, errf(proto.CodeBadRequest, "unknown op")
	}
	return f, nil
}

func validID(id json.RawMessage) bool {
	if len(id) > proto.MaxIDLen+2 {
		return false
	}
	switch c := id[0]; {
	case c == '"':
		return true
	case c == '-' || (c >= '0' && c <= '9'):
		return true
	}
	return false
}

// checkChannel returns the bad_request error for an invalid channel name
// (proto.CheckChannel), nil for a valid one.
func checkChannel(name string) *protoError {
	if err := proto.CheckChannel(name); err != nil {
		return errf(proto.CodeBadRequest, err.Error())
	}
	return nil
}

// WebSocket frame encoding (internal/wsframe). Server frames are never
// masked, so their header is at most maxServerHeader bytes long.
const maxServerHeader = 10

// frameFromPayload returns a new final, unmasked frame holding payload.
func frameFromPayload(opcode wsframe.Opcode, payload []byte) []byte {
	f := make([]byte, 0, wsframe.HeaderLen(int64(len(payload)), false)+len(payload))
	return wsframe.AppendFrame(f, opcode, true, payload)
}

// closeFrame returns a close frame with code and reason, the reason cut to
// fit a control frame.
func closeFrame(code int, reason string) []byte {
	var p [wsframe.MaxControlPayload]byte
	return frameFromPayload(wsframe.OpClose, wsframe.AppendClose(p[:0], code, reason))
}

// appendJSONString appends s as a JSON string.
func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			dst = append(dst, c)
			i++
			continue
		}
		if c < utf8.RuneSelf {
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, `\ufffd`...)
		} else {
			dst = append(dst, s[i:i+size]...)
		}
		i += size
	}
	return append(dst, '"')
}

// Server→client payloads. Each appends a JSON object to dst.

func appendMessage(dst []byte, channel string, offset uint64, data []byte) []byte {
	dst = append(dst, `{"op":"message","channel":`...)
	dst = appendJSONString(dst, channel)
	dst = append(dst, `,"offset":`...)
	dst = strconv.AppendUint(dst, offset, 10)
	dst = append(dst, `,"data":`...)
	dst = append(dst, data...)
	return append(dst, '}')
}

func appendID(dst []byte, id json.RawMessage) []byte {
	if len(id) == 0 {
		return dst
	}
	dst = append(dst, `,"id":`...)
	return append(dst, id...)
}

func appendSubscribed(dst []byte, channel string, offset uint64, epoch string, recovered bool, id json.RawMessage) []byte {
	dst = append(dst, `{"op":"subscribed","channel":`...)
	dst = appendJSONString(dst, channel)
	dst = append(dst, `,"offset":`...)
	dst = strconv.AppendUint(dst, offset, 10)
	dst = append(dst, `,"epoch":`...)
	dst = appendJSONString(dst, epoch)
	dst = append(dst, `,"recovered":`...)
	dst = strconv.AppendBool(dst, recovered)
	dst = appendID(dst, id)
	return append(dst, '}')
}

func appendUnsubscribed(dst []byte, channel string, id json.RawMessage) []byte {
	dst = append(dst, `{"op":"unsubscribed","channel":`...)
	dst = appendJSONString(dst, channel)
	dst = appendID(dst, id)
	return append(dst, '}')
}

// appendUnsubscribedBy appends the frame of a subscription the server
// ended on its own, with its reason (proto.ReasonForbidden …) and, when
// hasLast, the position of the last message the subscription was sent.
func appendUnsubscribedBy(dst []byte, channel, reason string, last bus.Position, hasLast bool) []byte {
	dst = append(dst, `{"op":"unsubscribed","channel":`...)
	dst = appendJSONString(dst, channel)
	dst = append(dst, `,"reason":`...)
	dst = appendJSONString(dst, reason)
	if hasLast {
		dst = strconv.AppendUint(append(dst, `,"offset":`...), last.Offset, 10)
		dst = appendJSONString(append(dst, `,"epoch":`...), last.Epoch)
	}
	return append(dst, '}')
}

// appendAck appends the answer to a publish; replayed marks the first
// answer of an idempotency key given again.
func appendAck(dst []byte, id json.RawMessage, offset uint64, replayed bool) []byte {
	dst = append(dst, `{"op":"ack"`...)
	dst = appendID(dst, id)
	dst = append(dst, `,"offset":`...)
	dst = strconv.AppendUint(dst, offset, 10)
	if replayed {
		dst = append(dst, `,"replayed":true`...)
	}
	return append(dst, '}')
}

func appendError(dst []byte, id json.RawMessage, code, msg string) []byte {
	dst = append(dst, `{"op":"error"`...)
	dst = appendID(dst, id)
	dst = append(dst, `,"code":`...)
	dst = appendJSONString(dst, code)
	dst = append(dst, `,"message":`...)
	dst = appendJSONString(dst, msg)
	return append(dst, '}')
}

func appendWelcome(dst []byte, node, conn string, pingMS int64) []byte {
	dst = append(dst, `{"op":"welcome","node":`...)
	dst = appendJSONString(dst, node)
	dst = append(dst, `,"conn":`...)
	dst = appendJSONString(dst, conn)
	dst = append(dst, `,"ping_interval_ms":`...)
	dst = strconv.AppendInt(dst, pingMS, 10)
	return append(dst, '}')
}

func appendResync(dst []byte, channel string, offset uint64, epoch string, afterMS int64) []byte {
	dst = append(dst, `{"op":"resync","channel":`...)
	dst = appendJSONString(dst, channel)
	dst = append(dst, `,"offset":`...)
	dst = strconv.AppendUint(dst, offset, 10)
	dst = append(dst, `,"epoch":`...)
	dst = appendJSONString(dst, epoch)
	dst = append(dst, `,"after_ms":`...)
	dst = strconv.AppendInt(dst, afterMS, 10)
	return append(dst, '}')
}

func appendReconnect(dst []byte, afterMS int64) []byte {
	dst = append(dst, `{"op":"reconnect","after_ms":`...)
	dst = strconv.AppendInt(dst, afterMS, 10)
	return append(dst, '}')
}

// textFrame builds a text frame from a payload appender in one allocation
// (two when the payload outgrows textFrameRoom): the payload is appended
// after room for the longest header, as in messageFrame. (A stack scratch
// buffer would not stay on the stack: it is passed to a func value.)
func textFrame(build func([]byte) []byte) []byte {
	return headerInFront(build(make([]byte, maxServerHeader, maxServerHeader+textFrameRoom)))
}

// textFrameRoom is the payload room textFrame allocates: enough for every
// reply but those with long channel names, ids or epochs.
const textFrameRoom = 192

// headerInFront completes a text frame whose payload buf holds after
// maxServerHeader bytes of room: it writes the header just in front of the
// payload and returns the frame.
func headerInFront(buf []byte) []byte {
	p := int64(len(buf) - maxServerHeader)
	start := maxServerHeader - wsframe.HeaderLen(p, false)
	wsframe.AppendHeader(buf[start:start], wsframe.Header{Fin: true, Opcode: wsframe.OpText, Length: p})
	return buf[start:]
}

// messageFrame encodes m as one WebSocket frame in a single allocation:
// the payload is appended after room for the longest header, and the
// header is then written just in front of it.
func messageFrame(m bus.Message) []byte {
	n := len(`{"op":"message","channel":,"offset":,"data":}`) + len(m.Channel) + 2 + 20 + len(m.Data)
	buf := make([]byte, maxServerHeader, maxServerHeader+n+8)
	return headerInFront(appendMessage(buf, m.Channel, m.Offset, m.Data))
}

// pongJSON is a pong as tether's clients (client/, client/js, bench) and
// the server spell it. wsMessage recognises it byte for byte.
const pongJSON = `{"op":"pong"}`

// Pre-encoded frames shared by all connections.
var (
	pingFrame = frameFromPayload(wsframe.OpText, []byte(`{"op":"ping"}`))
	pongFrame = frameFromPayload(wsframe.OpText, []byte(pongJSON))
)

// isJSONValue reports whether b is one valid JSON value.
func isJSONValue(b []byte) bool {
	return json.Valid(b) && len(bytes.TrimSpace(b)) > 0
}
