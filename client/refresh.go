package client

import (
	"context"
	"fmt"
	"sync"
	"time"

	"tether/internal/proto"
)

// Token refresh in place (docs/protocol.md, "Token refresh"): on the
// server's refresh_due the client asks GetToken for a new token and sends it
// in a refresh frame on the open connection. Without GetToken nothing is
// done: the connection is closed with 4001 at exp, as the server says.

// refresher runs the refreshes of one connection, one at a time, on a
// goroutine of their own so that GetToken never stalls the reader or the
// watchdog; serve stops it, and waits for it, before the connection is
// given up.
type refresher struct {
	c      *Client
	conn   *wsConn
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	busy   bool // a refresh is running
}

func (c *Client) startRefreshes(conn *wsConn) *refresher {
	r := &refresher{c: c, conn: conn}
	r.ctx, r.cancel = context.WithCancel(c.ctx)
	return r
}

// start begins a refresh unless one is running or GetToken is nil.
func (r *refresher) start() {
	if r.c.opts.GetToken == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.busy || r.ctx.Err() != nil {
		return
	}
	r.busy = true
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.c.refresh(r.ctx, r.conn)
		r.mu.Lock()
		r.busy = false
		r.mu.Unlock()
	}()
}

// stop cancels a running refresh and waits for it.
func (r *refresher) stop() {
	r.cancel()
	r.wg.Wait()
}

// refresh gets a token and has conn's server accept it, reporting the
// outcome as an event.
func (c *Client) refresh(ctx context.Context, conn *wsConn) {
	token, err := c.getToken(ctx)
	if err != nil {
		if ctx.Err() == nil {
			c.emit(Event{Type: EventRefreshFailed, Err: fmt.Errorf("cannot get a token: %w", err)})
		}
		return
	}
	c.mu.Lock()
	if c.conn != conn {
		c.mu.Unlock()
		return
	}
	id := c.newIDLocked()
	req := &request{reply: make(chan reply, 1)}
	c.pending[id] = req
	c.mu.Unlock()
	if err := conn.writeJSON(outFrame{Op: proto.OpRefresh, Token: token, ID: id}); err != nil {
		c.forget(id)
		return
	}
	select {
	case r := <-req.reply:
		if r.err != nil {
			c.log.Debug("tether token refresh refused", "url", c.url.Redacted(), "err", r.err)
			c.emit(Event{Type: EventRefreshFailed, Err: fmt.Errorf("cannot refresh the token: %w", r.err)})
			return
		}
		c.emit(Event{Type: EventTokenRefreshed, Exp: time.Unix(r.exp, 0)})
	case <-ctx.Done():
		c.forget(id)
	}
}
