package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"tether/internal/proto"
)

// getToken returns the token for the next attempt.
func (c *Client) getToken(ctx context.Context) (string, error) {
	if c.opts.GetToken == nil {
		return c.opts.Token, nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.handshakeTimeout())
	defer cancel()
	return c.opts.GetToken(ctx)
}

func (c *Client) emitConnected(conn *wsConn) {
	w := &conn.welcome
	c.log.Debug("tether connected", "url", c.url.Redacted(), "node", w.Node, "conn", w.Conn)
	c.emit(Event{Type: EventConnected, Node: w.Node, Conn: w.Conn, PingInterval: w.pingInterval(0)})
}

// run is the client's lifecycle goroutine: it serves each connection (and
// runs its watchdog), and waits and reconnects in between. conn is the connection Dial made
// (attached, with reqs restoring subscriptions), or nil.
func (c *Client) run(conn *wsConn, reqs []outFrame) {
	defer c.finish()
	var (
		err      error         // why the last connection or attempt failed
		wait     time.Duration // before the next attempt
		failures int           // consecutive failed attempts
	)
	for {
		if conn != nil {
			var keep bool
			err, wait, keep = c.serve(conn, reqs)
			conn = nil
			if keep {
				wait = fullJitter(backoffWindow(c.opts.minBackoff(), c.opts.maxBackoff(), failures))
			} else {
				failures = 0
			}
		}
		if c.ctx.Err() != nil {
			c.stop(ErrClosed, err)
			return
		}
		if errors.Is(err, ErrUnauthorized) {
			if c.opts.GetToken == nil {
				c.log.Warn("tether token refused; not reconnecting", "url", c.url.Redacted(), "err", err)
				c.stop(err, err)
				return
			}
			c.refused, c.rejected = true, c.token
		}
		if err != nil {
			c.log.Debug("tether disconnected", "url", c.url.Redacted(), "err", err, "retry_in", wait)
			c.emit(Event{Type: EventDisconnected, Err: err, Delay: wait})
		}
		if !c.sleep(wait) {
			c.stop(ErrClosed, nil)
			return
		}
		failures++
		c.emit(Event{Type: EventConnecting, Attempt: failures})
		conn, err = c.attempt()
		switch {
		case err == nil:
			c.refused, c.rejected = false, ""
			c.emitConnected(conn)
			reqs = c.attach(conn)
		case c.ctx.Err() != nil:
			err = nil
		default:
			wait = fullJitter(backoffWindow(c.opts.minBackoff(), c.opts.maxBackoff(), failures))
			var he *HandshakeError
			if errors.As(err, &he) && he.RetryAfter > 0 {
				// The server already spread its advice; the jitter spreads
				// clients within its one-second resolution.
				wait = he.RetryAfter + fullJitter(time.Second)
			}
		}
	}
}

// attempt makes one connection attempt.
func (c *Client) attempt() (*wsConn, error) {
	token, err := c.getToken(c.ctx)
	if err != nil {
		return nil, fmt.Errorf("cannot get a token: %w", err)
	}
	if c.refused && token == c.rejected {
		return nil, fmt.Errorf("%w: GetToken returned the refused token", ErrUnauthorized)
	}
	c.token = token
	ctx, cancel := context.WithTimeout(c.ctx, c.opts.handshakeTimeout())
	defer cancel()
	return handshake(ctx, c.url, token, &c.opts)
}

// sleep waits d or until the client is closed, reporting whether it slept.
func (c *Client) sleep(d time.Duration) bool {
	if d <= 0 {
		return c.ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.ctx.Done():
		return false
	}
}

// stop marks the client stopped with err and reports the final
// disconnection (cause is what ended the last connection, if anything).
func (c *Client) stop(err, cause error) {
	c.mu.Lock()
	if !c.closed {
		c.closed, c.err = true, err
	}
	c.mu.Unlock()
	c.cancel()
	if cause == nil {
		cause = err
	}
	c.emit(Event{Type: EventDisconnected, Err: cause, Final: true})
}

// serve runs one attached connection until it ends; reqs restore the
// subscriptions. It returns why the connection ended, how long to wait
// before reconnecting, and whether the backoff should keep growing (the
// connection failed for a reason a quick retry would not fix).
func (c *Client) serve(conn *wsConn, reqs []outFrame) (err error, wait time.Duration, keep bool) {
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		conn.err = c.readLoop(conn)
	}()
	for _, f := range reqs {
		if conn.writeJSON(f) != nil {
			break // the reader sees the failure
		}
	}

	interval := conn.welcome.pingInterval(25 * time.Second)
	grace := c.opts.watchdogGrace()
	timer := time.NewTimer(interval)
	defer timer.Stop()
	var pingedFor int64 // lastFrame value our ping answered to
	refreshes := c.startRefreshes(conn)
	defer refreshes.stop()
loop:
	for {
		select {
		case <-c.refreshDue:
			refreshes.start()
		case <-timer.C:
			if grace < 0 {
				continue
			}
			last := conn.lastFrame.Load()
			idle := time.Since(time.Unix(0, last))
			switch {
			case idle >= interval+grace:
				err = ErrWatchdog
				// The path looks dead: do not wait for an answer.
				conn.close(proto.CloseHeartbeatTimeout, "watchdog", watchdogCloseWait)
				break loop
			case idle >= interval:
				if pingedFor != last {
					pingedFor = last
					conn.writeText(pingJSON)
				}
				timer.Reset(interval + grace - idle)
			default:
				timer.Reset(interval - idle)
			}
		case <-readerDone:
			break loop
		case <-c.ctx.Done():
			err = ErrClosed
			conn.close(proto.CloseNormal, "", conn.closeWait())
			break loop
		}
	}
	conn.nc.Close()
	<-readerDone
	c.detach(conn)
	if err == nil {
		err = conn.err
	}
	if at := conn.reconnectAt.Load(); at != 0 {
		wait = max(0, time.Until(time.Unix(0, at)))
	} else {
		wait = fullJitter(c.opts.minBackoff())
	}
	var pe *Error
	keep = errors.As(err, &pe) && pe.temporary()
	return err, wait, keep
}

// attach makes conn the current connection and returns the subscribe frames
// that restore every subscription, registered as pending requests.
func (c *Client) attach(conn *wsConn) []outFrame {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.conn = conn
	close(c.up)
	frames := make([]outFrame, 0, len(c.subs))
	for _, s := range c.subs {
		id := c.newIDLocked()
		f := outFrame{Op: proto.OpSubscribe, Channel: s.channel, ID: id}
		if s.hasPos {
			f.Since = &position{Offset: s.pos.Offset, Epoch: s.pos.Epoch}
		}
		c.pending[id] = &request{sub: s, since: s.hasPos}
		frames = append(frames, f)
	}
	return frames
}

// detach ends conn's tenure as the current connection: waiting requests
// fail with ErrDisconnected and every subscription awaits its restore.
func (c *Client) detach(conn *wsConn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != conn {
		return
	}
	c.conn = nil
	c.up = make(chan struct{})
	for id, req := range c.pending {
		if req.reply != nil {
			req.reply <- reply{err: ErrDisconnected}
		}
		delete(c.pending, id)
	}
	for _, s := range c.subs {
		s.active = false
	}
}

// fullJitter returns a uniformly random duration in [0, d).
func fullJitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return rand.N(d)
}

// backoffWindow is the window of the attempt after failures consecutive
// failures: MinBackoff doubled per failure, capped at MaxBackoff.
func backoffWindow(minB, maxB time.Duration, failures int) time.Duration {
	w := minB
	for i := 0; i < failures && w < maxB; i++ {
		w *= 2
	}
	return min(w, maxB)
}
