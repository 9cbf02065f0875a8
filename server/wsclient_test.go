package server

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// testClient is a minimal RFC 6455 client for tests: it gives raw control
// over reading, so tests can play slow or silent clients.
type testClient struct {
	t    testing.TB
	conn net.Conn
	br   *bufio.Reader
}

// closeError is returned by next when the server sent a close frame.
type closeError struct {
	code   int
	reason string
}

func (e *closeError) Error() string { return fmt.Sprintf("closed %d %s", e.code, e.reason) }

// dialWS upgrades a connection to addr+path; it returns the response for
// refused upgrades.
func dialWS(addr, path string, header http.Header) (*testClient, *http.Response, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, nil, err
	}
	var key [16]byte
	_, _ = rand.Read(key[:])
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n",
		path, addr, base64.StdEncoding.EncodeToString(key[:]))
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
	_ = c.SetDeadline(time.Time{})
	return &testClient{conn: c, br: br}, resp, nil
}

func mustDial(t testing.TB, addr string) *testClient {
	t.Helper()
	c, _, err := dialWS(addr, "/ws", nil)
	if err != nil {
		t.Fatalf("cannot dial: %v", err)
	}
	c.t = t
	t.Cleanup(func() { c.conn.Close() })
	w := c.expect("welcome")
	if w["node"] == nil || w["conn"] == nil {
		t.Fatalf("bad welcome: %v", w)
	}
	return c
}

// writeFrame sends one masked frame.
func (c *testClient) writeFrame(opcode byte, payload []byte) error {
	hdr := []byte{0x80 | opcode}
	n := len(payload)
	switch {
	case n < 126:
		hdr = append(hdr, 0x80|byte(n))
	case n <= 0xffff:
		hdr = append(hdr, 0x80|126, byte(n>>8), byte(n))
	default:
		hdr = append(hdr, 0x80|127)
		hdr = binary.BigEndian.AppendUint64(hdr, uint64(n))
	}
	var mask [4]byte
	_, _ = rand.Read(mask[:])
	hdr = append(hdr, mask[:]...)
	buf := append(hdr, payload...)
	for i := range payload {
		buf[len(hdr)+i] ^= mask[i%4]
	}
	_, err := c.conn.Write(buf)
	return err
}

func (c *testClient) send(v any) {
	c.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := c.writeFrame(0x1, b); err != nil {
		c.t.Fatalf("cannot send: %v", err)
	}
}

func (c *testClient) sendRaw(s string) {
	c.t.Helper()
	if err := c.writeFrame(0x1, []byte(s)); err != nil {
		c.t.Fatalf("cannot send: %v", err)
	}
}

// next reads the next data frame (answering nothing by itself).
func (c *testClient) next(timeout time.Duration) (map[string]any, []byte, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	for {
		var h [2]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return nil, nil, err
		}
		opcode := h[0] & 0xf
		n := int(h[1] & 0x7f)
		switch n {
		case 126:
			var b [2]byte
			if _, err := io.ReadFull(c.br, b[:]); err != nil {
				return nil, nil, err
			}
			n = int(binary.BigEndian.Uint16(b[:]))
		case 127:
			var b [8]byte
			if _, err := io.ReadFull(c.br, b[:]); err != nil {
				return nil, nil, err
			}
			n = int(binary.BigEndian.Uint64(b[:]))
		}
		if h[1]&0x80 != 0 {
			return nil, nil, errors.New("server frame is masked")
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(c.br, p); err != nil {
			return nil, nil, err
		}
		switch opcode {
		case 0x8:
			ce := &closeError{}
			if len(p) >= 2 {
				ce.code = int(binary.BigEndian.Uint16(p))
				ce.reason = string(p[2:])
			}
			return nil, p, ce
		case 0x9, 0xa:
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(p, &m); err != nil {
			return nil, p, fmt.Errorf("bad JSON from server %q: %w", p, err)
		}
		return m, p, nil
	}
}

// expect reads frames, skipping pings, until one with op arrives.
func (c *testClient) expect(op string) map[string]any {
	c.t.Helper()
	for {
		m, raw, err := c.next(5 * time.Second)
		if err != nil {
			c.t.Fatalf("waiting for %q: %v", op, err)
		}
		if m["op"] == "ping" && op != "ping" {
			continue
		}
		if m["op"] != op {
			c.t.Fatalf("want op %q, got %s", op, raw)
		}
		return m
	}
}

// expectClose reads until the server closes, returning the close code (0
// when the socket closed without a close frame).
func (c *testClient) expectClose(timeout time.Duration) int {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		_, _, err := c.next(time.Until(deadline))
		var ce *closeError
		if errors.As(err, &ce) {
			return ce.code
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				break
			}
			return 0
		}
	}
	c.t.Fatalf("server did not close within %v", timeout)
	return -1
}

func num(v any) uint64 {
	f, _ := v.(float64)
	return uint64(f)
}
