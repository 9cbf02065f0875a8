package client

// delivery is a message for a handler or an event for OnEvent.
type delivery struct {
	sub *Subscription
	msg Message
	ev  *Event
}

// emit queues ev for OnEvent, in order with message deliveries.
func (c *Client) emit(ev Event) {
	if c.opts.OnEvent == nil {
		return
	}
	c.mu.Lock()
	c.enqueueLocked(delivery{ev: &ev})
	c.mu.Unlock()
}

// dispatchLoop is the client's delivery goroutine: it hands queued messages
// to handlers and events to OnEvent, so that user code never stalls the
// connection's reader, watchdog or reconnects. It drains the queue and exits
// once the run goroutine has.
func (c *Client) dispatchLoop() {
	defer close(c.dispatched)
	for {
		select {
		case <-c.ready:
			c.dispatch()
		case <-c.runDone:
			c.dispatch()
			return
		}
	}
}

// dispatch hands out everything queued. It runs on the dispatch goroutine.
func (c *Client) dispatch() {
	for {
		c.mu.Lock()
		c.batch, c.queue = c.queue, c.batch[:0]
		c.mu.Unlock()
		if len(c.batch) == 0 {
			return
		}
		for i := range c.batch {
			d := &c.batch[i]
			if d.ev != nil {
				if c.opts.OnEvent != nil {
					c.opts.OnEvent(*d.ev)
				}
			} else if !d.sub.removed.Load() {
				d.sub.fn(d.msg)
			}
		}
		clear(c.batch)
	}
}

// enqueueLocked queues a delivery for the dispatch goroutine. c.mu must be
// held.
func (c *Client) enqueueLocked(d delivery) {
	c.queue = append(c.queue, d)
	select {
	case c.ready <- struct{}{}:
	default:
	}
}
