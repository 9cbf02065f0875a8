package wsframe

import (
	"encoding/binary"
	"unicode/utf8"
)

// Close codes of RFC 6455, section 7.4.1. tether's own codes (4xxx) belong
// to its protocol vocabulary, not here.
const (
	CloseNormal          = 1000 // the purpose is fulfilled
	CloseGoingAway       = 1001 // the endpoint goes away (server down, page left)
	CloseProtocolError   = 1002 // a frame broke RFC 6455
	CloseUnsupported     = 1003 // a data type the endpoint cannot accept
	CloseNoStatus        = 1005 // never on the wire: a close frame without a code
	CloseAbnormal        = 1006 // never on the wire: the connection dropped without a close frame
	CloseInvalidPayload  = 1007 // data inconsistent with the message type (text not UTF-8)
	ClosePolicyViolation = 1008 // a message violates the endpoint's policy
	CloseTooBig          = 1009 // a message too big to process
	CloseInternalError   = 1011 // the server met an unexpected condition
	CloseServiceRestart  = 1012 // the server restarts; reconnect
)

// MaxCloseReason is the longest reason a close frame can carry: 125 bytes
// of control payload minus the 2-byte code.
const MaxCloseReason = MaxControlPayload - 2

// ValidCloseCode reports whether code may appear in a close frame on the
// wire (RFC 6455, section 7.4): 1000–1003, 1007–1011 (and 1012–1014,
// registered since with IANA), and 3000–4999. Codes under 1000, 1004
// (reserved), 1005 and 1006 (never sent), 1015 (TLS failure, never sent),
// 1016–2999 (reserved for the RFC and its extensions) and 5000 and above
// are invalid.
func ValidCloseCode(code int) bool {
	switch {
	case code >= 1000 && code <= 1003:
		return true
	case code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}

// AppendClose appends a close frame's payload to dst: code in two bytes and
// reason, cut at the last whole UTF-8 sequence that fits MaxCloseReason
// bytes. code should satisfy ValidCloseCode; AppendClose does not check, so
// tests can send invalid codes. It does not allocate when dst has room.
func AppendClose(dst []byte, code int, reason string) []byte {
	if len(reason) > MaxCloseReason {
		cut := MaxCloseReason
		// Back up over continuation bytes to a rune start.
		for cut > 0 && !utf8.RuneStart(reason[cut]) {
			cut--
		}
		reason = reason[:cut]
	}
	dst = binary.BigEndian.AppendUint16(dst, uint16(code))
	return append(dst, reason...)
}

// DecodeClose decodes and checks a close frame's payload. An empty payload
// has no status: code is CloseNoStatus (1005) and err nil. Otherwise it
// returns ErrCloseLength for a 1-byte payload, ErrCloseCode when the code
// fails ValidCloseCode (both close 1002), and ErrCloseReason when the
// reason is not UTF-8 (close 1007). reason aliases p. It does not check
// that p is at most 125 bytes: ParseHeader did.
func DecodeClose(p []byte) (code int, reason []byte, err error) {
	switch len(p) {
	case 0:
		return CloseNoStatus, nil, nil
	case 1:
		return 0, nil, ErrCloseLength
	}
	code = int(binary.BigEndian.Uint16(p))
	if !ValidCloseCode(code) {
		return code, nil, ErrCloseCode
	}
	reason = p[2:]
	if !utf8.Valid(reason) {
		return code, nil, ErrCloseReason
	}
	return code, reason, nil
}
