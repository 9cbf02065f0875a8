package wsframe

import (
	"crypto/sha1"
	"encoding/base64"
)

// acceptGUID is the fixed string RFC 6455 (section 4.2.2) appends to the
// client's key before hashing.
const acceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// AcceptKeyLen is the length of a Sec-WebSocket-Accept value.
const AcceptKeyLen = 28

// AcceptKey returns the Sec-WebSocket-Accept value that answers the
// Sec-WebSocket-Key value key: base64(SHA-1(key + GUID)). It does not
// check key; a server checks that it decodes to 16 bytes.
func AcceptKey(key string) string {
	var b [AcceptKeyLen]byte
	return string(AppendAcceptKey(b[:0], key))
}

// AppendAcceptKey appends AcceptKey(key) to dst without allocating when dst
// has room.
func AppendAcceptKey[S string | []byte](dst []byte, key S) []byte {
	// A valid key is 24 bytes: key and GUID fit the stack buffer, and
	// sha1.Sum allocates nothing (a sha1.New digest would escape).
	var b [64]byte
	in := append(append(b[:0:len(b)], key...), acceptGUID...)
	sum := sha1.Sum(in)
	return base64.StdEncoding.AppendEncode(dst, sum[:])
}
