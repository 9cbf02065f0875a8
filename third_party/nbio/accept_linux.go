// Copyright 2020 lesismal. All rights reserved.
// Use of this source code is governed by an MIT-style
// license that can be found in the LICENSE file.

//go:build linux

package nbio

import (
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/lesismal/nbio/logging"
)

// tether patch 7: accept a TCP listener's sockets with accept4 on a copy
// of the listener's descriptor.
//
// The release accepts through net.TCPListener.Accept and then dupStdConn:
// Go's accept registers the new socket with the runtime's poller
// (epoll_ctl), asks for its local address (getsockname) and sets
// TCP_NODELAY; nbio then dups the descriptor, closes Go's copy (epoll_ctl
// and close) and adds the dup to its own poller: eight system calls and a
// net.TCPConn with its netFD, pollDesc and two addresses per connection,
// of which nbio keeps the descriptor. Here the socket is accepted
// non-blocking with accept4 and goes to nbio's poller: two system calls
// and one allocation (the Conn). TCP_NODELAY, which Go sets on every
// accepted socket, is set once on the listening socket: Linux copies it to
// the sockets accepted from it. The first accepted socket is asked whether
// it has it; if a kernel did not copy it, it is set on each one as Go does. Go's TCP keep-alive, which a net.ListenConfig may ask for, is not
// set here; tether turns it off (KeepAlive: -1).
//
// A listener's RawConn cannot wait for readability (its Read is
// unsupported), so the accept loop waits in an epoll instance of its own
// on a dup of the listener's descriptor, with an eventfd that stop writes
// to. The dup is the loop's own: a descriptor number Go has closed can be
// reused by then, a dup cannot, and the listening socket is closed when
// both Go's descriptor and the dup are.

// setupAccept prepares p's accept loop for ln. On any failure it leaves
// p.acceptFd at -1, and the release's loop (ln.Accept) runs instead.
//
//go:norace
func (p *poller) setupAccept(ln *net.TCPListener) {
	rc, err := ln.SyscallConn()
	if err != nil {
		return
	}
	fd := -1
	if rc.Control(func(lfd uintptr) { fd, err = dupCloexec(int(lfd)) }) != nil || err != nil {
		return
	}
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		_ = syscall.Close(fd)
		return
	}
	r0, _, e0 := syscall.Syscall(syscall.SYS_EVENTFD2, 0, syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if e0 != 0 {
		_ = syscall.Close(fd)
		_ = syscall.Close(epfd)
		return
	}
	evtfd := int(r0)
	for _, w := range []int{fd, evtfd} {
		if syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, w, &syscall.EpollEvent{Fd: int32(w), Events: syscall.EPOLLIN}) != nil {
			_ = syscall.Close(fd)
			_ = syscall.Close(epfd)
			_ = syscall.Close(evtfd)
			return
		}
	}
	if syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1) != nil {
		p.nodelay = nodelayEach
	}
	p.acceptFd, p.epfd, p.evtfd = fd, epfd, evtfd
}

// How an accept loop gives its sockets TCP_NODELAY (poller.nodelay).
const (
	nodelayUnknown   = iota // set on the listener; not yet seen on an accepted socket
	nodelayInherited        // accepted sockets have it from the listener
	nodelayEach             // set on each accepted socket
)

// setNodelay gives the accepted socket fd TCP_NODELAY, asking the first
// one whether it inherited it from the listener. Only the accept loop
// calls it.
//
//go:norace
func (p *poller) setNodelay(fd int) {
	switch p.nodelay {
	case nodelayInherited:
		return
	case nodelayUnknown:
		if v, err := syscall.GetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY); err == nil && v != 0 {
			p.nodelay = nodelayInherited
			return
		}
		p.nodelay = nodelayEach
	}
	_ = syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
}

// dupCloexec returns a close-on-exec duplicate of fd.
func dupCloexec(fd int) (int, error) {
	r0, _, e0 := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_DUPFD_CLOEXEC, 0)
	if e0 != 0 {
		return -1, e0
	}
	return int(r0), nil
}

// acceptTCP accepts sockets until stop: while accept4 has one, it goes to
// its poller; then the loop waits for the listener to be readable or for
// stop's wake-up, in the runtime's poller (patch 8). Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS,
// ENOMEM), the waiting connection stays in the kernel's queue and the
// loop tries again 50 ms later rather than spin.
//
//go:norace
func (p *poller) acceptTCP() {
	wait, closeEpfd := p.netpollWaiter() // patch 8
	defer func() {
		_ = syscall.Close(p.acceptFd)
		closeEpfd()
		_ = syscall.Close(p.evtfd)
	}()
	events := make([]syscall.EpollEvent, 2)
	for !p.shutdown {
		fd, sa, err := syscall.Accept4(p.acceptFd, syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC)
		switch err {
		case nil:
			p.addAccepted(fd, sa)
			continue
		case syscall.EINTR, syscall.ECONNABORTED:
			continue // as Go's accept: the next one
		case syscall.EAGAIN:
			if wait != nil {
				_, err = wait(events)
			} else {
				_, err = syscall.EpollWait(p.epfd, events, -1)
			}
			if err != nil && err != syscall.EINTR {
				logging.Error("NBIO[%v][%v_%v] EpollWait failed: %v, exit...", p.g.Name, p.pollType, p.index, err)
				return
			}
			continue
		}
		logging.Error("NBIO[%v][%v_%v] Accept failed: %v, retrying...", p.g.Name, p.pollType, p.index, err)
		if p.g.onAcceptError != nil {
			p.g.onAcceptError(err)
		}
		time.Sleep(time.Second / 20)
	}
}

// addAccepted hands an accepted socket to its poller, as the release's
// loop does with the Conn that dupStdConn builds (patch 4: the remote
// address inline, the local one asked of the socket when wanted).
//
//go:norace
func (p *poller) addAccepted(fd int, sa syscall.Sockaddr) {
	p.setNodelay(fd)
	c := &Conn{fd: fd, typ: ConnTypeTCP}
	switch a := sa.(type) {
	case *syscall.SockaddrInet4:
		c.rAddrPort = netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *syscall.SockaddrInet6:
		ip := netip.AddrFrom16(a.Addr)
		if a.ZoneId != 0 {
			if ifi, err := net.InterfaceByIndex(int(a.ZoneId)); err == nil {
				ip = ip.WithZone(ifi.Name)
			}
		}
		c.rAddrPort = netip.AddrPortFrom(ip, uint16(a.Port))
	default:
		c.rAddr = &net.TCPAddr{} // accept4 on a TCP socket always has an address
	}
	if err := p.g.pollers[c.Hash()%len(p.g.pollers)].addConn(c); err != nil {
		logging.Error("NBIO[%v][%v_%v] addConn [fd: %v] failed: %v", p.g.Name, p.pollType, p.index, fd, err)
	}
}
