package client_test

// The client's transport against real tether nodes: through a real HTTP
// CONNECT proxy, over TLS through a TLS-terminating reverse proxy, and with
// credentials in a custom header.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tether/client"
	"tether/internal/testutil"
	"tether/server"
)

// connectProxy is an HTTP proxy on 127.0.0.1 that serves CONNECT only, as
// a corporate proxy in front of WebSocket traffic does: it checks Basic
// credentials when it has some, dials the target and copies bytes both
// ways. It counts the tunnels it opened and the bytes they carried.
type connectProxy struct {
	srv        *httptest.Server
	user, pass string // required credentials; none if user is empty

	tunnels atomic.Int64
	bytes   atomic.Int64

	mu      sync.Mutex        // guards the fields below
	hosts   map[string]string // host:port → address to dial instead
	targets []string
	conns   []net.Conn
	wg      sync.WaitGroup
}

func startConnectProxy(t testing.TB, user, pass string) *connectProxy {
	t.Helper()
	p := &connectProxy{user: user, pass: pass}
	p.srv = httptest.NewServer(http.HandlerFunc(p.serveHTTP))
	t.Cleanup(func() {
		p.srv.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

// URL returns the proxy's URL, with credentials when it requires them.
func (p *connectProxy) URL() *url.URL {
	u, _ := url.Parse(p.srv.URL)
	if p.user != "" {
		u.User = url.UserPassword(p.user, p.pass)
	}
	return u
}

func (p *connectProxy) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodConnect {
		http.Error(w, "CONNECT only", http.StatusMethodNotAllowed)
		return
	}
	if p.user != "" {
		u, pw, ok := (&http.Request{Header: http.Header{"Authorization": r.Header.Values("Proxy-Authorization")}}).BasicAuth()
		if !ok || u != p.user || pw != p.pass {
			w.Header().Set("Proxy-Authenticate", `Basic realm="test"`)
			http.Error(w, "proxy credentials required", http.StatusProxyAuthRequired)
			return
		}
	}
	addr := r.Host
	p.mu.Lock()
	if a, ok := p.hosts[addr]; ok {
		addr = a
	}
	p.mu.Unlock()
	up, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	down, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		up.Close()
		return
	}
	io.WriteString(down, "HTTP/1.1 200 Connection established\r\n\r\n")
	p.tunnels.Add(1)
	p.mu.Lock()
	p.targets = append(p.targets, r.Host)
	p.conns = append(p.conns, up, down)
	p.mu.Unlock()
	p.wg.Add(2)
	pipe := func(dst net.Conn, src io.Reader) {
		defer p.wg.Done()
		io.Copy(countingWriter{dst, &p.bytes}, src)
		up.Close()
		down.Close()
	}
	go pipe(up, brw.Reader) // the client may have sent bytes after its request
	go pipe(down, up)
}

// countingWriter adds what it writes to n.
type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (cw countingWriter) Write(b []byte) (int, error) {
	n, err := cw.w.Write(b)
	cw.n.Add(int64(n))
	return n, err
}

// Alias makes the proxy dial addr for tunnels to name.
func (p *connectProxy) Alias(name, addr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.hosts == nil {
		p.hosts = make(map[string]string)
	}
	p.hosts[name] = addr
}

// Targets returns the addresses the proxy opened tunnels to, in order.
func (p *connectProxy) Targets() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.targets...)
}

// startTLSFront starts a TLS-terminating reverse proxy in front of srv and
// returns it and the client TLS configuration that trusts it. It records
// the headers of every request it forwards.
func startTLSFront(t testing.TB, srv *server.Server) (*httptest.Server, *tls.Config, func() []http.Header) {
	t.Helper()
	backend := &url.URL{Scheme: "http", Host: srv.Addr().String()}
	tr := &http.Transport{DisableKeepAlives: true}
	var mu sync.Mutex
	var seen []http.Header
	rp := &httputil.ReverseProxy{
		Transport: tr,
		Rewrite: func(r *httputil.ProxyRequest) {
			mu.Lock()
			seen = append(seen, r.In.Header.Clone())
			mu.Unlock()
			r.SetURL(backend)
		},
	}
	front := httptest.NewTLSServer(rp)
	t.Cleanup(func() {
		front.CloseClientConnections()
		front.Close()
		tr.CloseIdleConnections()
	})
	headers := func() []http.Header {
		mu.Lock()
		defer mu.Unlock()
		return append([]http.Header(nil), seen...)
	}
	return front, front.Client().Transport.(*http.Transport).TLSClientConfig, headers
}

// roundTrip subscribes c to channel, publishes one message through the
// node's API and waits for it.
func roundTrip(t *testing.T, c *client.Client, srv *server.Server, channel string) {
	t.Helper()
	var in inbox
	if _, err := c.Subscribe(channel, in.handle); err != nil {
		t.Fatal(err)
	}
	apiPublish(t, srv, channel, "hello")
	testutil.Eventually(t, 5*time.Second, func() bool { return in.len() == 1 }, "message on "+channel)
}

// TestProxyConnect reaches a real node through a real HTTP CONNECT proxy
// with Basic credentials: over ws:// straight to the node, and over wss://
// to a TLS-terminating proxy in front of it (TLS runs inside the tunnel).
func TestProxyConnect(t *testing.T) {
	testutil.CheckGoroutines(t)
	srv := startServer(t, server.Config{}, newBus(t))
	front, tlsCfg, _ := startTLSFront(t, srv)
	px := startConnectProxy(t, "alice", "s3cret")

	c := dial(t, wsURL(srv), client.Options{Proxy: http.ProxyURL(px.URL())})
	roundTrip(t, c, srv, "proxy.ws")
	if got := px.Targets(); len(got) != 1 || got[0] != srv.Addr().String() {
		t.Fatalf("tunnels to %v, want one to the node %s", got, srv.Addr())
	}
	if px.bytes.Load() == 0 {
		t.Fatal("the tunnel carried nothing")
	}

	wss := "wss://" + strings.TrimPrefix(front.URL, "https://") + "/ws"
	c = dial(t, wss, client.Options{Proxy: http.ProxyURL(px.URL()), TLSConfig: tlsCfg})
	roundTrip(t, c, srv, "proxy.wss")
	if got := px.Targets(); len(got) != 2 || got[1] != front.Listener.Addr().String() {
		t.Fatalf("tunnels to %v, want the second to the TLS front %s", got, front.Listener.Addr())
	}
	t.Logf("%d tunnels through the CONNECT proxy carried %d bytes", px.tunnels.Load(), px.bytes.Load())

	// Wrong credentials: the proxy's refusal is the attempt's error.
	bad := px.URL()
	bad.User = url.UserPassword("alice", "wrong")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := client.Dial(ctx, wsURL(srv), client.Options{Proxy: http.ProxyURL(bad)})
	if err == nil || !strings.Contains(err.Error(), "407") {
		t.Fatalf("Dial with wrong proxy credentials: %v", err)
	}
	if n := px.tunnels.Load(); n != 2 {
		t.Fatalf("%d tunnels, want 2", n)
	}
}

// TestTLSFrontAndHeaders connects over wss:// to a TLS-terminating reverse
// proxy in front of a node that requires tokens, with the token in a custom
// Authorization header instead of Options.Token, plus a header of the
// application's own.
func TestTLSFrontAndHeaders(t *testing.T) {
	testutil.CheckGoroutines(t)
	secret := []byte("test-secret")
	srv := startServer(t, server.Config{JWTSecret: secret}, newBus(t))
	front, tlsCfg, headers := startTLSFront(t, srv)
	wss := "wss://" + strings.TrimPrefix(front.URL, "https://") + "/ws"

	h := http.Header{
		"Authorization": {"Bearer " + signToken(secret, "hdr", time.Now().Add(time.Hour))},
		"X-Tenant":      {"acme"},
	}
	c := dial(t, wss, client.Options{TLSConfig: tlsCfg, Header: h})
	roundTrip(t, c, srv, "tls.headers")
	if got := headers(); len(got) != 1 || got[0].Get("X-Tenant") != "acme" || got[0].Get("Authorization") != h.Get("Authorization") {
		t.Fatalf("upgrade request headers %v", got)
	}

	// Without the header the node refuses the upgrade.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := client.Dial(ctx, wss, client.Options{TLSConfig: tlsCfg})
	var he *client.HandshakeError
	if !errors.As(err, &he) || he.StatusCode != http.StatusUnauthorized {
		t.Fatalf("Dial without credentials: %v", err)
	}
}

// TestProxyFromEnvironment runs a child test process with HTTP_PROXY set
// (http.ProxyFromEnvironment reads the environment once per process) and a
// node URL whose host only the proxy can resolve, since the environment's
// proxy is never used for loopback addresses: with Options.Proxy nil the
// client goes through the proxy, and with the host in NO_PROXY it does not.
func TestProxyFromEnvironment(t *testing.T) {
	if url := os.Getenv("TETHER_TEST_ENV_PROXY_URL"); url != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := client.Dial(ctx, url, client.Options{})
		if err != nil {
			fmt.Println("dial error:", err)
			os.Exit(3)
		}
		c.Close()
		return
	}
	testutil.CheckGoroutines(t)
	srv := startServer(t, server.Config{}, newBus(t))
	px := startConnectProxy(t, "", "")
	_, port, _ := net.SplitHostPort(srv.Addr().String())
	name := net.JoinHostPort("tether-node.invalid", port)
	px.Alias(name, srv.Addr().String())

	child := func(noProxy string) error {
		cmd := exec.Command(os.Args[0], "-test.run=^TestProxyFromEnvironment$", "-test.count=1")
		cmd.Env = append(os.Environ(),
			"TETHER_TEST_ENV_PROXY_URL=ws://"+name+"/ws",
			"HTTP_PROXY="+px.srv.URL, "http_proxy=", "NO_PROXY="+noProxy, "no_proxy=")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	}
	if err := child(""); err != nil {
		t.Fatalf("through HTTP_PROXY: %v", err)
	}
	if got := px.Targets(); len(got) != 1 || got[0] != name {
		t.Fatalf("tunnels to %v, want one to %s", got, name)
	}
	if err := child("tether-node.invalid"); err == nil {
		t.Fatal("with the host in NO_PROXY the client still reached the node")
	}
	if got := px.Targets(); len(got) != 1 {
		t.Fatalf("tunnels to %v despite NO_PROXY", got)
	}
}
