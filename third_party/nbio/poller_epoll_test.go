//go:build linux
// +build linux

package nbio

import (
	"errors"
	"net"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestStaleEventOnReusedFd checks that an event the poller fetched for a
// connection that was closed off the poller goroutine, before the poller got
// to it, is not applied to a new connection that reuses the descriptor.
//
// The poller is stalled in the read-buffer hook while it holds a batch of two
// events: data on conn d, then end of stream on conn a. While it is stalled,
// a is closed from the test goroutine and a new conn n is added on a's
// descriptor number. Without generations in the epoll data, the poller then
// applies a's end-of-stream event to n and closes it with io.EOF.
func TestStaleEventOnReusedFd(t *testing.T) {
	for _, mode := range []struct {
		name     string
		epollMod uint32
	}{{"LT", EPOLLLT}, {"ET", EPOLLET}} {
		t.Run(mode.name, func(t *testing.T) { testStaleEventOnReusedFd(t, mode.epollMod) })
	}
}

func testStaleEventOnReusedFd(t *testing.T, epollMod uint32) {
	g := NewEngine(Config{NPoller: 1, EpollMod: epollMod})

	// stallOn, when set, makes the poller block in the read-buffer hook the
	// next time it reads that conn, until the test sends on release.
	var mu sync.Mutex
	var stallOn *Conn
	stalled := make(chan struct{})
	release := make(chan struct{})
	g.OnReadBufferAlloc(func(c *Conn) *[]byte {
		mu.Lock()
		hit := c == stallOn
		if hit {
			stallOn = nil
		}
		mu.Unlock()
		if hit {
			stalled <- struct{}{}
			<-release
		}
		return g.PollerBufferPtr(c)
	})
	stallNextRead := func(c *Conn) {
		mu.Lock()
		stallOn = c
		mu.Unlock()
	}

	data := make(chan *Conn, 16)
	g.OnData(func(c *Conn, _ []byte) {
		select {
		case data <- c:
		default:
		}
	})
	if err := g.Start(); err != nil {
		t.Fatal(err)
	}
	defer g.Stop()

	var peers []int
	defer func() {
		for _, fd := range peers {
			_ = syscall.Close(fd)
		}
	}()
	// pair returns a conn on one end of a new socket pair and the other end,
	// which the test drives with plain syscalls.
	pair := func() (*Conn, int) {
		t.Helper()
		fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		peers = append(peers, fds[1])
		// Field by field: a composite literal is copied whole, a write to
		// c.mux that the race detector would pair with the poller's lock,
		// which follows the hand-over through epoll with no Go
		// synchronization in between.
		c := new(Conn)
		c.fd, c.typ = fds[0], ConnTypeUnix
		return c, fds[1]
	}
	add := func(c *Conn) {
		t.Helper()
		if _, err := g.AddConn(c); err != nil {
			t.Fatal(err)
		}
	}
	send := func(peer int) {
		t.Helper()
		if _, err := syscall.Write(peer, []byte{1}); err != nil {
			t.Fatal(err)
		}
	}
	wait := func(ch <-chan struct{}, what string) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatalf("timed out waiting for %s", what)
		}
	}

	// Stall the poller on s so that d, a and e become ready together and
	// arrive in the poller's next batch in that order.
	s, sPeer := pair()
	add(s)
	stallNextRead(s)
	send(sPeer)
	wait(stalled, "the poller to read s")

	d, dPeer := pair()
	a, aPeer := pair()
	e, ePeer := pair()
	send(dPeer)
	if err := syscall.Close(aPeer); err != nil { // a sees end of stream
		t.Fatal(err)
	}
	peers = append(peers[:len(peers)-2], ePeer)
	send(ePeer)
	add(d)
	add(a)
	add(e)
	stallNextRead(d)
	release <- struct{}{}
	wait(stalled, "the poller to read d")

	// The poller now holds a's event. Close a off the poller goroutine and
	// put a new conn on its descriptor number, as an accept would.
	fd := a.fd
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	n, nPeer := pair()
	if n.fd != fd {
		if _, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_GETFD, 0); errno != syscall.EBADF {
			t.Fatalf("descriptor %d was reused by someone else", fd)
		}
		if err := syscall.Dup3(n.fd, fd, syscall.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		_ = syscall.Close(n.fd)
		n.fd = fd
	}
	add(n)
	release <- struct{}{}

	// Once e's data arrives the poller is past a's event: n must still be
	// open and receive what its peer sends.
	waitData := func(want *Conn, what string) {
		t.Helper()
		timeout := time.After(5 * time.Second)
		for {
			select {
			case c := <-data:
				if c == want {
					return
				}
			case <-timeout:
				t.Fatalf("timed out waiting for data on %s", what)
			}
		}
	}
	waitData(e, "e")
	n.mux.Lock()
	isClosed, closeErr := n.closed, n.closeErr
	n.mux.Unlock()
	if isClosed {
		t.Fatalf("the new conn on descriptor %d was closed with %v by the old conn's event", fd, closeErr)
	}
	send(nPeer)
	waitData(n, "the new conn")
}

// TestStopBeforePollersRun checks that Stop returns when it runs before the
// listener and poller goroutines that Start launched have been scheduled.
// Those loops used to reset their shutdown flag when they began, undoing
// the Stop that had already set it: the acceptor then spun on the closed
// listener and Stop waited for it forever.
//
// With one P, Start's goroutines cannot run before Stop, called right
// after Start, blocks in its final wait: the window is hit every time.
func TestStopBeforePollersRun(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	for i := 0; i < 20; i++ {
		g := NewEngine(Config{Network: "tcp", Addrs: []string{"127.0.0.1:0"}, NPoller: 1})
		if err := g.Start(); err != nil {
			t.Fatal(err)
		}
		stopped := make(chan struct{})
		go func() {
			g.Stop()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			t.Fatalf("run %d: Stop did not return", i)
		}
	}
}

// TestResetAfterDataIsNotEOF checks that a peer that writes and then resets
// the connection (SO_LINGER 0) is closed with ECONNRESET, not io.EOF: the
// poller gets the data and the error in one event, reads the data, and must
// then report the socket's pending error.
func TestResetAfterDataIsNotEOF(t *testing.T) {
	g := NewEngine(Config{NPoller: 1})
	closed := make(chan error, 1)
	g.OnClose(func(_ *Conn, err error) { closed <- err })
	if err := g.Start(); err != nil {
		t.Fatal(err)
	}
	defer g.Stop()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for i := 0; i < 20; i++ {
		client, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		server, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := client.Write([]byte("last words")); err != nil {
			t.Fatal(err)
		}
		_ = client.(*net.TCPConn).SetLinger(0)
		_ = client.Close()
		time.Sleep(10 * time.Millisecond) // the reset arrives before the poller looks
		if _, err := g.AddConn(server); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-closed:
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("attempt %d: closed with %v, want ECONNRESET", i, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("attempt %d: not closed", i)
		}
	}
}

// TestStopWhileAccepting checks that Stop does not race with connections
// the acceptor is still adding. Stop used to snapshot the open conns and
// wait for their closes while the acceptor, whose listener it had just
// closed, could still be adding a conn it had accepted a moment before: the
// add's wgConn.Add(1) from zero raced with Stop's wgConn.Wait (the race
// detector reports it), and a conn added after the snapshot was never
// closed, so Stop waited for its peer to hang up.
//
// Clients dial in a loop and keep their conns open while Stop runs; under
// -race the window is hit within a few dozen runs without the fix.
func TestStopWhileAccepting(t *testing.T) {
	for i := 0; i < 30; i++ {
		g := NewEngine(Config{Network: "tcp", Addrs: []string{"127.0.0.1:0"}, NPoller: 2})
		g.OnOpen(func(c *Conn) {})
		g.OnClose(func(c *Conn, err error) {})
		if err := g.Start(); err != nil {
			t.Fatal(err)
		}
		addr := g.listeners[0].listener.Addr().String()
		quit := make(chan struct{})
		var dialers sync.WaitGroup
		var mu sync.Mutex
		var held []net.Conn
		for d := 0; d < 4; d++ {
			dialers.Add(1)
			go func() {
				defer dialers.Done()
				for {
					select {
					case <-quit:
						return
					default:
					}
					c, err := net.DialTimeout("tcp", addr, time.Second)
					if err != nil {
						continue
					}
					mu.Lock()
					held = append(held, c)
					mu.Unlock()
				}
			}()
		}
		time.Sleep(5 * time.Millisecond)
		stopped := make(chan struct{})
		go func() {
			g.Stop()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			t.Fatalf("run %d: Stop did not return while clients held their conns", i)
		}
		close(quit)
		dialers.Wait()
		for _, c := range held {
			_ = c.Close()
		}
	}
}
