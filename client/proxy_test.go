package client_test

import (
	"net"
	"sync"
	"testing"
	"time"
)

// proxy is a TCP proxy on 127.0.0.1 for tests: it forwards each accepted
// connection to the current target, and can freeze the connections it
// holds (stop forwarding without closing anything, like a dead path), drop
// them (close both sides at once), or move new connections to another
// target. It records when connections arrive.
type proxy struct {
	t  testing.TB
	ln net.Listener

	mu       sync.Mutex // guards the fields below
	target   string
	refuse   bool // close new connections at once
	conns    map[*proxyConn]struct{}
	accepted []time.Time
	closed   bool

	wg sync.WaitGroup
}

// proxyConn is one proxied connection.
type proxyConn struct {
	client, server net.Conn
	frozen         chan struct{} // closed when the connection is frozen
	freezeOnce     sync.Once
}

func startProxy(t testing.TB, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, ln: ln, target: target, conns: make(map[*proxyConn]struct{})}
	p.wg.Add(1)
	go p.acceptLoop()
	t.Cleanup(p.close)
	return p
}

// Addr returns the proxy's listening address.
func (p *proxy) Addr() string { return p.ln.Addr().String() }

// SetTarget sends new connections to target.
func (p *proxy) SetTarget(target string) {
	p.mu.Lock()
	p.target = target
	p.mu.Unlock()
}

// SetRefuse makes the proxy close new connections at once (a node that is
// down) or accept them again.
func (p *proxy) SetRefuse(refuse bool) {
	p.mu.Lock()
	p.refuse = refuse
	p.mu.Unlock()
}

// FreezeAll stops forwarding on every connection open now, without closing
// them: bytes sent on either side are never delivered. New connections are
// forwarded normally.
func (p *proxy) FreezeAll() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.freezeOnce.Do(func() { close(c.frozen) })
	}
	return len(p.conns)
}

// DropAll closes every connection open now on both sides.
func (p *proxy) DropAll() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.client.Close()
		c.server.Close()
	}
	return len(p.conns)
}

// Accepted returns the arrival times of connections accepted after since.
func (p *proxy) Accepted(since time.Time) []time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []time.Time
	for _, at := range p.accepted {
		if !at.Before(since) {
			out = append(out, at)
		}
	}
	return out
}

func (p *proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		cc, err := p.ln.Accept()
		if err != nil {
			return
		}
		now := time.Now()
		p.mu.Lock()
		target, refuse, closed := p.target, p.refuse, p.closed
		p.accepted = append(p.accepted, now)
		p.mu.Unlock()
		if closed || refuse {
			cc.Close()
			continue
		}
		sc, err := net.DialTimeout("tcp", target, 5*time.Second)
		if err != nil {
			cc.Close()
			continue
		}
		c := &proxyConn{client: cc, server: sc, frozen: make(chan struct{})}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			cc.Close()
			sc.Close()
			return
		}
		p.conns[c] = struct{}{}
		p.mu.Unlock()
		var pipes sync.WaitGroup
		pipes.Add(2)
		p.wg.Add(3)
		go func() { defer p.wg.Done(); defer pipes.Done(); c.pipe(sc, cc) }()
		go func() { defer p.wg.Done(); defer pipes.Done(); c.pipe(cc, sc) }()
		go func() {
			defer p.wg.Done()
			pipes.Wait()
			p.mu.Lock()
			delete(p.conns, c)
			p.mu.Unlock()
		}()
	}
}

// pipe copies src to dst until either fails. Once the connection is frozen
// it stops forwarding and waits for the connection to be closed.
func (c *proxyConn) pipe(dst, src net.Conn) {
	defer func() {
		c.client.Close()
		c.server.Close()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		select {
		case <-c.frozen:
			// Hold everything: no FIN, no RST, no bytes, until the test
			// drops the connection or the proxy closes. Reading on keeps
			// noticing that close.
			for {
				if _, err := src.Read(buf); err != nil {
					return
				}
			}
		default:
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *proxy) close() {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.client.Close()
		c.server.Close()
	}
	p.mu.Unlock()
	p.ln.Close()
	p.wg.Wait()
}
