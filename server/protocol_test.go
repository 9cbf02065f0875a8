package server

import (
	"strings"
	"testing"
	"time"

	"tether/bus"
	"tether/internal/proto"
	"tether/internal/wsframe"
)

func TestProtocolErrors(t *testing.T) {
	ts := startServer(t, Config{MaxSubsPerConn: 2, MaxMessageSize: 100, AllowClientPublish: true})
	c := mustDial(t, ts.addr)
	f := func(frame string, wantCode string, wantID any) {
		t.Helper()
		c.sendRaw(frame)
		e := c.expect("error")
		if e["code"] != wantCode || e["message"] == "" {
			t.Fatalf("%s: got %v, want code %s", frame, e, wantCode)
		}
		if e["id"] != wantID {
			t.Fatalf("%s: id %v, want %v", frame, e["id"], wantID)
		}
	}
	f(`{"op":"subscribe","channel":"a"`, "bad_request", nil)
	f(`not json`, "bad_request", nil)
	f(`{"op":"fly","id":7}`, "bad_request", float64(7))
	f(`{"channel":"a","id":7}`, "bad_request", float64(7))
	f(`{"op":"subscribe","channel":"has space","id":"x"}`, "bad_request", "x")
	f(`{"op":"subscribe","channel":"","id":1}`, "bad_request", float64(1))
	f(`{"op":"subscribe","channel":"`+strings.Repeat("a", 256)+`","id":1}`, "bad_request", float64(1))
	f(`{"op":"subscribe","channel":"a","id":{"x":1}}`, "bad_request", nil)
	f(`{"op":"unsubscribe","channel":"nope","id":2}`, "not_found", float64(2))
	f(`{"op":"publish","channel":"a","id":3}`, "bad_request", float64(3))
	f(`{"op":"publish","channel":"a","data":"`+strings.Repeat("x", 200)+`","id":4}`, "too_large", float64(4))

	c.send(map[string]any{"op": "subscribe", "channel": "a", "id": 1})
	c.expect("subscribed")
	f(`{"op":"subscribe","channel":"a","id":5}`, "limit", float64(5))
	c.send(map[string]any{"op": "subscribe", "channel": "b", "id": 1})
	c.expect("subscribed")
	f(`{"op":"subscribe","channel":"c","id":6}`, "limit", float64(6))

	// The connection survived every error.
	c.send(map[string]any{"op": "publish", "channel": "a", "data": map[string]any{"k": "v"}, "id": 9})
	var gotAck, gotMsg bool
	for !gotAck || !gotMsg {
		m, raw, err := c.next(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		switch m["op"] {
		case "ack":
			gotAck = num(m["id"]) == 9 && num(m["offset"]) == 1
		case "message":
			gotMsg = m["channel"] == "a"
		default:
			t.Fatalf("unexpected %s", raw)
		}
	}
	if n := ts.metric(t, `tether_protocol_errors_total{code="bad_request"}`); n < 9 {
		t.Fatalf("bad_request counted %v times", n)
	}
}

func TestClientPublishForbiddenWhenOpen(t *testing.T) {
	ts := startServer(t, Config{})
	c := mustDial(t, ts.addr)
	c.send(map[string]any{"op": "publish", "channel": "a", "data": 1, "id": 1})
	if e := c.expect("error"); e["code"] != "forbidden" {
		t.Fatalf("got %v", e)
	}
}

func TestPublishUnavailable(t *testing.T) {
	ts := startServer(t, Config{AllowClientPublish: true})
	c := mustDial(t, ts.addr)
	ts.bus.Close()
	c.send(map[string]any{"op": "publish", "channel": "a", "data": 1, "id": 1})
	if e := c.expect("error"); e["code"] != "unavailable" {
		t.Fatalf("got %v", e)
	}
	c.send(map[string]any{"op": "subscribe", "channel": "a", "id": 2})
	if e := c.expect("error"); e["code"] != "unavailable" {
		t.Fatalf("got %v", e)
	}
}

func TestCloseCodes(t *testing.T) {
	ts := startServer(t, Config{MaxMessageSize: 1000, ClientMsgRate: 10, ClientMsgBurst: 5})

	t.Run("binary frame 4400", func(t *testing.T) {
		c := mustDial(t, ts.addr)
		if err := c.writeFrame(wsframe.OpBinary, []byte{1, 2, 3}); err != nil {
			t.Fatal(err)
		}
		if code := c.expectClose(5 * time.Second); code != proto.CloseProtocolViolation {
			t.Fatalf("close %d", code)
		}
	})
	t.Run("oversize frame 1009", func(t *testing.T) {
		c := mustDial(t, ts.addr)
		big := `{"op":"publish","channel":"a","data":"` + strings.Repeat("x", 3000) + `"}`
		if err := c.writeFrame(wsframe.OpText, []byte(big)); err != nil {
			t.Fatal(err)
		}
		if code := c.expectClose(5 * time.Second); code != proto.CloseTooBig {
			t.Fatalf("close %d", code)
		}
	})
	t.Run("rate limited then 4029", func(t *testing.T) {
		c := mustDial(t, ts.addr)
		for range 40 {
			// The server may close before all are written.
			_ = c.writeFrame(wsframe.OpText, []byte(`{"op":"ping"}`))
		}
		sawError := false
		for {
			m, _, err := c.next(5 * time.Second)
			if ce, ok := err.(*closeError); ok {
				if ce.code != proto.CloseRateLimited {
					t.Fatalf("close %d", ce.code)
				}
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if m["op"] == "error" {
				if m["code"] != "rate_limited" {
					t.Fatalf("got %v", m)
				}
				sawError = true
			}
		}
		if !sawError {
			t.Fatal("no rate_limited error before the close")
		}
	})
	eventually(t, 5*time.Second, func() bool {
		return ts.metric(t, `tether_disconnects_total{reason="protocol"}`) == 1 &&
			ts.metric(t, `tether_disconnects_total{reason="too_large"}`) == 1 &&
			ts.metric(t, `tether_disconnects_total{reason="rate_limited"}`) == 1
	}, "disconnects counted by reason")
}

func TestChannelNames(t *testing.T) {
	for _, ok := range []string{"a", "scores.m1", "user.42", "x-y_z:1/2", strings.Repeat("a", 255), `q"uote`} {
		if err := checkChannel(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", " ", "a b", "tab\t", "é", strings.Repeat("a", 256), "nl\n"} {
		if err := checkChannel(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestEncodersProduceValidJSON(t *testing.T) {
	for _, b := range [][]byte{
		appendMessage(nil, `we"ird\`, 7, []byte(`{"a":[1,2]}`)),
		appendSubscribed(nil, "a", 1, "e\x01", true, []byte(`"id"`)),
		appendError(nil, []byte("12"), "bad_request", "bad \"thing\"\n\t\xff"),
		appendWelcome(nil, "n", "c", 25000),
		appendResync(nil, "c", 3, "e", 10),
		appendReconnect(nil, 10),
		appendAck(nil, nil, 3, false),
		appendUnsubscribed(nil, "x", []byte("1")),
	} {
		if !isJSONValue(b) {
			t.Errorf("invalid JSON: %s", b)
		}
	}
}

// TestFramesParse checks the server's frames against the codec's reader:
// every header length encoding for messageFrame, and a close frame whose
// reason must be cut.
func TestFramesParse(t *testing.T) {
	for _, size := range []int{0, 60, 125 - 60, 126, 0xFFFF - 70, 0xFFFF, 70 << 10} {
		m := bus.Message{Channel: "c", Offset: 1, Data: []byte(`"` + strings.Repeat("x", size) + `"`)}
		f := messageFrame(m)
		h, n, err := wsframe.ParseHeader(f, wsframe.FromServer)
		if err != nil || !h.Fin || h.Opcode != wsframe.OpText || int(h.Length) != len(f)-n {
			t.Fatalf("data of %d bytes: header %+v, %d bytes, %v, frame of %d bytes", size, h, n, err, len(f))
		}
		if want := appendMessage(nil, m.Channel, m.Offset, m.Data); string(f[n:]) != string(want) {
			t.Fatalf("data of %d bytes: payload differs from appendMessage's", size)
		}
	}
	f := closeFrame(proto.CloseSlowConsumer, strings.Repeat("é", 100))
	h, n, err := wsframe.ParseHeader(f, wsframe.FromServer)
	if err != nil || h.Opcode != wsframe.OpClose || int(h.Length) != len(f)-n {
		t.Fatalf("close frame: header %+v, %d bytes, %v", h, n, err)
	}
	if code, reason, err := wsframe.DecodeClose(f[n:]); err != nil || code != proto.CloseSlowConsumer || len(reason) > wsframe.MaxCloseReason {
		t.Fatalf("close frame: code %d, reason of %d bytes, %v", code, len(reason), err)
	}
}

func FuzzDecodeClientFrame(f *testing.F) {
	for _, s := range []string{
		`{"op":"subscribe","channel":"scores.m1","id":1}`,
		`{"op":"subscribe","channel":"scores.m1","since":{"offset":41,"epoch":"e1"},"id":1}`,
		`{"op":"unsubscribe","channel":"scores.m1","id":2}`,
		`{"op":"publish","channel":"chat.r1","data":{"x":[1,2,3]},"id":3}`,
		`{"op":"pong"}`, `{"op":"ping"}`, `{}`, `[]`, `null`, `{"op":1}`,
		`{"op":"subscribe","channel":"a","since":{"offset":-1}}`,
		`{"op":"publish","channel":"a","data":null,"id":"x"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := decodeClientFrame(b)
		if err != nil {
			if err.code != proto.CodeBadRequest {
				t.Fatalf("decoder error code %q", err.code)
			}
			if len(fr.ID) > 0 && !validID(fr.ID) {
				t.Fatalf("invalid id echoed: %q", fr.ID)
			}
			return
		}
		if fr.Op == proto.OpSubscribe || fr.Op == proto.OpUnsubscribe || fr.Op == proto.OpPublish {
			if checkChannel(fr.Channel) != nil {
				t.Fatalf("invalid channel accepted: %q", fr.Channel)
			}
		}
		if fr.Op == proto.OpPublish && !isJSONValue(fr.Data) {
			t.Fatalf("invalid data accepted: %q", fr.Data)
		}
		// Whatever was accepted must encode back into valid frames.
		if !isJSONValue(appendError(nil, fr.ID, "x", "y")) {
			t.Fatalf("id %q breaks the error frame", fr.ID)
		}
		if fr.Op == proto.OpPublish && !isJSONValue(appendMessage(nil, fr.Channel, 1, fr.Data)) {
			t.Fatalf("message frame invalid for %q", b)
		}
	})
}

func FuzzGlobMatch(f *testing.F) {
	for _, s := range [][2]string{{"scores.*", "scores.m1"}, {"*", ""}, {"a?c", "abc"}, {"*.*.*", "a.b"}, {"**a", "aaaa"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, s string) {
		if len(pattern) > 64 || len(s) > 64 {
			return
		}
		if got, want := globMatch(pattern, s), globRef(pattern, s); got != want {
			t.Fatalf("globMatch(%q, %q) = %v, want %v", pattern, s, got, want)
		}
	})
}

// globRef is an obviously correct reference matcher: the recursive
// definition of '*' and '?', memoised on (pattern offset, string offset) so
// that patterns of many stars, which made the plain recursion exponential
// and hung the fuzzer, stay O(len(p)·len(s)).
func globRef(p, s string) bool {
	memo := make(map[[2]int]bool)
	var match func(i, j int) bool
	match = func(i, j int) bool {
		key := [2]int{i, j}
		if v, ok := memo[key]; ok {
			return v
		}
		var v bool
		switch {
		case i == len(p):
			v = j == len(s)
		case p[i] == '*':
			v = match(i+1, j) || (j < len(s) && match(i, j+1))
		case p[i] == '?':
			v = j < len(s) && match(i+1, j+1)
		default:
			v = j < len(s) && s[j] == p[i] && match(i+1, j+1)
		}
		memo[key] = v
		return v
	}
	return match(0, 0)
}
