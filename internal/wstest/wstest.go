// Package wstest is a WebSocket client for tests, standing on
// internal/wsframe. It gives raw control over what is sent and when frames
// are read, so that tests can play slow, silent or misbehaving clients, and
// its ReadFrame serves the fake servers of tests too. It is not for
// production use: it allocates per frame and checks little beyond the
// frame header rules.
//
// Where to find: everything is in wstest.go (Dial, WriteFrame, ReadFrame).
package wstest

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"tether/internal/wsframe"
)

// MaxFrame is the largest payload ReadFrame accepts.
const MaxFrame = 64 << 20

// ErrTooBig is returned by ReadFrame for a frame over MaxFrame.
var ErrTooBig = errors.New("wstest: frame too big")

// Conn is a client connection after a successful upgrade. Its Reader holds
// what the server sent after the upgrade response.
type Conn struct {
	net.Conn
	Reader *bufio.Reader
}

// Dial connects to addr and upgrades the connection at path, sending the
// fields of header too. It checks the server's Sec-WebSocket-Accept. When
// the server refuses the upgrade it returns the response, with its body
// still readable, and an error.
func Dial(addr, path string, header http.Header) (*Conn, *http.Response, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, nil, err
	}
	var raw [16]byte
	_, _ = rand.Read(raw[:])
	key := base64.StdEncoding.EncodeToString(raw[:])
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n", path, addr, key)
	for k, vs := range header {
		for _, v := range vs {
			fmt.Fprintf(&b, "%s: %s\r\n", k, v)
		}
	}
	b.WriteString("\r\n")
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, b.String()); err != nil {
		c.Close()
		return nil, nil, err
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(resp.Body)
		resp.Body = io.NopCloser(strings.NewReader(string(body)))
		c.Close()
		return nil, resp, fmt.Errorf("upgrade refused: %s: %s", resp.Status, body)
	}
	if got := resp.Header.Get("Sec-WebSocket-Accept"); got != wsframe.AcceptKey(key) {
		c.Close()
		return nil, resp, fmt.Errorf("upgrade answered with Sec-WebSocket-Accept %q, want %q", got, wsframe.AcceptKey(key))
	}
	_ = c.SetDeadline(time.Time{})
	return &Conn{Conn: c, Reader: br}, resp, nil
}

// WriteFrame sends one final frame with op and payload, masked with a
// random key as a client must.
func (c *Conn) WriteFrame(op wsframe.Opcode, payload []byte) error {
	return WriteFrame(c.Conn, op, payload)
}

// WriteFrame writes one final frame with op and payload to w in a single
// Write, masked with a random key as a client must.
func WriteFrame(w io.Writer, op wsframe.Opcode, payload []byte) error {
	var key [4]byte
	_, _ = rand.Read(key[:])
	_, err := w.Write(wsframe.AppendMaskedFrame(nil, op, true, payload, key))
	return err
}

// ReadFrame reads the next frame the server sent.
func (c *Conn) ReadFrame() (wsframe.Header, []byte, error) {
	return ReadFrame(c.Reader, wsframe.FromServer)
}

// ReadFrame reads one frame sent by from out of r and returns its header
// and its payload, unmasked. The header must keep wsframe.ParseHeader's
// rules and the payload be at most MaxFrame bytes long. It reads nothing
// past the frame.
func ReadFrame(r *bufio.Reader, from wsframe.Sender) (wsframe.Header, []byte, error) {
	for need := 2; ; need++ {
		b, err := r.Peek(need)
		if err != nil {
			if len(b) > 0 && err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return wsframe.Header{}, nil, err
		}
		h, n, err := wsframe.ParseHeader(b, from)
		if errors.Is(err, wsframe.ErrShort) {
			continue
		}
		if err != nil {
			return h, nil, err
		}
		if h.Length > MaxFrame {
			return h, nil, ErrTooBig
		}
		_, _ = r.Discard(n)
		p := make([]byte, h.Length)
		if _, err := io.ReadFull(r, p); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return h, nil, err
		}
		if h.Masked {
			wsframe.Mask(p, h.Key, 0)
		}
		return h, p, nil
	}
}
