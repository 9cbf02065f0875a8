package server

import (
	"context"
	"math/rand/v2"
	"time"

	"tether/internal/proto"
)

// Drain stops the node gracefully: /readyz turns 503 at once, so that load
// balancers stop sending new clients, while upgrades are still accepted for
// DrainDelay (a client the load balancer routes here before its health
// check notices is served, not refused). Then new upgrades are refused, and
// every live connection, those accepted during the delay included, is told
// to reconnect (with a jittered after_ms) and closed with 1012, the closes
// spread evenly over DrainWindow so that clients do not all land on the
// other nodes at once. Drain returns when every connection is closed or ctx
// ends.
func (s *Server) Drain(ctx context.Context) error {
	s.draining.Store(true)
	if d := s.cfg.DrainDelay; d > 0 {
		s.log.Info("draining: not ready; accepting upgrades until load balancers notice", "delay", d)
		delay := time.NewTimer(d)
		select {
		case <-ctx.Done():
			delay.Stop()
			return ctx.Err()
		case <-delay.C:
		}
	}
	s.refusing.Store(true)
	conns := s.conns.snapshot()
	rand.Shuffle(len(conns), func(i, j int) { conns[i], conns[j] = conns[j], conns[i] })
	s.log.Info("draining", "connections", len(conns), "window", s.cfg.DrainWindow)

	start := time.Now()
	window := s.cfg.DrainWindow
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	next := 0
	for next < len(conns) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case now := <-t.C:
			// Connection i is due at start + window·i/n.
			due := len(conns)
			if elapsed := now.Sub(start); elapsed < window {
				due = int(int64(len(conns)) * int64(elapsed) / int64(window))
			}
			for ; next < due && next < len(conns); next++ {
				s.drainConn(conns[next])
				conns[next] = nil
			}
		}
	}
	// Upgrades that were under way when draining began.
	s.conns.each(s.drainConn)
	for s.m.conns.Load() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

func (s *Server) drainConn(c *conn) {
	c.setDisconnect("drain")
	after := s.jitterMS()
	c.sendClose(proto.CloseRestart, "node draining", textFrame(func(b []byte) []byte { return appendReconnect(b, after) }))
}

// Draining reports whether Drain has started.
func (s *Server) Draining() bool { return s.draining.Load() }
