package server

import (
	"io"
	"net"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// BenchmarkSyscallWriteDevNull measures the bare cost of entering and
// leaving the kernel for a write on this machine: the floor under every
// delivery.
func BenchmarkSyscallWriteDevNull(b *testing.B) {
	f, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	frame := pingFrame
	b.ReportAllocs()
	for b.Loop() {
		if _, err := syscall.Write(fd, frame); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSyscallWriteLoopbackTCP measures one small frame written to a
// loopback TCP socket whose peer drains it: what one delivery costs the
// kernel here (on loopback the sender also pays for the receiver's side of
// TCP and its wake-up).
func BenchmarkSyscallWriteLoopbackTCP(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, c)
		c.Close()
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		b.Fatal(err)
	}
	frame := messageFrame(busMessageForBench())
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	b.ResetTimer()
	_ = raw.Write(func(fd uintptr) bool {
		for i := 0; i < b.N; i++ {
			if _, err := syscall.Write(int(fd), frame); err == syscall.EAGAIN {
				i-- // the peer fell behind: retry (rare; counted in the time)
			} else if err != nil {
				b.Error(err)
				return true
			}
		}
		return true
	})
}

// BenchmarkPingWrite measures one heartbeat ping as the node writes it:
// flusher.ping (the connection's lock before and after) and the frame's
// write through nbio to a real loopback socket whose reader discards it,
// round robin over 1,000 idle connections. A node at 1M connections with
// the default 25 s interval writes 40,000 of these a second. Besides the
// wall time it reports the CPU time of the writing thread (cpu-ns/op):
// each ping wakes an idle reader, whose CPU is not the node's, but on
// loopback the writer also runs the receiver's TCP input.
func BenchmarkPingWrite(b *testing.B) {
	ts := startServer(b, Config{PingInterval: time.Hour})
	discardSubscribers(b, ts, "pings", 1000)
	conns := ts.conns.snapshot()
	f := ts.flushers[0]
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := threadCPU()
	i := 0
	for b.Loop() {
		f.ping(conns[i%len(conns)])
		i++
	}
	b.ReportMetric(float64((threadCPU()-cpu0).Nanoseconds())/float64(i), "cpu-ns/op")
	b.StopTimer()
	ts.waitFlushed()
}
