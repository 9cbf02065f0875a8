package client

import "tether/internal/proto"

// Subscriptions the server makes and ends on its own (docs/protocol.md):
// the application's POST /api/subscribe sends a subscribed frame without an
// id, POST /api/unsubscribe and a refreshed token that no longer allows a
// channel send unsubscribed with a reason. A subscription the server made
// is the client's from then on, like one made by Subscribe: restored with
// since after a reconnect, ended by its Unsubscribe.

// applyServerSubscribed adopts a subscription the server made on its own.
// When the client's own subscribe to the channel is on its way (or a
// restore after a reconnect), the frame confirms it instead, and the
// server's refusal of the client's request as a duplicate is then ignored
// (applyError).
func (c *Client) applyServerSubscribed(f *inFrame) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.subs[f.Channel]
	adopted := s == nil
	switch {
	case adopted:
		s = &Subscription{c: c, channel: f.Channel, fn: c.serverMessage, server: true}
		c.subs[f.Channel] = s
	case s.active:
		return // the server refuses a second subscription; not expected
	case s.hasPos && s.pos != position{Offset: f.Offset, Epoch: f.Epoch}:
		// A restore overtaken by the server's subscribe: no since was
		// applied, so what was missed is lost.
		c.enqueueLocked(delivery{ev: &Event{
			Type: EventResyncNeeded, Channel: s.channel, Offset: f.Offset, Epoch: f.Epoch, Reason: ReasonNotRecovered,
		}})
	}
	s.active = true
	s.hasPos = true
	s.pos = position{Offset: f.Offset, Epoch: f.Epoch}
	if adopted {
		c.enqueueLocked(delivery{ev: &Event{Type: EventSubscribed, Channel: s.channel, Offset: f.Offset, Epoch: f.Epoch}})
	}
}

// serverMessage is the handler of the subscriptions the server made.
func (c *Client) serverMessage(m Message) {
	if c.opts.OnServerMessage != nil {
		c.opts.OnServerMessage(m)
	}
}

// overtaken reports whether the refusal perr of the client's subscribe for
// s only says that the server subscribed the client itself meanwhile.
// c.mu must be held.
func overtaken(s *Subscription, perr *Error) bool {
	return s.active && perr.Code == proto.CodeLimit
}

// applyServerUnsubscribed removes a subscription the server ended on its
// own and reports it.
func (c *Client) applyServerUnsubscribed(f *inFrame) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.subs[f.Channel]
	if s == nil || s.removed.Swap(true) {
		return
	}
	delete(c.subs, f.Channel)
	c.enqueueLocked(delivery{ev: &Event{
		Type: EventUnsubscribed, Channel: s.channel, Offset: s.pos.Offset, Epoch: s.pos.Epoch, Reason: f.Reason,
	}})
}
