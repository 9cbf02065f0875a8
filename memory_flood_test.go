package main

import (
	"bufio"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"tether/internal/proto"
	"tether/internal/wsframe"
)

// floodBoundPerConn is the documented bound (docs/security.md, "Memory a
// client can make the node hold") on what one attacking connection can
// make a node hold above its baseline, with --max-message-size 16384: the
// unfinished message (≤ 17 KiB), the control frame buffer, the reply queue
// kept short by the frame rate, and the engine's socket state.
const floodBoundPerConn = 64 << 10

// TestBinaryMemoryUnderFlood floods a real node from 20 connections for
// 4 seconds, reconnecting as the node closes them: pings (small payloads,
// the issue's ~200 MB case), tiny text frames, unfinished large text
// frames and unfinished request heads; none of them reads what the node
// sends. The node's RSS must stay within 20 × floodBoundPerConn of its
// baseline, plus 8 MiB for the Go runtime's own growth (GC headroom,
// goroutine stacks of the flusher) that does not scale with attackers.
func TestBinaryMemoryUnderFlood(t *testing.T) {
	bin := buildBinary(t)
	n := startNode(t, bin, "--max-message-size", "16384", "--handshake-timeout", "2s")
	time.Sleep(300 * time.Millisecond)
	base := rss(t, n.cmd.Process.Pid)

	const attackers = 20
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range attackers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				attack(n.addr, i%4, stop)
			}
		}()
	}
	peak := base
	deadline := time.Now().Add(4 * time.Second)
	for time.Now().Before(deadline) {
		peak = max(peak, rss(t, n.cmd.Process.Pid))
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	bound := int64(attackers*floodBoundPerConn + 8<<20)
	t.Logf("RSS baseline %d KiB, peak %d KiB, growth %d KiB (bound %d KiB)", base>>10, peak>>10, (peak-base)>>10, bound>>10)
	if peak-base > bound {
		t.Fatalf("RSS grew by %d KiB under the flood, bound %d KiB", (peak-base)>>10, bound>>10)
	}
	// The node still serves.
	c := wsConn(t, n.addr)
	if _, p, err := c.ReadFrame(); err != nil || !strings.Contains(string(p), proto.OpWelcome) {
		t.Fatalf("after the flood: %q %v", p, err)
	}
}

// attack runs one attacking connection of the given kind until the node
// closes it or stop is closed.
func attack(addr string, kind int, stop chan struct{}) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		time.Sleep(10 * time.Millisecond)
		return
	}
	defer c.Close()
	go func() { <-stop; c.Close() }()
	if kind == 3 { // an unfinished request head, trickled
		_, _ = c.Write([]byte("GET /ws HTTP/1.1\r\nHost: x\r\nX-Pad: "))
		for {
			if _, err := c.Write([]byte(strings.Repeat("a", 512))); err != nil {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	req := "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	if _, err := c.Write([]byte(req)); err != nil {
		return
	}
	if _, err := bufio.NewReader(c).Peek(12); err != nil { // the 101; nothing else is read
		return
	}
	key := [4]byte{1, 2, 3, 4}
	var burst []byte
	switch kind {
	case 0: // 7-byte pings
		for range 4096 {
			burst = wsframe.AppendMaskedFrame(burst, wsframe.OpPing, true, []byte("1234567"), key)
		}
	case 1: // tiny text frames that are not protocol frames
		for range 4096 {
			burst = wsframe.AppendMaskedFrame(burst, wsframe.OpText, true, []byte("{}"), key)
		}
	case 2: // a large text message, left unfinished
		burst = wsframe.AppendMaskedFrame(nil, wsframe.OpText, false, make([]byte, 16000), key)
	}
	for {
		if _, err := c.Write(burst); err != nil {
			return
		}
		if kind == 2 {
			time.Sleep(100 * time.Millisecond)
			burst = burst[:0]
			burst = wsframe.AppendMaskedFrame(burst, wsframe.OpContinuation, false, []byte("x"), key)
		}
	}
}

// rss returns the resident set size of process pid in bytes.
func rss(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}
