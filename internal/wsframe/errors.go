package wsframe

import "errors"

// ErrShort is returned by ParseHeader when the buffer ends before the
// header does. It is not a protocol error: read more and parse again.
var ErrShort = errors.New("wsframe: short buffer")

// Error is a broken rule of RFC 6455, with the close code the peer is
// answered with. The package's errors are *Error values compared by
// identity: check them with errors.Is.
type Error struct {
	// Code is the close code to send (CloseProtocolError,
	// CloseInvalidPayload or CloseTooBig).
	Code int
	// Reason is a short text fit for a close frame's reason (at most 123
	// bytes, ASCII).
	Reason string
}

func (e *Error) Error() string { return "wsframe: " + e.Reason }

// Errors of ParseHeader: a single frame header breaks a rule.
var (
	ErrRSV               = &Error{CloseProtocolError, "reserved bits set"}
	ErrReservedOpcode    = &Error{CloseProtocolError, "reserved opcode"}
	ErrFragmentedControl = &Error{CloseProtocolError, "fragmented control frame"}
	ErrControlTooLong    = &Error{CloseProtocolError, "control frame over 125 bytes"}
	ErrNonMinimalLength  = &Error{CloseProtocolError, "length not minimally encoded"}
	ErrLengthTopBit      = &Error{CloseProtocolError, "64-bit length with the top bit set"}
	ErrUnmasked          = &Error{CloseProtocolError, "client frame not masked"}
	ErrMasked            = &Error{CloseProtocolError, "server frame masked"}
)

// Errors of a frame sequence, for readers that reassemble messages.
var (
	// ErrContinuationWithoutStart: a continuation frame while no
	// fragmented message is open.
	ErrContinuationWithoutStart = &Error{CloseProtocolError, "continuation without a message"}
	// ErrInterleaved: a text or binary frame while a fragmented message is
	// still open.
	ErrInterleaved = &Error{CloseProtocolError, "new message inside a fragmented one"}
	// ErrTooBig: a message over the reader's size bound (close 1009).
	ErrTooBig = &Error{CloseTooBig, "message too big"}
	// ErrInvalidUTF8: a text message that is not UTF-8 (close 1007).
	ErrInvalidUTF8 = &Error{CloseInvalidPayload, "text message not utf-8"}
)

// Errors of DecodeClose.
var (
	ErrCloseLength = &Error{CloseProtocolError, "close payload of 1 byte"}
	ErrCloseCode   = &Error{CloseProtocolError, "invalid close code"}
	ErrCloseReason = &Error{CloseInvalidPayload, "close reason not utf-8"}
)

// CloseCodeOf returns the close code to answer err with: the Code of an
// *Error in err's chain, or 0 when there is none (ErrShort, I/O errors,
// the caller's own errors).
func CloseCodeOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

// Errors returns every *Error of the package, for whoever counts them
// (metrics labelled by Reason).
func Errors() []*Error {
	return []*Error{
		ErrRSV, ErrReservedOpcode, ErrFragmentedControl, ErrControlTooLong, ErrNonMinimalLength,
		ErrLengthTopBit, ErrUnmasked, ErrMasked,
		ErrContinuationWithoutStart, ErrInterleaved, ErrTooBig, ErrInvalidUTF8,
		ErrCloseLength, ErrCloseCode, ErrCloseReason,
	}
}
