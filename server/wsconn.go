package server

import (
	"errors"

	"tether/internal/proto"
	"tether/internal/wsframe"
)

// The read side of an upgraded connection: conn is the wsHandler of its
// own wsReader (wsread.go). Everything here runs on the socket's poller
// goroutine, one call at a time.
//
// What a client's frames cost and how each is answered (docs/security.md):
// every frame, control frames and fragments included, takes a token of
// the client's rate (ClientMsgRate); a frame over it is dropped, the first
// such frame is answered with a rate_limited error and more than
// ClientMsgBurst strikes close the connection with 4029. A ping is
// answered with a pong carrying its payload; a pong only proves liveness;
// a close frame is answered with a close frame carrying the same code, and
// the socket is closed once it is written. A frame that breaks RFC 6455 is
// answered with the close code wsReader gives (1002, 1007 or 1009).

// errStopReading stops a wsReader after the handler has acted (closed the
// connection): feed returns it and the reader reads nothing more.
var errStopReading = errors.New("server: connection is closing")

// onWSData reads the bytes the client sent after its upgrade.
func (c *conn) onWSData(data []byte) {
	if c.readDone {
		return
	}
	err := c.rd.feed(data, c)
	if err == nil {
		return
	}
	c.readDone = true
	if errors.Is(err, errStopReading) {
		return
	}
	var fe *wsframe.Error
	if !errors.As(err, &fe) {
		c.srv.closeConn(c, wsframe.CloseInternalError, "internal error", "error")
		return
	}
	reason := "protocol"
	if fe.Code == wsframe.CloseTooBig {
		reason = "too_large"
	}
	c.srv.m.frameError(fe)
	c.srv.closeConn(c, fe.Code, fe.Reason, reason)
}

// wsFrame counts every frame against the client's rate before its payload
// is read. A close frame is always read: it is how a client says goodbye.
func (c *conn) wsFrame(h wsframe.Header) error {
	now := c.srv.clock.Load()
	c.lastSeen.Store(now)
	if h.Opcode == wsframe.OpClose {
		return nil
	}
	over := !c.allow(now)
	if h.Opcode.IsControl() {
		c.dropCtrl = over
	} else if over {
		c.dropMsg = true
	}
	if !over {
		return nil
	}
	if int(c.strikes) > c.srv.cfg.ClientMsgBurst {
		c.srv.closeConn(c, proto.CloseRateLimited, "rate limited", "rate_limited")
		return errStopReading
	}
	if c.strikes == 1 {
		c.replyError(nil, errf(proto.CodeRateLimited, "too many frames: slow down"))
	} else {
		c.srv.m.protocolErrors(proto.CodeRateLimited).Inc()
	}
	return nil
}

// wsMessage handles a complete message: a protocol frame in a text message.
func (c *conn) wsMessage(op wsframe.Opcode, msg []byte) error {
	if c.dropMsg {
		c.dropMsg = false
		return nil
	}
	// Every connection answers every ping, and every client spells the
	// answer the same way: compared byte for byte, a pong costs no lock
	// and no JSON decode (630 ns and 6 allocations; at 1M connections,
	// 40,000 a second). It does nothing, closing or not; any other
	// spelling is decoded by onText, with the same outcome.
	if op == wsframe.OpText && string(msg) == pongJSON {
		return nil
	}
	if c.isClosing() {
		return nil // after our close frame nothing the peer sends matters
	}
	if op != wsframe.OpText {
		c.srv.m.protocolErrors("binary").Inc()
		c.srv.closeConn(c, proto.CloseProtocolViolation, "binary frames are not part of the protocol", "protocol")
		return errStopReading
	}
	c.onText(msg)
	return nil
}

// wsControl answers a ping, notes a pong and answers a close.
func (c *conn) wsControl(op wsframe.Opcode, payload []byte) error {
	drop := c.dropCtrl
	c.dropCtrl = false
	switch op {
	case wsframe.OpPing:
		if !drop && !c.isClosing() {
			c.send(frameFromPayload(wsframe.OpPong, payload))
		}
	case wsframe.OpClose:
		c.readDone = true
		code, _, _ := wsframe.DecodeClose(payload) // wsReader checked it
		c.answerClose(code)
	}
	return nil
}

func (c *conn) isClosing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing
}

// answerClose answers the client's close frame. If the server had sent
// its own close frame first, this is the answer to it and the socket is
// closed now; otherwise the server answers with the client's code (an empty
// close frame when it gave none) and closes the socket once that is
// written, so that the server, not the client, holds the TIME_WAIT state
// (RFC 6455 section 7.1.1).
func (c *conn) answerClose(code int) {
	var p []byte
	if code != wsframe.CloseNoStatus {
		p = wsframe.AppendClose(make([]byte, 0, 2), code, "")
	}
	if !c.queueClose(frameFromPayload(wsframe.OpClose, p), nil, reasonCloseFrame, true) {
		c.closeGracefully() // our own close frame was answered
	}
}

// onText handles one protocol frame from the client.
func (c *conn) onText(data []byte) {
	f, perr := decodeClientFrame(data)
	if perr != nil {
		c.replyError(f.ID, perr)
		return
	}
	switch f.Op {
	case proto.OpPong:
	case proto.OpPing:
		c.send(pongFrame)
	case proto.OpSubscribe:
		c.srv.subscribe(c, f)
	case proto.OpUnsubscribe:
		c.srv.unsubscribe(c, f)
	case proto.OpPublish:
		c.srv.clientPublish(c, f)
	case proto.OpPresence:
		c.srv.clientPresence(c, f)
	case proto.OpRefresh:
		c.srv.refresh(c, f)
	}
}
