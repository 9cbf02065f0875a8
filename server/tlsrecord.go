package server

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"hash"
)

// The TLS 1.3 record layer (RFC 8446 §5) that a connection runs itself
// once crypto/tls has finished its handshake (tls.go says when): the
// protection of application data with the traffic keys the handshake
// derived, and KeyUpdate (§4.6.3). It is plain data with no socket: the
// caller hands it bytes and writes what it returns.

// TLS record content types (RFC 8446 §5.1).
const (
	recordChangeCipherSpec = 20
	recordAlert            = 21
	recordHandshake        = 22
	recordApplicationData  = 23
)

const (
	recordHeaderLen = 5
	// maxRecordPlaintext is the most plaintext one record carries (2^14).
	maxRecordPlaintext = 1 << 14
	// maxRecordCiphertext bounds TLSCiphertext.length (2^14 + 256, §5.2);
	// a longer record is a record_overflow.
	maxRecordCiphertext = maxRecordPlaintext + 256
	// recordOverhead is what sealing adds to a record's plaintext: the
	// header, the inner content type and the AES-GCM tag.
	recordOverhead = recordHeaderLen + 1 + 16
)

// Alert descriptions we send or act on (§6).
const (
	alertCloseNotify       = 0
	alertUnexpectedMessage = 10
	alertBadRecordMAC      = 20
	alertRecordOverflow    = 22
	alertDecodeError       = 50
)

// handshakeKeyUpdate is the KeyUpdate handshake message type (§4).
const handshakeKeyUpdate = 24

// Errors of the record layer; each closes the connection.
var (
	errRecordOverflow   = errors.New("tls record: longer than 2^14+256 bytes")
	errRecordBadMAC     = errors.New("tls record: cannot open (bad tag)")
	errRecordUnexpected = errors.New("tls record: unexpected content")
	errRecordSuite      = errors.New("tls record: cipher suite not handled")
)

// trafficKeys protects one direction of a TLS 1.3 connection: its AEAD,
// the static IV, the record sequence number and the traffic secret the
// next KeyUpdate derives from. Not safe for concurrent use.
type trafficKeys struct {
	aead      cipher.AEAD
	seq       uint64
	suite     uint16
	secretLen uint8
	iv        [12]byte
	nonce     [12]byte // scratch: iv XOR seq, here so that it does not escape per record
	secret    [48]byte
}

// recordSuiteHash returns the hash and key length of a TLS 1.3 cipher
// suite the record layer handles: the AES-GCM ones. CHACHA20_POLY1305
// connections keep crypto/tls's record layer.
func recordSuiteHash(suite uint16) (func() hash.Hash, int, bool) {
	switch suite {
	case tls.TLS_AES_128_GCM_SHA256:
		return sha256.New, 16, true
	case tls.TLS_AES_256_GCM_SHA384:
		return sha512.New384, 32, true
	}
	return nil, 0, false
}

// hkdfExpandLabel is HKDF-Expand-Label(secret, label, "", length) of RFC
// 8446 §7.1: the info is the HkdfLabel structure with an empty context.
func hkdfExpandLabel(h func() hash.Hash, secret []byte, label string, length int) ([]byte, error) {
	info := make([]byte, 0, 4+6+len(label))
	info = binary.BigEndian.AppendUint16(info, uint16(length))
	info = append(info, byte(6+len(label)))
	info = append(info, "tls13 "...)
	info = append(info, label...)
	info = append(info, 0) // context: empty
	return hkdf.Expand(h, secret, string(info), length)
}

// setSecret makes secret the direction's traffic secret: its key and IV
// (§7.3) and a sequence number of 0.
func (k *trafficKeys) setSecret(suite uint16, secret []byte) error {
	h, keyLen, ok := recordSuiteHash(suite)
	if !ok || len(secret) != h().Size() {
		return errRecordSuite
	}
	key, err := hkdfExpandLabel(h, secret, "key", keyLen)
	if err != nil {
		return err
	}
	iv, err := hkdfExpandLabel(h, secret, "iv", 12)
	if err != nil {
		return err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return err
	}
	k.aead, k.seq, k.suite = aead, 0, suite
	k.secretLen = uint8(copy(k.secret[:], secret))
	copy(k.iv[:], iv)
	return nil
}

// update moves the direction to its next traffic secret (KeyUpdate, §7.2).
func (k *trafficKeys) update() error {
	h, _, ok := recordSuiteHash(k.suite)
	if !ok {
		return errRecordSuite
	}
	next, err := hkdfExpandLabel(h, k.secret[:k.secretLen], "traffic upd", int(k.secretLen))
	if err != nil {
		return err
	}
	return k.setSecret(k.suite, next)
}

// nonceFor returns the per-record nonce of §5.3, the IV XOR the
// sequence number seq, in k's scratch.
func (k *trafficKeys) nonceFor(seq uint64) []byte {
	k.nonce = k.iv
	for i := range 8 {
		k.nonce[4+i] ^= byte(seq >> (56 - 8*i))
	}
	return k.nonce[:]
}

// sealedLen is the length of the records seal makes of n bytes.
func sealedLen(n int) int {
	records := (n + maxRecordPlaintext - 1) / maxRecordPlaintext
	if records == 0 {
		records = 1
	}
	return n + records*recordOverhead
}

// seal appends to dst the records that carry p as content of type typ, at
// most 2^14 bytes of it each, and returns dst. It allocates nothing when
// dst has room for sealedLen(len(p)) more bytes. The sequence number
// advances by the number of records only when the caller commits them
// (commit), so that a write the socket refused can be forgotten.
func (k *trafficKeys) seal(dst, p []byte, typ byte) ([]byte, uint64) {
	if need := len(dst) + sealedLen(len(p)); cap(dst) < need {
		grown := make([]byte, len(dst), need)
		copy(grown, dst)
		dst = grown
	}
	seq := k.seq
	for first := true; first || len(p) > 0; first = false {
		n := min(len(p), maxRecordPlaintext)
		hdr := len(dst)
		dst = append(dst, recordApplicationData, 3, 3, 0, 0)
		binary.BigEndian.PutUint16(dst[hdr+3:], uint16(n+1+16))
		body := len(dst)
		dst = append(dst, p[:n]...)
		dst = append(dst, typ)
		dst = k.aead.Seal(dst[:body], k.nonceFor(seq), dst[body:], dst[hdr:body])
		seq++
		p = p[n:]
	}
	return dst, seq - k.seq
}

// commit advances the sequence number past n records seal made.
func (k *trafficKeys) commit(n uint64) { k.seq += n }

// parseRecordHeader reads the header at the start of b: the record's
// content type and its whole length with the header. ok is false while b
// holds less than a header.
func parseRecordHeader(b []byte) (typ byte, n int, ok bool, err error) {
	if len(b) < recordHeaderLen {
		return 0, 0, false, nil
	}
	length := int(binary.BigEndian.Uint16(b[3:5]))
	if length > maxRecordCiphertext {
		return b[0], 0, true, errRecordOverflow
	}
	return b[0], recordHeaderLen + length, true, nil
}

// open decrypts the whole record rec (header included) into dst[:0]
// (dst needs 2^14+1 bytes of room) and returns its content with the
// padding and the inner content type stripped, and that type (§5.2,
// §5.4). A record that does not open is errRecordBadMAC.
func (k *trafficKeys) open(dst, rec []byte) ([]byte, byte, error) {
	if len(rec) < recordHeaderLen || rec[0] != recordApplicationData {
		return nil, 0, errRecordUnexpected
	}
	if len(rec)-recordHeaderLen > maxRecordCiphertext {
		return nil, 0, errRecordOverflow
	}
	if len(rec)-recordHeaderLen < 16+1 {
		return nil, 0, errRecordBadMAC
	}
	plain, err := k.aead.Open(dst[:0], k.nonceFor(k.seq), rec[recordHeaderLen:], rec[:recordHeaderLen])
	if err != nil {
		return nil, 0, errRecordBadMAC
	}
	if len(plain) > maxRecordPlaintext+1 {
		return nil, 0, errRecordOverflow
	}
	k.seq++
	i := len(plain) - 1
	for i >= 0 && plain[i] == 0 {
		i--
	}
	if i < 0 {
		return nil, 0, errRecordUnexpected // all padding: no content type
	}
	return plain[:i], plain[i], nil
}
