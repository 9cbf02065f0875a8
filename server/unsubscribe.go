package server

// forceUnsubscribe ends c's subscription to channel on the server's
// initiative and tells the client with
// {"op":"unsubscribed","channel":…,"reason":…,"offset":…,"epoch":…} (the
// position of the last message it was sent, when known). It reports whether c was
// subscribed; when it was not, nothing is sent. It takes the channel index
// and connection locks itself: call it with none held. Safe from any
// goroutine.
func (s *Server) forceUnsubscribe(c *conn, channel, reason string) bool {
	sub := c.takeSub(func(x *subscription) bool { return x.ch.name == channel })
	if sub == nil {
		return false
	}
	// Every message up to last was queued before this frame, none after.
	last, ok := s.removeSub(sub)
	c.reply(func(b []byte) []byte { return appendUnsubscribedBy(b, channel, reason, last, ok) })
	return true
}
