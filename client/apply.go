package client

import (
	"fmt"
	"time"

	"tether/internal/proto"
)

// readLoop reads conn's frames until it fails and applies them; it returns
// why the connection ended. It runs on the connection's reader goroutine
// and never calls user code.
func (c *Client) readLoop(conn *wsConn) error {
	for {
		f, err := conn.next()
		if err != nil {
			return err
		}
		if err := c.apply(conn, f); err != nil {
			conn.close(proto.CloseNormal, "", conn.closeWait())
			return err
		}
	}
}

// apply applies one server frame. A non-nil error ends the connection.
func (c *Client) apply(conn *wsConn, f *inFrame) error {
	switch f.Op {
	case proto.OpMessage:
		return c.applyMessage(f)
	case proto.OpSubscribed:
		c.applySubscribed(f)
	case proto.OpAck:
		c.answer(f.ID, reply{offset: f.Offset, replayed: f.Replayed})
	case proto.OpError:
		return c.applyError(f)
	case proto.OpResync:
		c.mu.Lock()
		if s := c.subs[f.Channel]; s != nil && s.active {
			s.pos = position{Offset: f.Offset, Epoch: f.Epoch}
			c.enqueueLocked(delivery{ev: &Event{
				Type: EventResyncNeeded, Channel: s.channel, Offset: f.Offset, Epoch: f.Epoch,
				Reason: ReasonResync, After: time.Duration(f.AfterMS) * time.Millisecond,
			}})
		}
		c.mu.Unlock()
	case proto.OpReconnect:
		conn.reconnectAt.Store(time.Now().Add(time.Duration(max(0, f.AfterMS)) * time.Millisecond).UnixNano())
	case proto.OpPing:
		if err := conn.writeText(pongJSON); err != nil {
			return err
		}
	case proto.OpPresence, proto.OpJoin, proto.OpLeave:
		c.applyPresence(f)
	case proto.OpRefreshDue:
		select {
		case c.refreshDue <- struct{}{}:
		default:
		}
	case proto.OpRefreshed:
		c.answer(f.ID, reply{exp: f.Exp})
	case proto.OpUnsubscribed:
		if f.Reason != "" {
			c.applyServerUnsubscribed(f)
		}
	}
	// pong, the answer to our unsubscribe and unknown ops need nothing.
	return nil
}

func (c *Client) applyMessage(f *inFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.subs[f.Channel]
	if s == nil || !s.active || f.Offset <= s.pos.Offset {
		// Not ours (any more), sent before the subscribe took effect, or
		// already delivered.
		return nil
	}
	if len(c.queue) >= c.opts.queueSize() {
		return fmt.Errorf("cannot queue message of %q: %w", f.Channel, ErrSlowHandler)
	}
	if f.Offset != s.pos.Offset+1 {
		c.enqueueLocked(delivery{ev: &Event{
			Type: EventResyncNeeded, Channel: s.channel, Offset: f.Offset, Epoch: s.pos.Epoch, Reason: ReasonGap,
		}})
	}
	s.pos.Offset = f.Offset
	c.enqueueLocked(delivery{sub: s, msg: Message{Channel: s.channel, Offset: f.Offset, Epoch: s.pos.Epoch, Data: f.Data}})
	return nil
}

func (c *Client) applySubscribed(f *inFrame) {
	if f.ID == 0 { // the client's requests have ids from 1
		c.applyServerSubscribed(f)
		return
	}
	c.mu.Lock()
	req := c.pending[f.ID]
	if req == nil || req.sub == nil {
		c.mu.Unlock()
		return
	}
	delete(c.pending, f.ID)
	s := req.sub
	if !s.removed.Load() {
		s.active = true
		switch {
		case req.since && f.Recovered && f.Epoch == s.pos.Epoch:
			// Every message after s.pos follows; older ones are dropped.
			c.enqueueLocked(delivery{ev: &Event{Type: EventRecovered, Channel: s.channel, Offset: s.pos.Offset, Epoch: s.pos.Epoch}})
		case req.since:
			s.pos = position{Offset: f.Offset, Epoch: f.Epoch}
			c.enqueueLocked(delivery{ev: &Event{
				Type: EventResyncNeeded, Channel: s.channel, Offset: f.Offset, Epoch: f.Epoch, Reason: ReasonNotRecovered,
			}})
		default:
			s.pos = position{Offset: f.Offset, Epoch: f.Epoch}
			s.hasPos = true
		}
	}
	c.mu.Unlock()
	if req.reply != nil {
		req.reply <- reply{}
	}
}

func (c *Client) applyError(f *inFrame) error {
	perr := &Error{Code: f.Code, Message: f.Message}
	c.mu.Lock()
	req := c.pending[f.ID]
	if req == nil {
		c.mu.Unlock()
		c.log.Debug("tether error frame", "url", c.url.Redacted(), "code", f.Code, "message", f.Message)
		return nil
	}
	delete(c.pending, f.ID)
	s := req.sub
	if s == nil {
		c.mu.Unlock()
		req.reply <- reply{err: perr}
		return nil
	}
	if overtaken(s, perr) {
		c.mu.Unlock()
		if req.reply != nil {
			req.reply <- reply{}
		}
		return nil
	}
	if req.reply == nil && perr.temporary() {
		// A restore the server cannot serve now: reconnect with backoff
		// and try again rather than lose the subscription.
		c.mu.Unlock()
		return fmt.Errorf("cannot restore subscription to %q: %w", s.channel, perr)
	}
	if !s.removed.Swap(true) {
		if c.subs[s.channel] == s {
			delete(c.subs, s.channel)
		}
		if req.reply == nil {
			c.enqueueLocked(delivery{ev: &Event{
				Type: EventSubscribeFailed, Channel: s.channel, Offset: s.pos.Offset, Epoch: s.pos.Epoch, Err: perr,
			}})
		}
	}
	c.mu.Unlock()
	if req.reply != nil {
		req.reply <- reply{err: perr}
	}
	return nil
}

// answer completes the request id with r.
func (c *Client) answer(id uint64, r reply) {
	c.mu.Lock()
	req := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	if req != nil && req.reply != nil {
		req.reply <- r
	}
}
