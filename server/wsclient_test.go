package server

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"tether/internal/proto"
	"tether/internal/wsframe"
	"tether/internal/wstest"
)

// testClient is a WebSocket client for tests (internal/wstest): it gives
// raw control over reading, so tests can play slow or silent clients.
type testClient struct {
	t    testing.TB
	conn net.Conn      // the socket, for deadlines and abrupt closes
	br   *bufio.Reader // what the server sent after the upgrade
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
	ws, resp, err := wstest.Dial(addr, path, header)
	if err != nil {
		return nil, resp, err
	}
	return &testClient{conn: ws.Conn, br: ws.Reader}, resp, nil
}

func mustDial(t testing.TB, addr string) *testClient {
	t.Helper()
	c, _, err := dialWS(addr, "/ws", nil)
	if err != nil {
		t.Fatalf("cannot dial: %v", err)
	}
	c.t = t
	t.Cleanup(func() { c.conn.Close() })
	w := c.expect(proto.OpWelcome)
	if w["node"] == nil || w["conn"] == nil {
		t.Fatalf("bad welcome: %v", w)
	}
	return c
}

// writeFrame sends one masked frame.
func (c *testClient) writeFrame(op wsframe.Opcode, payload []byte) error {
	return wstest.WriteFrame(c.conn, op, payload)
}

func (c *testClient) send(v any) {
	c.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := c.writeFrame(wsframe.OpText, b); err != nil {
		c.t.Fatalf("cannot send: %v", err)
	}
}

func (c *testClient) sendRaw(s string) {
	c.t.Helper()
	if err := c.writeFrame(wsframe.OpText, []byte(s)); err != nil {
		c.t.Fatalf("cannot send: %v", err)
	}
}

// next reads the next data frame (answering nothing by itself).
func (c *testClient) next(timeout time.Duration) (map[string]any, []byte, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	for {
		h, p, err := wstest.ReadFrame(c.br, wsframe.FromServer)
		if err != nil {
			return nil, nil, err
		}
		switch h.Opcode {
		case wsframe.OpClose:
			code, reason, err := wsframe.DecodeClose(p)
			if err != nil {
				return nil, p, fmt.Errorf("bad close frame from server %q: %w", p, err)
			}
			return nil, p, &closeError{code: code, reason: string(reason)}
		case wsframe.OpPing, wsframe.OpPong:
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
		if m["op"] == proto.OpPing && op != proto.OpPing {
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
