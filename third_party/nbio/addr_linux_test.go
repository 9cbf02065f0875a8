package nbio

import (
	"net"
	"testing"
	"time"
)

// TestAcceptedConnAddrs checks tether patch 4: an accepted TCP conn keeps
// its remote address inline and asks the socket for its local one; both
// read as they did when they were *net.TCPAddr values kept in the conn.
func TestAcceptedConnAddrs(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cli, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	c, err := NBConn(sc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.lAddr != nil || c.rAddr != nil {
		t.Fatalf("address objects kept: %v %v", c.lAddr, c.rAddr)
	}
	ra, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok || ra.String() != cli.LocalAddr().String() {
		t.Fatalf("RemoteAddr() = %v, want %v", c.RemoteAddr(), cli.LocalAddr())
	}
	la, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok || la.String() != ln.Addr().String() {
		t.Fatalf("LocalAddr() = %v, want %v", c.LocalAddr(), ln.Addr())
	}

	g := NewEngine(Config{NPoller: 1})
	if err := g.Start(); err != nil {
		t.Fatal(err)
	}
	defer g.Stop()
	closed := make(chan struct{})
	g.OnClose(func(*Conn, error) { close(closed) })
	if _, err := g.AddConn(c); err != nil {
		t.Fatal(err)
	}
	c.Close()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("no OnClose")
	}
	if a := c.LocalAddr(); a != nil {
		t.Fatalf("LocalAddr() after Close = %v, want nil", a)
	}
	if c.RemoteAddr().String() != cli.LocalAddr().String() {
		t.Fatalf("RemoteAddr() after Close = %v", c.RemoteAddr())
	}
}
