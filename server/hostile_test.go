package server

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"tether/internal/proto"
	"tether/internal/wsframe"
	"tether/internal/wstest"
)

// The hostile inputs of docs/security.md, each sent over a real socket to a
// running node, each with its documented answer. After each, the node must
// still serve: a bystander subscribed before the attack receives a message
// published after it.

// rawHTTP sends req on a new connection and returns the response and
// whether the server closed the connection after it (EOF within 3 s).
func rawHTTP(t *testing.T, addr, req string) (*http.Response, string, bool) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no response to %q: %v", req, err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	rest, err := io.ReadAll(br)
	closed := err == nil // io.ReadAll returns nil at EOF
	if len(rest) > 0 {
		t.Fatalf("more after the answer to %q: %q", req, rest)
	}
	return resp, string(body), closed
}

// checkJSONError checks a refusal: status, a JSON error body with code,
// and a closed connection.
func checkJSONError(t *testing.T, name string, resp *http.Response, body string, closed bool, status int, code string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Errorf("%s: status %d, want %d (%s)", name, resp.StatusCode, status, body)
		return
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type %q", name, ct)
	}
	var e struct {
		Error struct{ Code, Message string }
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error.Code != code || e.Error.Message == "" {
		t.Errorf("%s: body %q, want code %q", name, body, code)
	}
	if !closed {
		t.Errorf("%s: the connection stayed open", name)
	}
}

// bystander subscribes to a channel and checks, at the end of the test,
// that a message published then still reaches it.
func bystander(t *testing.T, ts *testServer) {
	t.Helper()
	b := mustDial(t, ts.addr)
	b.send(map[string]any{"op": proto.OpSubscribe, "id": 1, "channel": "bystander"})
	b.expect(proto.OpSubscribed)
	t.Cleanup(func() {
		if t.Failed() {
			return
		}
		if code, _ := ts.publish(t, `{"channel":"bystander","data":"still here"}`); code != 200 {
			t.Errorf("publish after the attack: %d", code)
			return
		}
		if m := b.expect(proto.OpMessage); m["data"] != "still here" {
			t.Errorf("bystander got %v", m)
		}
	})
}

func TestHostileHTTP(t *testing.T) {
	secret := testSecret
	ts := startServer(t, Config{JWTSecret: secret, MaxHeaderBytes: 4096, MaxAPIBody: 1 << 20})
	exp := time.Now().Add(time.Hour).Unix()
	token := makeJWT(secret, "HS256", map[string]any{"sub": "u", "exp": exp, "channels": []string{"*"}})
	bystanderToken := "?token=" + token
	b, _, err := dialWS(ts.addr, "/ws"+bystanderToken, nil)
	if err != nil {
		t.Fatal(err)
	}
	b.t = t
	defer b.conn.Close()
	b.expect(proto.OpWelcome)
	b.send(map[string]any{"op": proto.OpSubscribe, "id": 1, "channel": "bystander"})
	b.expect(proto.OpSubscribed)

	t.Run("requests", func(t *testing.T) { hostileRequests(t, ts, token) })
	// The bystander is untouched and the node still publishes to it.
	if code, _ := ts.publish(t, `{"channel":"bystander","data":"still here"}`); code != 200 {
		t.Fatalf("publish after the attack: %d", code)
	}
	if m := b.expect(proto.OpMessage); m["data"] != "still here" {
		t.Fatalf("bystander got %v", m)
	}
}

func hostileRequests(t *testing.T, ts *testServer, token string) {
	up := "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
	key := "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	for _, tc := range []struct {
		name, req string
		status    int
		code      string
	}{
		{"two Content-Length on the API", "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}GET /api/publish HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"},
		{"obs-fold carrying a token", up + key + "X-Note: a\r\n Authorization: Bearer " + token + "\r\n\r\n", 400, "bad_request"},
		{"Transfer-Encoding with Content-Length", "POST /api/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400, "bad_request"},
		{"bare LF", "GET /healthz HTTP/1.1\nHost: x\n\n", 400, "bad_request"},
		{"no Host", "GET /healthz HTTP/1.1\r\n\r\n", 400, "bad_request"},
		{"upgrade without a key", up + "\r\n", 400, "bad_request"},
		{"upgrade with version 12", strings.Replace(up, "13", "12", 1) + key + "\r\n", 426, "bad_request"},
		{"upgrade with POST", strings.Replace(up, "GET", "POST", 1) + key + "\r\n", 405, "method_not_allowed"},
		{"upgrade with a body", up + key + "Content-Length: 3\r\n\r\nabc", 400, "bad_request"},
		{"upgrade without a token", up + key + "\r\n", 401, "unauthorized"},
		{"head over the bound", "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + strings.Repeat("a", 5000), 431, "too_large"},
		{"API body over the bound", "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n{", 413, "too_large"},
		{"API body without credentials", "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n", 401, "unauthorized"},
		{"forged 9 KiB token", "GET /ws?token=" + strings.Repeat("a", 9000) + " HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" + key + "\r\n", 431, "too_large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			resp, body, closed := rawHTTP(t, ts.addr, tc.req)
			checkJSONError(t, tc.name, resp, body, closed, tc.status, tc.code)
		})
	}
}

// TestUpgradeWithFirstFrame sends the upgrade request and the first frame
// in one write: the frame is read after the upgrade, not dropped.
func TestUpgradeWithFirstFrame(t *testing.T) {
	ts := startServer(t, Config{})
	c, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	frame := wsframe.AppendMaskedFrame(nil, wsframe.OpText, true, []byte(`{"op":"subscribe","channel":"first","id":7}`), [4]byte{1, 2, 3, 4})
	if _, err := c.Write(append([]byte(req), frame...)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	tc := &testClient{t: t, conn: c, br: br}
	tc.expect(proto.OpWelcome)
	if m := tc.expect(proto.OpSubscribed); num(m["id"]) != 7 {
		t.Fatalf("subscribed %v", m)
	}
}

// frame builds a raw client frame: b0 is the first byte (FIN, RSV,
// opcode), length is what the header declares, payload what follows
// (masked with key 0 when masked, so it reads as sent).
func rawFrame(b0 byte, masked bool, length uint64, payload []byte) []byte {
	b := []byte{b0}
	m := byte(0)
	if masked {
		m = 0x80
	}
	switch {
	case length < 126:
		b = append(b, m|byte(length))
	case length <= 0xffff:
		b = append(b, m|126)
		b = binary.BigEndian.AppendUint16(b, uint16(length))
	default:
		b = append(b, m|127)
		b = binary.BigEndian.AppendUint64(b, length)
	}
	if masked {
		b = append(b, 0, 0, 0, 0)
	}
	return append(b, payload...)
}

func TestHostileFrames(t *testing.T) {
	ts := startServer(t, Config{MaxMessageSize: 4096})
	bystander(t, ts)
	closePayload := func(code int) []byte { return binary.BigEndian.AppendUint16(nil, uint16(code)) }
	for _, tc := range []struct {
		name string
		send []byte
		code int
	}{
		{"continuation of 2^63-6 bytes after a fragment", append(rawFrame(0x01, true, 1, []byte("{")), rawFrame(0x00, true, 1<<63-6, nil)...), wsframe.CloseTooBig},
		{"unmasked frame", rawFrame(0x81, false, 2, []byte("{}")), wsframe.CloseProtocolError},
		{"invalid UTF-8", rawFrame(0x81, true, 2, []byte{0xc3, 0x28}), wsframe.CloseInvalidPayload},
		{"ping over 125 bytes", rawFrame(0x89, true, 126, make([]byte, 126)), wsframe.CloseProtocolError},
		{"RSV1", rawFrame(0xc1, true, 2, []byte("{}")), wsframe.CloseProtocolError},
		{"RSV3", rawFrame(0x91, true, 2, []byte("{}")), wsframe.CloseProtocolError},
		{"opcode 3", rawFrame(0x83, true, 0, nil), wsframe.CloseProtocolError},
		{"opcode 0xB", rawFrame(0x8b, true, 0, nil), wsframe.CloseProtocolError},
		{"fragmented ping", rawFrame(0x09, true, 0, nil), wsframe.CloseProtocolError},
		{"continuation without a start", rawFrame(0x80, true, 2, []byte("{}")), wsframe.CloseProtocolError},
		{"interleaved data frames", append(rawFrame(0x01, true, 1, []byte("{")), rawFrame(0x81, true, 2, []byte("{}"))...), wsframe.CloseProtocolError},
		{"64-bit length with the top bit", rawFrame(0x81, true, 1<<63|5, nil), wsframe.CloseProtocolError},
		{"length not minimal", append([]byte{0x81, 0x80 | 126, 0, 2, 0, 0, 0, 0}, '{', '}'), wsframe.CloseProtocolError},
		{"close of 1 byte", rawFrame(0x88, true, 1, []byte{3}), wsframe.CloseProtocolError},
		{"close code 1005", rawFrame(0x88, true, 2, closePayload(1005)), wsframe.CloseProtocolError},
		{"close code 999", rawFrame(0x88, true, 2, closePayload(999)), wsframe.CloseProtocolError},
		{"close reason not UTF-8", rawFrame(0x88, true, 4, append(closePayload(1000), 0xff, 0xfe)), wsframe.CloseInvalidPayload},
		{"message over the bound", rawFrame(0x81, true, 6000, nil), wsframe.CloseTooBig},
		{"binary message", rawFrame(0x82, true, 2, []byte("{}")), proto.CloseProtocolViolation},
		{"clean close", rawFrame(0x88, true, 2, closePayload(1000)), wsframe.CloseNormal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := mustDial(t, ts.addr)
			if _, err := c.conn.Write(tc.send); err != nil {
				t.Fatal(err)
			}
			if got := c.expectClose(5 * time.Second); got != tc.code {
				t.Errorf("close %d, want %d", got, tc.code)
			}
			// The server then closes the socket (at once after a clean
			// close, within the close grace otherwise).
			_ = c.conn.SetReadDeadline(time.Now().Add(closeGrace + 2*time.Second))
			if _, err := io.Copy(io.Discard, c.br); err != nil {
				t.Errorf("the server did not close the socket: %v", err)
			}
		})
	}
}

// TestPingFloodIsRateLimited checks that WebSocket pings take tokens of
// the client's rate like any frame: past the burst they are dropped, one
// rate_limited error is sent, and the connection is closed with 4029.
func TestPingFloodIsRateLimited(t *testing.T) {
	ts := startServer(t, Config{ClientMsgRate: 10, ClientMsgBurst: 20})
	bystander(t, ts)
	c := mustDial(t, ts.addr)
	var flood []byte
	for range 200 {
		flood = append(flood, rawFrame(0x89, true, 7, []byte("ping!!!"))...)
	}
	go func() { _, _ = c.conn.Write(flood) }()
	pongs, errs := 0, 0
	_ = c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		h, p, err := wsReadAny(c.br)
		if err != nil {
			t.Fatalf("after %d pongs: %v", pongs, err)
		}
		if h.Opcode == wsframe.OpPong {
			pongs++
			continue
		}
		if h.Opcode == wsframe.OpText && strings.Contains(string(p), proto.CodeRateLimited) {
			errs++
			continue
		}
		if h.Opcode == wsframe.OpClose {
			code, _, _ := wsframe.DecodeClose(p)
			if code != proto.CloseRateLimited {
				t.Fatalf("close %d, want %d", code, proto.CloseRateLimited)
			}
			break
		}
	}
	if pongs > 21 || errs != 1 {
		t.Fatalf("%d pongs (want ≤ burst+1), %d rate_limited errors (want 1)", pongs, errs)
	}
}

func wsReadAny(br *bufio.Reader) (wsframe.Header, []byte, error) {
	for {
		h, p, err := wstest.ReadFrame(br, wsframe.FromServer)
		if err != nil || h.Opcode != wsframe.OpPing {
			return h, p, err
		}
	}
}

// TestSlowlorisHead sends a head in 1-byte pieces: the socket is
// closed by the handshake deadline, never holding more than the head bound.
func TestSlowlorisHead(t *testing.T) {
	ts := startServer(t, Config{HandshakeTimeout: 500 * time.Millisecond})
	c, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	for i := 0; ; i++ {
		if _, err := c.Write([]byte("G")); err != nil {
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatal("the socket is still open after 5 s of a trickled head")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
