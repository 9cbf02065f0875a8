package client

import (
	"context"
	"fmt"

	"tether/internal/proto"
)

// Presence is a channel's presence as the server read it.
type Presence struct {
	// Clients is the number of connections subscribed to the channel,
	// cluster-wide; Users the number of distinct users among them. Both
	// are exact.
	Clients, Users int
	// Members lists some of them, at most the server's
	// --presence-max-members; Truncated reports that there are more.
	Members   []Member
	Truncated bool
}

// Member is one connection in a channel's presence.
type Member struct {
	User string `json:"user"`
	Conn string `json:"conn"`
}

// Presence reads channel's presence. The channel needs presence on the
// server (--presence or --join-leave) and the right to subscribe to it;
// otherwise the error wraps an *Error with code not_found or
// forbidden. While disconnected it waits for the next connection.
func (c *Client) Presence(ctx context.Context, channel string) (Presence, error) {
	for {
		c.mu.Lock()
		if c.closed {
			err := c.err
			c.mu.Unlock()
			return Presence{}, err
		}
		conn := c.conn
		if conn == nil {
			up := c.up
			c.mu.Unlock()
			select {
			case <-up:
			case <-c.ctx.Done():
			case <-ctx.Done():
				return Presence{}, ctx.Err()
			}
			continue
		}
		id := c.newIDLocked()
		req := &request{reply: make(chan reply, 1)}
		c.pending[id] = req
		c.mu.Unlock()

		if err := conn.writeJSON(outFrame{Op: proto.OpPresence, Channel: channel, ID: id}); err != nil {
			c.forget(id)
			return Presence{}, fmt.Errorf("cannot read presence of %q: %w", channel, ErrDisconnected)
		}
		select {
		case r := <-req.reply:
			if r.err != nil {
				return Presence{}, fmt.Errorf("cannot read presence of %q: %w", channel, r.err)
			}
			return *r.presence, nil
		case <-ctx.Done():
			c.forget(id)
			return Presence{}, ctx.Err()
		}
	}
}

// applyPresence handles the server's presence answer and its join and
// leave frames.
func (c *Client) applyPresence(f *inFrame) {
	switch f.Op {
	case proto.OpPresence:
		c.answer(f.ID, reply{presence: &Presence{Clients: f.Clients, Users: f.Users, Members: f.Members, Truncated: f.Truncated}})
	case proto.OpJoin, proto.OpLeave:
		typ := EventJoin
		if f.Op == proto.OpLeave {
			typ = EventLeave
		}
		c.mu.Lock()
		if s := c.subs[f.Channel]; s != nil && s.active {
			c.enqueueLocked(delivery{ev: &Event{Type: typ, Channel: f.Channel, User: f.User, Conn: f.Conn}})
		}
		c.mu.Unlock()
	}
}
