package server

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// httpConn reads the HTTP/1.1 requests of a socket until it upgrades: the
// WebSocket upgrade itself (upgrade.go), or requests for the API, metrics,
// health checks and static files, answered by the public handler.
//
// Memory: what a socket in this phase can make the node hold is bounded
// before any credential is checked: at most MaxHeaderBytes of request head,
// then, only for a request whose head passed (and, for /api/, whose
// credentials did), a body of at most MaxAPIBody. MaxHandshakes bounds the
// sockets in this phase.
//
// Concurrency: onData runs on the socket's poller goroutine. A request
// other than the upgrade is answered on a goroutine of its own (handlers
// may block, on Redis for a publish); while it runs, what the client sends
// next waits in buf, and the goroutine reads it once it has answered. mu
// orders the two, so requests are read and answered one at a time and in
// order.
type httpConn struct {
	c *conn // immutable

	mu    sync.Mutex // guards the fields below
	state httpState
	buf   []byte      // bytes received and not used yet: part of a head, a body, the next request
	head  requestHead // the request whose body is being read, in httpBody
}

type httpState uint8

const (
	httpHead     httpState = iota // reading a request head
	httpBody                      // reading the body of head
	httpBusy                      // a handler runs; what arrives waits in buf
	httpDone                      // answered with Connection: close; input is ignored
	httpUpgraded                  // the socket reads WebSocket frames now
)

// lingerTimeout is how long a socket answered with an error stays open for
// its client to read the answer (and close) before it is closed: closing
// at once could reset the connection with the answer unread.
const lingerTimeout = time.Second

// onData handles bytes the client sent; data is the poller's buffer.
func (h *httpConn) onData(data []byte) {
	h.mu.Lock()
	switch h.state {
	case httpUpgraded:
		// The upgrade happened on a handler goroutine (a keep-alive
		// connection's next request) after onData had loaded h.
		h.mu.Unlock()
		h.c.onWSData(data)
		return
	case httpDone:
		h.mu.Unlock()
		return
	case httpBusy:
		if len(h.buf)+len(data) > h.c.srv.cfg.MaxHeaderBytes {
			// More than a request head waits behind a request being
			// answered: a client that does not wait for answers.
			h.state = httpDone
			h.mu.Unlock()
			h.c.srv.m.httpReject(rejectHeadTooLarge)
			_ = h.c.nc.Close()
			return
		}
		h.buf = append(h.buf, data...)
		h.mu.Unlock()
		return
	}
	b := data
	if len(h.buf) > 0 {
		h.buf = append(h.buf, data...)
		b = h.buf
	}
	h.serve(b)
	h.mu.Unlock()
}

// onClose reports whether the socket closed in its HTTP phase (true) or
// after its upgrade (false: the WebSocket close path runs).
func (h *httpConn) onClose() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state == httpUpgraded {
		return false
	}
	h.state = httpDone
	h.buf = nil
	h.c.srv.m.handshakes.Add(-1)
	return true
}

// serve reads what b holds: request heads, bodies, then hands the request
// on. h.mu is held. b is either the poller's buffer or h.buf; whatever of
// it is not used is kept in h.buf.
func (h *httpConn) serve(b []byte) {
	s := h.c.srv
	for {
		switch h.state {
		case httpHead:
			head, n, err := parseRequestHead(b, s.cfg.MaxHeaderBytes)
			if err != nil {
				he := err.(*headError)
				s.m.httpReject(he.reason)
				h.refuse(he.status, codeOfStatus(he.status), he.msg)
				return
			}
			if n == 0 {
				h.keep(b)
				return
			}
			b = b[n:]
			if head.path() == wsPath {
				h.upgrade(&head, b)
				return
			}
			if !h.admitBody(&head) {
				return
			}
			h.head = head
			h.state = httpBody
		case httpBody:
			n := int(max(h.head.contentLength, 0))
			if len(b) < n {
				h.keep(b)
				return
			}
			var body []byte
			if n > 0 {
				body = bytes.Clone(b[:n])
			}
			h.keep(b[n:])
			h.state = httpBusy
			h.dispatch(h.head, body)
			return
		default:
			return
		}
	}
}

// keep stores b, the bytes not used yet, in h.buf. b may alias h.buf:
// append moves overlapping bytes correctly.
func (h *httpConn) keep(b []byte) {
	if len(b) == 0 {
		h.buf = nil
		return
	}
	h.buf = append(h.buf[:0], b...)
}

// admitBody decides, from its head, whether a request's body may be read:
// not when it declares more than MaxAPIBody (413), and not for an API
// request without the API's credentials (401), whose body nobody would
// read. It answers the refused ones.
func (h *httpConn) admitBody(head *requestHead) bool {
	s := h.c.srv
	if head.contentLength > int64(s.cfg.MaxAPIBody) {
		s.m.httpReject(rejectBodyTooLarge)
		s.m.apiErrors.Inc()
		s.apiCmds.count(apiCommandOf(head.path()), codeOfStatus(http.StatusRequestEntityTooLarge))
		h.refuse(http.StatusRequestEntityTooLarge, codeOfStatus(http.StatusRequestEntityTooLarge),
			"request body larger than "+strconv.Itoa(s.cfg.MaxAPIBody)+" bytes")
		return false
	}
	if s.cfg.APIListen == "" && strings.HasPrefix(head.path(), "/api/") && head.contentLength > 0 &&
		!s.apiAllowed(h.request(head, nil)) {
		s.m.apiErrors.Inc()
		s.apiCmds.count(apiCommandOf(head.path()), codeOfStatus(http.StatusUnauthorized))
		h.refuse(http.StatusUnauthorized, codeOfStatus(http.StatusUnauthorized), s.apiDeniedMessage())
		return false
	}
	return true
}

// request returns head and body as the *http.Request a handler reads.
func (h *httpConn) request(head *requestHead, body []byte) *http.Request {
	u, err := url.ParseRequestURI(head.target)
	if err != nil {
		u = &url.URL{Path: head.path()}
	}
	r := &http.Request{
		Method:     head.method,
		URL:        u,
		Proto:      "HTTP/1." + strconv.Itoa(head.minor),
		ProtoMajor: 1,
		ProtoMinor: head.minor,
		Header:     head.httpHeader(),
		Host:       head.host,
		RemoteAddr: h.c.nc.RemoteAddr().String(),
		RequestURI: head.target,
		Close:      head.close,
		Body:       http.NoBody,
	}
	if len(body) > 0 {
		r.Body = &bodyReader{Reader: bytes.NewReader(body)}
		r.ContentLength = int64(len(body))
	}
	return r
}

type bodyReader struct{ *bytes.Reader }

func (bodyReader) Close() error { return nil }

// dispatch answers a request on a goroutine of its own: at most
// maxHTTPInFlight at once, over which the request is refused with 503.
func (h *httpConn) dispatch(head requestHead, body []byte) {
	s := h.c.srv
	select {
	case s.httpSlots <- struct{}{}:
	default:
		s.m.httpReject(rejectOverload)
		h.refuse(http.StatusServiceUnavailable, codeOfStatus(http.StatusServiceUnavailable),
			"too many HTTP requests in flight: retry later", "Retry-After", "1")
		return
	}
	r := h.request(&head, body)
	s.goroutines.start("http", func() {
		defer func() { <-s.httpSlots }()
		w := &responseWriter{header: make(http.Header)}
		s.serveRequest(w, r)
		h.answered(w, r)
	})
}

// serveRequest runs the public handler, answering 500 if it panics.
func (s *Server) serveRequest(w *responseWriter, r *http.Request) {
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("http handler panicked", "path", r.URL.Path, "panic", v)
			w.reset()
			httpError(w, http.StatusInternalServerError, "internal", "internal error")
		}
	}()
	s.handler.ServeHTTP(w, r)
}

// answered writes w's answer to r and reads the next request, if any
// arrived meanwhile. It runs on the handler's goroutine.
func (h *httpConn) answered(w *responseWriter, r *http.Request) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state != httpBusy {
		return // the socket closed meanwhile
	}
	_, _ = h.c.write(w.appendTo(nil, r.Method == http.MethodHead, r.Close))
	if r.Close {
		h.linger()
		return
	}
	h.state = httpHead
	_ = h.c.nc.SetReadDeadline(time.Now().Add(h.c.srv.cfg.HandshakeTimeout))
	if len(h.buf) > 0 {
		h.serve(h.buf)
	}
}

// refuse answers the current request with status and a JSON error body,
// then closes the connection (after lingerTimeout). hdr holds extra header
// fields as name, value pairs. h.mu is held.
func (h *httpConn) refuse(status int, code, msg string, hdr ...string) {
	w := &responseWriter{header: make(http.Header)}
	for i := 0; i+1 < len(hdr); i += 2 {
		w.header.Set(hdr[i], hdr[i+1])
	}
	httpError(w, status, code, msg)
	_, _ = h.c.write(w.appendTo(nil, false, true))
	h.linger()
}

// linger stops reading requests and closes the socket after lingerTimeout,
// unless the client closes it first. h.mu is held.
func (h *httpConn) linger() {
	h.state = httpDone
	h.buf = nil
	_ = h.c.nc.SetReadDeadline(time.Now().Add(lingerTimeout))
}

// codeOfStatus returns the JSON error code (docs/protocol.md) an HTTP
// refusal with status carries.
func codeOfStatus(status int) string {
	switch status {
	case http.StatusUnauthorized:
		return "unauthorized"
	case http.StatusForbidden:
		return "forbidden"
	case http.StatusNotFound:
		return "not_found"
	case http.StatusRequestEntityTooLarge, http.StatusRequestHeaderFieldsTooLarge:
		return "too_large"
	case http.StatusServiceUnavailable:
		return "unavailable"
	case http.StatusMethodNotAllowed:
		return "method_not_allowed"
	case http.StatusConflict:
		return "conflict"
	}
	return "bad_request"
}

// responseWriter collects a handler's answer for one write.
type responseWriter struct {
	header http.Header
	status int
	body   []byte
}

func (w *responseWriter) Header() http.Header { return w.header }

func (w *responseWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

func (w *responseWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	w.body = append(w.body, p...)
	return len(p), nil
}

func (w *responseWriter) reset() {
	clear(w.header)
	w.status = 0
	w.body = w.body[:0]
}

// appendTo appends the HTTP/1.1 response: status line, header fields with
// Content-Length (and Connection: close when closing), then the body unless
// the request was a HEAD.
func (w *responseWriter) appendTo(dst []byte, head, closing bool) []byte {
	status := w.status
	if status == 0 {
		status = http.StatusOK
	}
	dst = append(dst, "HTTP/1.1 "...)
	dst = strconv.AppendInt(dst, int64(status), 10)
	dst = append(dst, ' ')
	dst = append(dst, http.StatusText(status)...)
	dst = append(dst, "\r\n"...)
	bodyAllowed := status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
	if bodyAllowed && len(w.body) > 0 && w.header.Get("Content-Type") == "" {
		w.header.Set("Content-Type", http.DetectContentType(w.body))
	}
	w.header.Del("Content-Length")
	w.header.Del("Connection")
	w.header.Del("Transfer-Encoding")
	var hb bytes.Buffer
	if err := w.header.Write(&hb); err != nil {
		slog.Debug("cannot write header", "err", err)
	}
	dst = append(dst, hb.Bytes()...)
	if bodyAllowed {
		dst = append(dst, "Content-Length: "...)
		dst = strconv.AppendInt(dst, int64(len(w.body)), 10)
		dst = append(dst, "\r\n"...)
	}
	if closing {
		dst = append(dst, "Connection: close\r\n"...)
	}
	dst = append(dst, "\r\n"...)
	if bodyAllowed && !head {
		dst = append(dst, w.body...)
	}
	return dst
}
