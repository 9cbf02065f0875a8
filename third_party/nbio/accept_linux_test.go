package nbio

import (
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// openFds returns how many descriptors the process holds.
func openFds(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd:", err)
	}
	return len(ents)
}

// TestAcceptTCP checks tether patches 7 and 8 together: a TCP listener's
// sockets are accepted with accept4 (the listener poller has its own copy
// of the descriptor), their remote address reads as the dialer's local
// one, TCP_NODELAY is on, data flows through pollers that wait in the
// runtime's poller, under GOMAXPROCS 1 as well; and Stop returns, closes
// the listening socket (a dial is refused) and leaves no descriptor open.
func TestAcceptTCP(t *testing.T) {
	for _, procs := range []int{1, runtime.GOMAXPROCS(0)} {
		prev := runtime.GOMAXPROCS(procs)
		fds := openFds(t)
		g := NewEngine(Config{Network: "tcp", Addrs: []string{"127.0.0.1:0"}, NPoller: 2})
		var mu sync.Mutex
		remotes := map[string]bool{}
		nodelay := 0
		g.OnOpen(func(c *Conn) {
			mu.Lock()
			remotes[c.RemoteAddr().String()] = true
			mu.Unlock()
			if v, err := getsockoptInt(c.fd); err == nil && v != 0 {
				mu.Lock()
				nodelay++
				mu.Unlock()
			}
		})
		g.OnData(func(c *Conn, data []byte) { _, _ = c.Write(data) }) // echo
		if err := g.Start(); err != nil {
			t.Fatal(err)
		}
		if g.listeners[0].acceptFd < 0 {
			t.Fatal("the TCP listener did not get its accept4 loop")
		}
		addr := g.listeners[0].listener.Addr().String()
		const n = 50
		var clients []net.Conn
		for i := 0; i < n; i++ {
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			clients = append(clients, c)
		}
		for i, c := range clients {
			msg := []byte{byte(i), 'x', 'y'}
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(msg))
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(c, got); err != nil || string(got) != string(msg) {
				t.Fatalf("GOMAXPROCS %d: echo %q, %v", procs, got, err)
			}
		}
		mu.Lock()
		for _, c := range clients {
			if !remotes[c.LocalAddr().String()] {
				t.Errorf("GOMAXPROCS %d: no conn with RemoteAddr %v (have %d)", procs, c.LocalAddr(), len(remotes))
			}
		}
		if nodelay != n {
			t.Errorf("GOMAXPROCS %d: TCP_NODELAY on %d of %d conns", procs, nodelay, n)
		}
		mu.Unlock()
		stopped := make(chan struct{})
		go func() { g.Stop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			t.Fatalf("GOMAXPROCS %d: Stop did not return", procs)
		}
		for _, c := range clients {
			_ = c.Close()
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Fatalf("GOMAXPROCS %d: the listening socket still accepts after Stop", procs)
		}
		// The pollers' and the acceptor's descriptors close as their
		// goroutines return, just after Stop.
		deadline := time.Now().Add(5 * time.Second)
		for openFds(t) > fds && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if now := openFds(t); now > fds {
			t.Errorf("GOMAXPROCS %d: %d descriptors open after Stop, %d before Start", procs, now, fds)
		}
		runtime.GOMAXPROCS(prev)
	}
}

// getsockoptInt returns fd's TCP_NODELAY.
func getsockoptInt(fd int) (int, error) {
	return syscall.GetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY)
}

// TestSetNodelay checks both ways patch 7 gives an accepted socket
// TCP_NODELAY: inherited from a listener that has it (the first socket is
// asked, later ones are not touched), or set on each socket when the
// listener's is off (as on a kernel that would not copy it).
func TestSetNodelay(t *testing.T) {
	for _, onListener := range []bool{true, false} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		rc, _ := ln.(*net.TCPListener).SyscallConn()
		if onListener {
			_ = rc.Control(func(fd uintptr) {
				err = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		p := &poller{}
		want := nodelayEach
		if onListener {
			want = nodelayInherited // Linux copies it
		}
		for i := 0; i < 3; i++ {
			d, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			var fd int
			_ = rc.Control(func(lfd uintptr) { fd, _, err = syscall.Accept4(int(lfd), syscall.SOCK_CLOEXEC) })
			if err != nil {
				t.Fatal(err)
			}
			if v, _ := getsockoptInt(fd); v == 0 && onListener {
				t.Logf("this kernel does not copy TCP_NODELAY to accepted sockets")
				want = nodelayEach
			}
			p.setNodelay(fd)
			if v, _ := getsockoptInt(fd); v == 0 || p.nodelay != want {
				t.Errorf("listener has it: %v; conn %d: TCP_NODELAY %d, mode %d, want on and mode %d", onListener, i, v, p.nodelay, want)
			}
			_ = syscall.Close(fd)
			_ = d.Close()
		}
		_ = ln.Close()
	}
}

// TestStartFailureClosesDescriptors checks that a Start that fails after
// it made a TCP listener's poller (here the second address is taken)
// leaves no descriptor open: the first listener's socket, its accept
// loop's copy, epoll and eventfd (tether patch 7) are closed although the
// loop never ran.
func TestStartFailureClosesDescriptors(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	fds := openFds(t)
	for i := 0; i < 3; i++ {
		g := NewEngine(Config{Network: "tcp", Addrs: []string{"127.0.0.1:0", taken.Addr().String()}, NPoller: 2})
		if err := g.Start(); err == nil {
			g.Stop()
			t.Fatal("Start succeeded on an address in use")
		}
	}
	if now := openFds(t); now > fds {
		t.Errorf("%d descriptors open after 3 failed Starts, %d before", now, fds)
	}
}
