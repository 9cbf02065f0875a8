package wstest

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"tether/internal/wsframe"
)

func TestReadFrame(t *testing.T) {
	var stream []byte
	payloads := []string{"", "hi", strings.Repeat("x", 200), strings.Repeat("y", 70<<10)}
	for _, p := range payloads {
		stream = wsframe.AppendMaskedFrame(stream, wsframe.OpText, true, []byte(p), [4]byte{1, 2, 3, 4})
	}
	// The smallest buffer bufio allows makes Peek and ReadFull wait for more.
	r := bufio.NewReaderSize(bytes.NewReader(stream), 16)
	for _, want := range payloads {
		h, p, err := ReadFrame(r, wsframe.FromClient)
		if err != nil || h.Opcode != wsframe.OpText || string(p) != want {
			t.Fatalf("frame of %d bytes: %+v, %d bytes, %v", len(want), h, len(p), err)
		}
	}
	if _, _, err := ReadFrame(r, wsframe.FromClient); err != io.EOF {
		t.Fatalf("at the end: %v, want EOF", err)
	}
	f := func(b []byte, want error) {
		t.Helper()
		if _, _, err := ReadFrame(bufio.NewReader(bytes.NewReader(b)), wsframe.FromServer); !errors.Is(err, want) {
			t.Errorf("% x: %v, want %v", b, err, want)
		}
	}
	f([]byte{0x81}, io.ErrUnexpectedEOF)
	f([]byte{0x81, 5, 'a'}, io.ErrUnexpectedEOF)
	f([]byte{0x81, 0x85, 0, 0, 0, 0, 'a'}, wsframe.ErrMasked)
	f([]byte{0x81, 127, 0, 0, 0, 0, 0x10, 0, 0, 0}, ErrTooBig)
}
