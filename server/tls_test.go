package server

import (
	"bufio"
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"testing"

	"tether/internal/proto"
	"tether/internal/testutil"
	"tether/internal/wsframe"
)

// dialTLSWS upgrades a TLS connection to addr, writing the request in
// pieces of chunk bytes (each its own TLS record) to exercise reassembly.
func dialTLSWS(t *testing.T, addr string, ca *testutil.CA, chunk int) (*testClient, *tls.Conn) {
	t.Helper()
	tc, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.Pool})
	if err != nil {
		t.Fatalf("TLS dial: %v", err)
	}
	t.Cleanup(func() { tc.Close() })
	req := "GET /ws HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	for len(req) > 0 {
		n := min(chunk, len(req))
		if _, err := io.WriteString(tc, req[:n]); err != nil {
			t.Fatal(err)
		}
		req = req[n:]
	}
	br := bufio.NewReader(tc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade over TLS: %v %v", resp, err)
	}
	if got := resp.Header.Get("Sec-WebSocket-Accept"); got != wsframe.AcceptKey("dGhlIHNhbXBsZSBub25jZQ==") {
		t.Fatalf("accept key %q", got)
	}
	c := &testClient{t: t, conn: tc, br: br}
	c.expect(proto.OpWelcome)
	return c, tc
}

func TestTLS(t *testing.T) {
	ca := testutil.NewCA(t)
	ts := startServer(t, Config{TLSCert: ca.CertFile, TLSKey: ca.KeyFile})

	// wss:// with the request in 1-byte records, then the API over https.
	c, tc := dialTLSWS(t, ts.addr, ca, 1)
	if v := tc.ConnectionState().Version; v < tls.VersionTLS12 {
		t.Fatalf("TLS version %x", v)
	}
	c.send(map[string]any{"op": proto.OpSubscribe, "id": 1, "channel": "tls"})
	c.expect(proto.OpSubscribed)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool}}}
	resp, err := hc.Post("https://"+ts.addr+"/api/publish", "application/json", strings.NewReader(`{"channel":"tls","data":"`+strings.Repeat("x", 40000)+`"}`))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("publish over https: %v %v", resp, err)
	}
	resp.Body.Close()
	if m := c.expect(proto.OpMessage); len(m["data"].(string)) != 40000 {
		t.Fatalf("message over wss: %d bytes", len(m["data"].(string)))
	}

	// TLS 1.1 is refused.
	if old, err := tls.Dial("tcp", ts.addr, &tls.Config{RootCAs: ca.Pool, MaxVersion: tls.VersionTLS11}); err == nil {
		old.Close()
		t.Fatal("a TLS 1.1 handshake succeeded")
	}
	// Plain HTTP on the TLS port gets no answer, and the node goes on.
	if r, err := http.Get("http://" + ts.addr + "/healthz"); err == nil {
		r.Body.Close()
		t.Fatalf("plain HTTP answered %s", r.Status)
	}

	// A reloaded certificate serves new handshakes; the open connection
	// keeps working.
	ca.Issue(t, 200)
	if err := ts.ReloadTLS(); err != nil {
		t.Fatal(err)
	}
	_, tc2 := dialTLSWS(t, ts.addr, ca, 4096)
	if got := tc2.ConnectionState().PeerCertificates[0].SerialNumber.Int64(); got != 200 {
		t.Fatalf("after reload the certificate has serial %d, want 200", got)
	}
	c.send(map[string]any{"op": proto.OpPing})
	c.expect(proto.OpPong)
	if n := ts.m.tlsHandshakeErrors.Get(); n < 2 {
		t.Fatalf("tls handshake errors = %v, want ≥ 2 (TLS 1.1, plain HTTP)", n)
	}
}

func TestTLSConfigNeedsBoth(t *testing.T) {
	if _, err := New(Config{TLSCert: "cert.pem"}, nil, nil); err == nil {
		t.Fatal("a certificate without a key was accepted")
	}
}
