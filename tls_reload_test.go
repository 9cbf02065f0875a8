package main

import (
	"bufio"
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"tether/internal/proto"
	"tether/internal/testutil"
	"tether/internal/wsframe"
	"tether/internal/wstest"
)

// TestBinaryTLSReloadOnSIGHUP runs the binary with --tls-cert and
// --tls-key, replaces the certificate files and sends SIGHUP: a new
// connection gets the new certificate and the connection opened before
// goes on working.
func TestBinaryTLSReloadOnSIGHUP(t *testing.T) {
	bin := buildBinary(t)
	ca := testutil.NewCA(t)
	n := startNode(t, bin, "--tls-cert", ca.CertFile, "--tls-key", ca.KeyFile)

	old, oldSerial := wssDial(t, n.addr, ca)
	if oldSerial != 100 {
		t.Fatalf("serial %d, want 100", oldSerial)
	}
	ca.Issue(t, 200)
	if err := n.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() bool {
		c, serial := wssDial(t, n.addr, ca)
		c.Close()
		return serial == 200
	}, "a handshake with the reloaded certificate")

	if err := old.WriteFrame(wsframe.OpText, []byte(`{"op":"ping"}`)); err != nil {
		t.Fatalf("the connection opened before the reload: %v", err)
	}
	_ = old.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		_, p, err := old.ReadFrame()
		if err != nil {
			t.Fatalf("the connection opened before the reload: %v", err)
		}
		if strings.Contains(string(p), `"op":"`+proto.OpPong+`"`) {
			break
		}
	}
}

// wssDial upgrades a TLS connection to addr and returns it (after the
// welcome frame) with the serial number of the server's certificate.
func wssDial(t *testing.T, addr string, ca *testutil.CA) (*wstest.Conn, int64) {
	t.Helper()
	tc, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.Pool})
	if err != nil {
		t.Fatalf("TLS dial: %v", err)
	}
	t.Cleanup(func() { tc.Close() })
	_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
	req := "GET /ws HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	if _, err := io.WriteString(tc, req); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(tc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade over TLS: %v %v", resp, err)
	}
	c := &wstest.Conn{Conn: tc, Reader: br}
	if _, p, err := c.ReadFrame(); err != nil || !strings.Contains(string(p), proto.OpWelcome) {
		t.Fatalf("welcome: %q %v", p, err)
	}
	_ = tc.SetDeadline(time.Time{})
	return c, tc.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}
