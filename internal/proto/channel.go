package proto

import "errors"

// MaxChannelLen is the longest channel name, in bytes.
const MaxChannelLen = 255

// Reasons a channel name is refused, returned by CheckChannel. Their text
// is what the server sends in a bad_request error frame.
var (
	ErrChannelMissing = errors.New("missing channel")
	ErrChannelTooLong = errors.New("channel name longer than 255 bytes")
	ErrChannelBytes   = errors.New("channel name must be printable ASCII without spaces")
)

// CheckChannel returns nil when name is a valid channel name, 1 to
// MaxChannelLen bytes of printable ASCII (0x21–0x7E) without spaces, and
// otherwise the reason it is not. It does not allocate.
func CheckChannel(name string) error {
	if name == "" {
		return ErrChannelMissing
	}
	if len(name) > MaxChannelLen {
		return ErrChannelTooLong
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x21 || c > 0x7E {
			return ErrChannelBytes
		}
	}
	return nil
}

// ValidChannel reports whether name is a valid channel name (see
// CheckChannel).
func ValidChannel(name string) bool { return CheckChannel(name) == nil }
