package client

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"

	"tether/internal/proto"
)

// handshake opens a connection to u: TCP (through the proxy Options.Proxy
// names, if any), TLS for wss, the upgrade request, and the server's
// welcome frame. ctx bounds all of it.
func handshake(ctx context.Context, u *url.URL, token string, o *Options) (*wsConn, error) {
	hu := *u // the URL as HTTP sees it, for the proxy choice and the request
	hu.Scheme = "http"
	if u.Scheme == "wss" {
		hu.Scheme = "https"
	}
	header := make(http.Header, len(o.Header)+1)
	for k, v := range o.Header {
		header[k] = v
	}
	if token != "" {
		header.Set("Authorization", "Bearer "+token)
	}
	proxy, err := o.proxy()(&http.Request{Method: http.MethodGet, URL: &hu, Header: header, Host: u.Host})
	if err != nil {
		return nil, fmt.Errorf("cannot choose a proxy for %s: %w", u.Redacted(), err)
	}

	c := &wsConn{writeTimeout: o.handshakeTimeout()}
	dial := o.dialer()
	tr := &http.Transport{
		// One connection per Transport, kept by the WebSocket once
		// upgraded: nothing to pool, and no idle connection may outlive
		// the attempt.
		DisableKeepAlives: true,
		TLSClientConfig:   o.TLSConfig,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var nc net.Conn
			var err error
			if proxy != nil {
				nc, err = dialTunnel(ctx, dial, proxy, addr, o.TLSConfig)
			} else {
				nc, err = dial(ctx, network, addr)
			}
			c.nc = nc
			return nc, err
		},
	}
	defer tr.CloseIdleConnections()
	ws, resp, err := websocket.Dial(ctx, hu.String(), &websocket.DialOptions{
		HTTPClient: &http.Client{
			Transport: tr,
			// A redirect is the server's answer, not a place to go.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		HTTPHeader:      header,
		Host:            header.Get("Host"),
		CompressionMode: websocket.CompressionDisabled,
		OnPingReceived:  func(context.Context, []byte) bool { c.touch(); return true },
		OnPongReceived:  func(context.Context, []byte) { c.touch() },
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			return nil, refusal(resp)
		}
		if resp != nil {
			return nil, fmt.Errorf("%w: %w", ErrProtocol, err)
		}
		return nil, err
	}
	c.ws = ws
	ws.SetReadLimit(int64(o.maxMessageSize()))
	c.touch()
	if err := c.readWelcome(ctx); err != nil {
		ws.CloseNow()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	return c, nil
}

// readWelcome reads the server's first message, which must be a welcome.
func (c *wsConn) readWelcome(ctx context.Context) error {
	typ, p, err := c.read(ctx)
	var ce websocket.CloseError
	switch {
	case errors.As(err, &ce):
		return &CloseError{Code: int(ce.Code), Reason: ce.Reason}
	case err != nil:
		return fmt.Errorf("cannot read welcome frame: %w", err)
	case typ != websocket.MessageText:
		return fmt.Errorf("%w: binary frame", ErrProtocol)
	}
	if err := json.Unmarshal(p, &c.welcome); err != nil || c.welcome.Op != proto.OpWelcome {
		return fmt.Errorf("%w: first frame is not a welcome: %.100q", ErrProtocol, p)
	}
	return nil
}

// dialTunnel opens a TCP tunnel to addr through the HTTP proxy at proxy
// with CONNECT, as RFC 6455 (section 4.1) asks of a client behind a proxy,
// for ws:// as for wss://. An https:// proxy is reached over TLS with
// tlsConfig. The proxy's user info, if any, is sent as Basic credentials.
func dialTunnel(ctx context.Context, dial dialFunc, proxy *url.URL, addr string, tlsConfig *tls.Config) (net.Conn, error) {
	paddr := proxy.Host
	if proxy.Port() == "" {
		port := "80"
		if proxy.Scheme == "https" {
			port = "443"
		}
		paddr = net.JoinHostPort(proxy.Hostname(), port)
	}
	if proxy.Scheme != "http" && proxy.Scheme != "https" {
		return nil, fmt.Errorf("cannot use proxy %s: scheme must be http or https", proxy.Redacted())
	}
	raw, err := dial(ctx, "tcp", paddr)
	if err != nil {
		return nil, fmt.Errorf("cannot dial proxy %s: %w", paddr, err)
	}
	// A deadline on the TCP connection also interrupts TLS above it.
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	nc, err := connect(ctx, raw, proxy, addr, tlsConfig)
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		raw.Close()
		return nil, fmt.Errorf("cannot tunnel to %s through proxy %s: %w", addr, proxy.Redacted(), err)
	}
	raw.SetDeadline(time.Time{})
	return nc, nil
}

// connect asks the proxy on raw for a tunnel to addr.
func connect(ctx context.Context, raw net.Conn, proxy *url.URL, addr string, tlsConfig *tls.Config) (net.Conn, error) {
	nc := raw
	if proxy.Scheme == "https" {
		cfg := tlsConfig.Clone()
		if cfg == nil {
			cfg = &tls.Config{}
		}
		cfg.ServerName = proxy.Hostname()
		tc := tls.Client(raw, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, err
		}
		nc = tc
	}
	req := &http.Request{
		Method: http.MethodConnect,
		URL:    &url.URL{Opaque: addr},
		Host:   addr,
		Header: make(http.Header),
	}
	if u := proxy.User; u != nil {
		pw, _ := u.Password()
		req.Header.Set("Proxy-Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(u.Username()+":"+pw)))
	}
	if err := req.Write(nc); err != nil {
		return nil, err
	}
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return nil, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("proxy answered %s", resp.Status)
	}
	if br.Buffered() > 0 {
		// The server speaks only once the upgrade request is sent.
		return nil, errors.New("proxy sent bytes after its answer")
	}
	return nc, nil
}

// refusal turns a non-101 upgrade response into a *HandshakeError.
func refusal(resp *http.Response) error {
	e := &HandshakeError{StatusCode: resp.StatusCode}
	if s := resp.Header.Get("Retry-After"); s != "" {
		if secs, err := strconv.Atoi(strings.TrimSpace(s)); err == nil && secs >= 0 {
			e.RetryAfter = time.Duration(secs) * time.Second
		} else if t, err := http.ParseTime(s); err == nil {
			e.RetryAfter = max(0, time.Until(t))
		}
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	var eb struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &eb) == nil {
		e.Code, e.Message = eb.Error.Code, eb.Error.Message
	}
	return e
}
