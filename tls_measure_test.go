package main

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tether/internal/testutil"
)

// TestMeasureTLS measures what TLS costs a node: RSS per idle connection
// and connect rate (TCP + TLS handshake + upgrade + welcome), plain and
// TLS, with the real binary. It runs only with TETHER_MEASURE=1:
//
//	TETHER_MEASURE=1 TETHER_CONNS=15000 go test -run TestMeasureTLS -v .
//
// TETHER_MODES (e.g. "tls,plain") picks the runs and TETHER_NODE_ARGS adds
// flags to the node (e.g. "--gc-percent 25").
func TestMeasureTLS(t *testing.T) {
	if os.Getenv("TETHER_MEASURE") == "" {
		t.Skip("a measurement: set TETHER_MEASURE=1")
	}
	conns := 15000
	if v, err := strconv.Atoi(os.Getenv("TETHER_CONNS")); err == nil {
		conns = v
	}
	bin := buildBinary(t)
	ca := testutil.NewCA(t)
	modes := []string{"plain", "tls", "plain", "tls"}
	if m := os.Getenv("TETHER_MODES"); m != "" {
		modes = strings.Split(m, ",")
	}
	for _, mode := range modes {
		args := []string{"--max-conns", "19500", "--accept-rate", "-1", "--ping-interval", "1h"}
		if extra := os.Getenv("TETHER_NODE_ARGS"); extra != "" {
			args = append(args, strings.Fields(extra)...)
		}
		var cfg *tls.Config
		if mode == "tls" {
			args = append(args, "--tls-cert", ca.CertFile, "--tls-key", ca.KeyFile)
			cfg = &tls.Config{RootCAs: ca.Pool, ClientSessionCache: nil}
		}
		n := startNode(t, bin, args...)
		time.Sleep(200 * time.Millisecond)
		base := rss(t, n.cmd.Process.Pid)
		start := time.Now()
		held := openIdle(t, n.addr, cfg, conns)
		took := time.Since(start)
		time.Sleep(2 * time.Second)
		after := rss(t, n.cmd.Process.Pid)
		t.Logf("%-5s %d connections in %.2f s = %.0f conn/s; RSS %.1f → %.1f MiB = %.2f KiB per connection",
			mode, conns, took.Seconds(), float64(conns)/took.Seconds(),
			float64(base)/(1<<20), float64(after)/(1<<20), float64(after-base)/float64(conns)/1024)
		for _, c := range held {
			c.Close()
		}
		_ = n.cmd.Process.Kill()
	}
}

// openIdle opens n upgraded connections to addr (over TLS when cfg is
// set), 128 at a time, and returns them once each has read its welcome.
func openIdle(t *testing.T, addr string, cfg *tls.Config, n int) []net.Conn {
	t.Helper()
	out := make([]net.Conn, n)
	var next atomic.Int64
	var failed atomic.Int64
	var wg sync.WaitGroup
	for range 128 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				c, err := upgradeIdle(addr, cfg)
				if err != nil {
					failed.Add(1)
					continue
				}
				out[i] = c
			}
		}()
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		t.Fatalf("%d connections failed", f)
	}
	return out
}

func upgradeIdle(addr string, cfg *tls.Config) (net.Conn, error) {
	var c net.Conn
	var err error
	if cfg != nil {
		c, err = tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, cfg)
	} else {
		c, err = net.DialTimeout("tcp", addr, 10*time.Second)
	}
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	req := "GET /ws HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		c.Close()
		return nil, err
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		c.Close()
		return nil, err
	}
	if _, err := br.Peek(2); err != nil { // the welcome frame
		c.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}
