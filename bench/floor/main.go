// Command floor is a measuring stick for tether's connect path, not part of
// tether: the least a server can do for one `tether bench connect`
// connection, on one thread, allocating nothing per connection. It accepts
// with accept4 (TCP_NODELAY on each socket), adds the socket to one epoll
// instance, reads the upgrade request and writes the 101 with a welcome
// frame, reads the subscribe and writes a subscribed frame, and closes on
// EOF or a close frame (answering it). Anything but an upgrade gets 404.
// It checks nothing: its server CPU per connection is what the kernel
// costs on the machine, against which tether's is read
// (docs/BENCHMARKS.md, "The connect path at the kernel's floor").
//
//	go build -o /tmp/floor ./bench/floor && taskset -c 0 /tmp/floor 127.0.0.1:7000
package main

import (
	"bytes"
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"runtime"
	"syscall"
)

const acceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// conn is one socket's read state, indexed by descriptor.
type conn struct {
	upgraded bool
	n        int
	buf      [1024]byte
}

const welcome = `{"op":"welcome","node":"floor","conn":"floor-1","ping_interval_ms":25000}`

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: floor host:port")
		os.Exit(2)
	}
	runtime.GOMAXPROCS(1)
	runtime.LockOSThread()
	ln, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	f, err := ln.(*net.TCPListener).File() // a blocking dup: made non-blocking below
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	lfd := int(f.Fd())
	if err := syscall.SetNonblock(lfd, true); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ep, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err == nil {
		err = syscall.EpollCtl(ep, syscall.EPOLL_CTL_ADD, lfd, &syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(lfd)})
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	conns := make([]conn, 1<<16)
	events := make([]syscall.EpollEvent, 256)
	out := make([]byte, 0, 512)
	for {
		n, err := syscall.EpollWait(ep, events, -1)
		if err != nil {
			continue // EINTR
		}
		for _, ev := range events[:n] {
			fd := int(ev.Fd)
			if fd == lfd {
				for {
					nfd, _, err := syscall.Accept4(lfd, syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC)
					if err != nil {
						break
					}
					if nfd >= len(conns) {
						_ = syscall.Close(nfd)
						continue
					}
					_ = syscall.SetsockoptInt(nfd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
					conns[nfd] = conn{}
					_ = syscall.EpollCtl(ep, syscall.EPOLL_CTL_ADD, nfd, &syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: int32(nfd)})
				}
				continue
			}
			c := &conns[fd]
			r, err := syscall.Read(fd, c.buf[c.n:])
			if r <= 0 {
				if err != syscall.EAGAIN {
					_ = syscall.Close(fd)
				}
				continue
			}
			c.n += r
			out = c.serve(fd, out[:0])
		}
		runtime.KeepAlive(f)
		runtime.KeepAlive(ln)
	}
}

// serve answers what c.buf holds on socket fd, out being scratch.
func (c *conn) serve(fd int, out []byte) []byte {
	b := c.buf[:c.n]
	if !c.upgraded {
		end := bytes.Index(b, []byte("\r\n\r\n"))
		if end < 0 {
			return out
		}
		k := bytes.Index(b[:end], []byte("Sec-WebSocket-Key: "))
		if k < 0 {
			_, _ = syscall.Write(fd, []byte("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
			_ = syscall.Close(fd)
			return out
		}
		key := b[k+len("Sec-WebSocket-Key: ") : end+2]
		key = key[:bytes.IndexByte(key, '\r')]
		var in [64]byte
		sum := sha1.Sum(append(append(in[:0:len(in)], key...), acceptGUID...))
		out = append(out, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "...)
		out = base64.StdEncoding.AppendEncode(out, sum[:])
		out = append(out, "\r\n\r\n\x81"...)
		out = append(out, byte(len(welcome)))
		out = append(out, welcome...)
		_, _ = syscall.Write(fd, out)
		c.upgraded = true
		c.n = copy(c.buf[:], b[end+4:])
		return out
	}
	// One masked client frame with a 7-bit length: the subscribe or a close.
	if len(b) < 6 || len(b) < 6+int(b[1]&0x7f) {
		return out
	}
	op, size := b[0]&0xf, int(b[1]&0x7f)
	if op == 8 {
		_, _ = syscall.Write(fd, []byte{0x88, 0x02, 0x03, 0xe8})
		_ = syscall.Close(fd)
		return out
	}
	p := b[6 : 6+size]
	for i := range p {
		p[i] ^= b[2+i%4]
	}
	ch := []byte("c")
	if i := bytes.Index(p, []byte(`"channel":"`)); i >= 0 {
		ch = p[i+len(`"channel":"`):]
		if j := bytes.IndexByte(ch, '"'); j >= 0 {
			ch = ch[:j]
		}
	}
	out = append(out, 0x81, 0)
	out = append(out, `{"op":"subscribed","channel":"`...)
	out = append(out, ch...)
	out = append(out, `","offset":0,"epoch":"floor","recovered":false}`...)
	out[1] = byte(len(out) - 2)
	_, _ = syscall.Write(fd, out)
	c.n = copy(c.buf[:], b[6+size:])
	return out
}
