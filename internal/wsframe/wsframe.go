// Package wsframe is tether's one WebSocket codec (RFC 6455, no
// extensions): opcode and close-code constants, frame headers parsed from
// and appended to byte slices, masking, the handshake's accept key and the
// close payload. The rules of RFC 6455 that a frame header alone can break
// are checked in one place, ParseHeader, and each has a typed error that
// names the close code to answer with (CloseCodeOf).
//
// The package knows nothing of sockets, buffers or message reassembly: the
// server's reader (server/wsread.go), the Go client and the bench client
// build on it. It uses the standard library only, and nothing in it
// allocates except AcceptKey.
//
// Where to find:
//
//	wsframe.go  opcodes, Header, ParseHeader, AppendHeader, AppendFrame, Mask
//	close.go    close codes, AppendClose, DecodeClose, ValidCloseCode
//	errors.go   ErrShort and the protocol errors with their close codes
//	accept.go   AcceptKey, AppendAcceptKey
package wsframe

import "encoding/binary"

// Opcode is a frame's opcode (RFC 6455, section 5.2).
type Opcode byte

// Opcodes of RFC 6455. 0x3–0x7 and 0xB–0xF are reserved; ParseHeader
// refuses them.
const (
	OpContinuation Opcode = 0x0
	OpText         Opcode = 0x1
	OpBinary       Opcode = 0x2
	OpClose        Opcode = 0x8
	OpPing         Opcode = 0x9
	OpPong         Opcode = 0xA
)

// IsControl reports whether op is a control opcode (close, ping, pong, or a
// reserved control opcode).
func (op Opcode) IsControl() bool { return op&0x8 != 0 }

// String returns the opcode's name as RFC 6455 spells it.
func (op Opcode) String() string {
	switch op {
	case OpContinuation:
		return "continuation"
	case OpText:
		return "text"
	case OpBinary:
		return "binary"
	case OpClose:
		return "close"
	case OpPing:
		return "ping"
	case OpPong:
		return "pong"
	}
	return "reserved"
}

// MaxControlPayload is the largest payload a control frame may carry.
const MaxControlPayload = 125

// MaxHeaderLen is the longest frame header: 2 bytes, a 64-bit length and a
// masking key.
const MaxHeaderLen = 14

// Sender names the peer that sent the frames being parsed, which decides the
// masking rule (RFC 6455, section 5.1).
type Sender uint8

const (
	// FromClient: every frame must be masked; an unmasked one is
	// ErrUnmasked (close 1002).
	FromClient Sender = 1
	// FromServer: no frame may be masked; a masked one is ErrMasked
	// (close 1002).
	FromServer Sender = 2
)

// Header is a decoded frame header.
type Header struct {
	Fin    bool   // final fragment of a message
	RSV    byte   // the three reserved bits, as in the first byte (mask 0x70)
	Opcode Opcode //
	Masked bool   // the payload is masked with Key
	Key    [4]byte
	// Length is the payload length in bytes. ParseHeader returns it only
	// when it is in [0, 2^63); AppendHeader requires it to be.
	Length int64
}

// ParseHeader decodes the frame header at the start of buf, sent by from.
// It returns the header and its length n in bytes; the payload follows at
// buf[n:] and may not be in buf yet. It returns ErrShort when buf does not
// hold the whole header yet and no rule is broken by the bytes it does hold;
// the caller reads more and calls again with the longer buffer.
//
// It refuses, each with its own error (close code 1002, see CloseCodeOf):
// a reserved bit set (no extension is ever negotiated), a reserved opcode,
// a fragmented control frame, a control frame over 125 bytes, a length not
// in its shortest encoding, a 64-bit length with the top bit set, and a
// frame masked against from's rule. A rule that the first two bytes already
// break is reported even when buf is shorter than the header. It never
// allocates and never panics.
func ParseHeader(buf []byte, from Sender) (h Header, n int, err error) {
	if len(buf) < 2 {
		return h, 0, ErrShort
	}
	b0, b1 := buf[0], buf[1]
	h.Fin = b0&0x80 != 0
	h.RSV = b0 & 0x70
	h.Opcode = Opcode(b0 & 0x0F)
	h.Masked = b1&0x80 != 0
	if h.RSV != 0 {
		return h, 0, ErrRSV
	}
	switch h.Opcode {
	case OpContinuation, OpText, OpBinary, OpClose, OpPing, OpPong:
	default:
		return h, 0, ErrReservedOpcode
	}
	l7 := b1 & 0x7F
	if h.Opcode.IsControl() {
		if !h.Fin {
			return h, 0, ErrFragmentedControl
		}
		if l7 > MaxControlPayload {
			return h, 0, ErrControlTooLong
		}
	}
	switch {
	case from == FromClient && !h.Masked:
		return h, 0, ErrUnmasked
	case from == FromServer && h.Masked:
		return h, 0, ErrMasked
	}
	n = 2
	switch l7 {
	case 126:
		if len(buf) < 4 {
			return h, 0, ErrShort
		}
		h.Length = int64(binary.BigEndian.Uint16(buf[2:4]))
		if h.Length < 126 {
			return h, 0, ErrNonMinimalLength
		}
		n = 4
	case 127:
		if len(buf) < 10 {
			return h, 0, ErrShort
		}
		l := binary.BigEndian.Uint64(buf[2:10])
		if l>>63 != 0 {
			return h, 0, ErrLengthTopBit
		}
		if l <= 0xFFFF {
			return h, 0, ErrNonMinimalLength
		}
		h.Length = int64(l)
		n = 10
	default:
		h.Length = int64(l7)
	}
	if h.Masked {
		if len(buf) < n+4 {
			return h, 0, ErrShort
		}
		h.Key = [4]byte(buf[n : n+4])
		n += 4
	}
	return h, n, nil
}

// HeaderLen returns the length of the header AppendHeader writes for a
// payload of length bytes, with or without a masking key.
func HeaderLen(length int64, masked bool) int {
	n := 2
	switch {
	case length > 0xFFFF:
		n = 10
	case length > 125:
		n = 4
	}
	if masked {
		n += 4
	}
	return n
}

// AppendHeader appends h in its shortest encoding to dst and returns the
// extended slice: FIN, the RSV bits as given, the opcode, the mask bit and
// Key when h.Masked. h.Length must be in [0, 2^63). It does not check
// h against the rules ParseHeader enforces, so tests can build broken
// frames with it.
func AppendHeader(dst []byte, h Header) []byte {
	b0 := byte(h.Opcode&0x0F) | h.RSV&0x70
	if h.Fin {
		b0 |= 0x80
	}
	var mbit byte
	if h.Masked {
		mbit = 0x80
	}
	switch n := h.Length; {
	case n <= 125:
		dst = append(dst, b0, mbit|byte(n))
	case n <= 0xFFFF:
		dst = append(dst, b0, mbit|126, byte(n>>8), byte(n))
	default:
		dst = append(dst, b0, mbit|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	if h.Masked {
		dst = append(dst, h.Key[:]...)
	}
	return dst
}

// AppendFrame appends one unmasked frame carrying payload, as a server
// sends it, and returns the extended slice.
func AppendFrame(dst []byte, op Opcode, fin bool, payload []byte) []byte {
	dst = AppendHeader(dst, Header{Fin: fin, Opcode: op, Length: int64(len(payload))})
	return append(dst, payload...)
}

// AppendMaskedFrame appends one frame carrying payload masked with key, as
// a client must send it, and returns the extended slice. payload is not
// modified. key should come from a good random source (RFC 6455, section
// 5.3); the caller picks it so that this function does not allocate or
// read entropy.
func AppendMaskedFrame(dst []byte, op Opcode, fin bool, payload []byte, key [4]byte) []byte {
	dst = AppendHeader(dst, Header{Fin: fin, Opcode: op, Masked: true, Key: key, Length: int64(len(payload))})
	start := len(dst)
	dst = append(dst, payload...)
	Mask(dst[start:], key, 0)
	return dst
}

// Mask XORs p in place with the masking key (RFC 6455, section 5.3), p
// being the payload's bytes from offset pos on; it returns the offset to
// pass for the bytes that follow p, so a payload that arrives in pieces is
// masked piece by piece. Masking and unmasking are the same operation. It
// works eight bytes at a time.
func Mask(p []byte, key [4]byte, pos int) int {
	next := (pos + len(p)) & 3
	if len(p) == 0 {
		return next
	}
	// Rotate the key so that k[0] applies to p[0].
	var k [4]byte
	for i := range k {
		k[i] = key[(pos+i)&3]
	}
	k32 := binary.LittleEndian.Uint32(k[:])
	k64 := uint64(k32) | uint64(k32)<<32
	i := 0
	for ; len(p)-i >= 32; i += 32 {
		q := p[i : i+32 : i+32]
		binary.LittleEndian.PutUint64(q[0:], binary.LittleEndian.Uint64(q[0:])^k64)
		binary.LittleEndian.PutUint64(q[8:], binary.LittleEndian.Uint64(q[8:])^k64)
		binary.LittleEndian.PutUint64(q[16:], binary.LittleEndian.Uint64(q[16:])^k64)
		binary.LittleEndian.PutUint64(q[24:], binary.LittleEndian.Uint64(q[24:])^k64)
	}
	for ; len(p)-i >= 8; i += 8 {
		binary.LittleEndian.PutUint64(p[i:], binary.LittleEndian.Uint64(p[i:])^k64)
	}
	// i is a multiple of 8 here, so k[j&3] lines up again.
	for j := i; j < len(p); j++ {
		p[j] ^= k[j&3]
	}
	return next
}
