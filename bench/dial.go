package bench

import (
	"errors"
	"math/rand/v2"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/lesismal/nbio"
)

// This file is the dialing half of a pool: dialer goroutines take queued
// connections, dial them (paced, from spread source addresses) and send the
// upgrade request; failed attempts are counted by reason and retried with
// backoff. receive.go handles what comes back.

// dialLoop dials queued connections until the pool is closed.
func (p *pool) dialLoop() {
	defer p.dialers.Done()
	for {
		var idx int32
		select {
		case idx = <-p.queue:
		case <-p.stop:
			return
		}
		select {
		case p.sem <- struct{}{}:
		case <-p.stop:
			return
		}
		p.mu.Lock()
		ph := p.phase
		p.mu.Unlock()
		if ph.pace > 0 {
			n := ph.ticket.Add(1) - 1
			if d := time.Until(ph.start.Add(time.Duration(n) * ph.pace)); d > 0 {
				select {
				case <-time.After(d):
				case <-p.stop:
					return
				}
			}
		}
		cs := &p.conns[idx]
		if ph.dropIdle {
			p.drop(cs)
		}
		p.dial(cs, ph)
	}
}

// dial makes one attempt for cs. The caller holds a semaphore slot, which
// the attempt releases when it ends.
func (p *pool) dial(cs *connState, ph *phaseState) {
	gi := p.cfg.First + int(cs.idx)
	cs.mu.Lock()
	if cs.state != stIdle {
		cs.mu.Unlock()
		<-p.sem
		return
	}
	cs.gen++
	gen := cs.gen
	cs.state = stDialing
	cs.holdsSem = true
	if cs.attempts < 255 {
		cs.attempts++
	}
	ti := gi % len(p.targets)
	if p.cfg.Soak {
		ti = failoverTarget(gi, int(cs.attempts), len(p.targets))
	}
	tg := &p.targets[ti]
	cs.tDial = time.Now().UnixNano()
	cs.mu.Unlock()
	p.mu.Lock()
	ph.stats.Attempts++
	p.mu.Unlock()

	d := net.Dialer{Timeout: p.timeout, Control: bindNoPort}
	if len(p.srcs) > 0 {
		d.LocalAddr = &net.TCPAddr{IP: p.srcs[gi%len(p.srcs)].AsSlice()}
	}
	nc, err := d.Dial("tcp", tg.addr)
	if err != nil {
		p.fail(cs, gen, dialReason(err), -1, nil)
		return
	}
	c, err := p.eng.AddConn(nc)
	if err != nil {
		p.fail(cs, gen, "nbio_add", -1, nil)
		return
	}
	cs.mu.Lock()
	if cs.gen != gen || cs.state != stDialing {
		cs.mu.Unlock()
		_ = c.Close()
		return
	}
	cs.c = c
	cs.state = stHandshake
	c.SetSession(cs)
	cs.mu.Unlock()
	time.AfterFunc(p.timeout, func() { p.attemptTimeout(cs, gen) })
	if _, err := c.Write(tg.req); err != nil {
		p.fail(cs, gen, "write", -1, c)
	}
}

// attemptTimeout fails attempt gen of cs if it has not got up yet.
func (p *pool) attemptTimeout(cs *connState, gen uint32) {
	p.fail(cs, gen, "timeout", -1, nil)
}

// fail ends attempt gen of cs with reason and retries it when allowed.
// retryAfter is the server's Retry-After in seconds, or -1. c, if not nil,
// is closed.
func (p *pool) fail(cs *connState, gen uint32, reason string, retryAfter int, c *nbio.Conn) {
	cs.mu.Lock()
	if cs.gen != gen || cs.state == stUp || cs.state == stIdle || cs.state == stDone {
		cs.mu.Unlock()
		return
	}
	if c == nil {
		c = cs.c
	}
	cs.c = nil
	cs.in, cs.msg, cs.inMsg = nil, nil, false
	release := cs.holdsSem
	cs.holdsSem = false
	attempts := int(cs.attempts)
	p.mu.Lock()
	ph := p.phase
	ph.stats.Failures[reason]++
	if reason == "http_503" {
		ph.stats.Refused++
	}
	// Client errors (401, 403, 400…) will not change on retry.
	retry := !strings.HasPrefix(reason, "http_4") && attempts <= p.cfg.Retries && time.Now().Before(ph.deadline)
	if retry {
		cs.state = stIdle
	} else {
		cs.state = stDone
		ph.stats.Failed++
		p.endOneLocked(ph)
	}
	p.mu.Unlock()
	cs.mu.Unlock()
	if release {
		<-p.sem
	}
	if c != nil {
		_ = c.SetLinger(1, 0)
		_ = c.Close()
	}
	if retry {
		time.AfterFunc(retryDelay(retryAfter, attempts), func() {
			select {
			case p.queue <- cs.idx:
			case <-p.stop:
			}
		})
	}
}

// failoverTarget is the target of a soak client's attempt: its home node
// (gi mod n) first; after a failed attempt (a node that is down or
// draining), the other nodes, spread as a load balancer spreads a failed
// node's clients: clients of one home start their failover at different
// nodes (by gi/n), so that a drained node's clients land on every other
// node evenly rather than all on the next one.
func failoverTarget(gi, attempts, n int) int {
	home := gi % n
	if attempts <= 1 || n == 1 {
		return home
	}
	return (home + 1 + (gi/n+attempts-2)%(n-1)) % n
}

// retryDelay honours Retry-After (seconds) with up to 50% jitter on top, so
// refused clients do not return together; otherwise it backs off
// exponentially from 50 ms with full jitter, capped at 5 s.
func retryDelay(retryAfter, attempts int) time.Duration {
	if retryAfter >= 0 {
		base := time.Duration(max(retryAfter, 1)) * time.Second
		return base + time.Duration(rand.Int64N(int64(base/2)+1))
	}
	ceil := min(50*time.Millisecond<<min(attempts, 10), 5*time.Second)
	return time.Duration(rand.Int64N(int64(ceil))) + time.Millisecond
}

// dialReason names a dial error for the failure table.
func dialReason(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "conn_refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "conn_reset"
	case errors.Is(err, syscall.EADDRNOTAVAIL), errors.Is(err, syscall.EADDRINUSE):
		return "no_local_port"
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return "too_many_files"
	case errors.As(err, &ne) && ne.Timeout():
		return "dial_timeout"
	}
	return "dial_error"
}
