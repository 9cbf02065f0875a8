package server

import (
	"bytes"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
)

// requestHead is one parsed HTTP/1.x request head (RFC 9112). Its strings
// share one copy of the head's bytes, never the caller's buffer.
type requestHead struct {
	method string
	target string        // origin-form: "/path" or "/path?query"
	minor  int           // HTTP/1.minor: 0 or 1
	fields []headerField // in the order received, names as sent

	host          string
	contentLength int64 // -1 when absent
	close         bool  // the connection ends after this request's response
	upgrade       bool  // Connection lists "upgrade"
}

// headerField is one header field line: its name as the client sent it
// and its value without surrounding white space.
type headerField struct{ name, value string }

// get returns the value of the first field named name (compared without
// regard to case, as field names are), or "".
func (h *requestHead) get(name string) string {
	for _, f := range h.fields {
		if asciiEqualFold(f.name, name) {
			return f.value
		}
	}
	return ""
}

// only returns the value of the one field named name, and false when
// there are none or several.
func (h *requestHead) only(name string) (string, bool) {
	v, n := "", 0
	for _, f := range h.fields {
		if asciiEqualFold(f.name, name) {
			v, n = f.value, n+1
		}
	}
	return v, n == 1
}

// lists reports whether the comma-separated values of the fields named
// name list token (case-insensitive), as Connection and Upgrade do.
func (h *requestHead) lists(name, token string) bool {
	for _, f := range h.fields {
		if !asciiEqualFold(f.name, name) {
			continue
		}
		for v := f.value; v != ""; {
			var opt string
			opt, v, _ = strings.Cut(v, ",")
			if asciiEqualFold(strings.Trim(opt, " \t"), token) {
				return true
			}
		}
	}
	return false
}

// httpHeader returns the fields as an http.Header (canonical keys), for
// the HTTP API's handlers. The upgrade path reads fields directly: a map
// and a slice per field would be most of what an upgrade allocates.
func (h *requestHead) httpHeader() http.Header {
	hdr := make(http.Header, len(h.fields))
	for _, f := range h.fields {
		k := textproto.CanonicalMIMEHeaderKey(f.name)
		hdr[k] = append(hdr[k], f.value)
	}
	return hdr
}

// asciiEqualFold is strings.EqualFold for the ASCII names of header
// fields and tokens: no Unicode folding (a "K" KELVIN SIGN is not a k).
func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if x == y {
			continue
		}
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// headError is a request head refused by parseRequestHead: the status to
// answer with, a fixed metrics label and a message for the JSON body.
type headError struct {
	status int
	reason string
	msg    string
}

func (e *headError) Error() string { return e.reason + ": " + e.msg }

// Reasons a request is refused before any handler runs, as counted in
// tether_http_rejected_total{reason}.
const (
	rejectHeadTooLarge     = "head_too_large"
	rejectRequestLine      = "request_line"
	rejectHeaderSyntax     = "header"
	rejectObsFold          = "obs_fold"
	rejectLineEnding       = "line_ending"
	rejectContentLength    = "content_length"
	rejectTransferEncoding = "transfer_encoding"
	rejectHost             = "host"
	rejectBodyTooLarge     = "body_too_large"
	rejectUpgrade          = "upgrade"
	rejectOverload         = "overload"
	rejectTimeout          = "timeout"
)

var httpRejectReasons = []string{
	rejectHeadTooLarge, rejectRequestLine, rejectHeaderSyntax, rejectObsFold, rejectLineEnding,
	rejectContentLength, rejectTransferEncoding, rejectHost, rejectBodyTooLarge, rejectUpgrade, rejectOverload, rejectTimeout,
}

func headTooLarge(max int) *headError {
	return &headError{status: http.StatusRequestHeaderFieldsTooLarge, reason: rejectHeadTooLarge,
		msg: "request head larger than " + strconv.Itoa(max) + " bytes"}
}

// bareLF reports whether b holds an LF not preceded by CR.
func bareLF(b []byte) bool {
	for i, c := range b {
		if c == '\n' && (i == 0 || b[i-1] != '\r') {
			return true
		}
	}
	return false
}

func badRequest(reason, msg string) *headError {
	return &headError{status: http.StatusBadRequest, reason: reason, msg: msg}
}

// maxHeaderFields bounds the header field lines of one request head.
const maxHeaderFields = 100

// parseRequestHead parses the request head at the start of b. It returns
// the head and the number of bytes it spans (the body, or the next
// request, or WebSocket frames start at b[n:]). When b holds no complete
// head yet it returns n == 0 and no error; the caller reads more, as long
// as len(b) stays within max. A head longer than max bytes is refused with
// 431, whether complete or not.
//
// The rules, in the order RFC 9112 gives them, each refused with 400:
// lines end with CRLF (a bare LF or CR is refused: a proxy that reads it
// otherwise could see different requests); empty lines before the request
// line are skipped; the request line is exactly method SP target SP
// version, the method a token, the target in origin form (visible ASCII,
// no fragment), the version HTTP/1.1 or HTTP/1.0; a field line starting
// with white space (obs-fold) is refused; field names are tokens with no
// white space before the colon; values hold no control characters but
// HTAB; Content-Length appears at most once, as digits only; any
// Transfer-Encoding is refused (tether reads bodies by Content-Length
// only); HTTP/1.1 needs exactly one Host.
func parseRequestHead(b []byte, max int) (requestHead, int, error) {
	var h requestHead
	start := 0
	for start+1 < len(b) && b[start] == '\r' && b[start+1] == '\n' {
		start += 2
	}
	end := bytes.Index(b[start:], []byte("\r\n\r\n"))
	if end < 0 {
		if bareLF(b[start:]) {
			return h, 0, badRequest(rejectLineEnding, "line ends with a bare LF")
		}
		if len(b) >= max {
			return h, 0, headTooLarge(max)
		}
		return h, 0, nil
	}
	n := start + end + 4
	if n > max {
		return h, 0, headTooLarge(max)
	}
	raw := b[start : n-2]
	if bareLF(raw) || bytes.Count(raw, []byte("\r")) != bytes.Count(raw, []byte("\n")) {
		return h, 0, badRequest(rejectLineEnding, "a line ends with a bare LF or holds a bare CR")
	}
	// One copy of the head; every string below is a slice of it.
	head := string(raw)
	line, rest, _ := strings.Cut(head, "\r\n")
	if err := h.parseRequestLine(line); err != nil {
		return h, 0, err
	}
	h.contentLength = -1
	h.fields = make([]headerField, 0, min(maxHeaderFields, strings.Count(rest, "\r\n")+1))
	hosts := 0
	for fields := 0; rest != ""; fields++ {
		if fields == maxHeaderFields {
			return h, 0, &headError{status: http.StatusRequestHeaderFieldsTooLarge, reason: rejectHeadTooLarge,
				msg: "more than " + strconv.Itoa(maxHeaderFields) + " header fields"}
		}
		line, rest, _ = strings.Cut(rest, "\r\n")
		if line[0] == ' ' || line[0] == '\t' {
			return h, 0, badRequest(rejectObsFold, "a header line starts with white space (obs-fold)")
		}
		colon := strings.IndexByte(line, ':')
		if colon <= 0 || !isToken(line[:colon]) {
			return h, 0, badRequest(rejectHeaderSyntax, "malformed header field name")
		}
		name := line[:colon]
		value := strings.Trim(line[colon+1:], " \t")
		for i := 0; i < len(value); i++ {
			if c := value[i]; (c < ' ' && c != '\t') || c == 0x7f {
				return h, 0, badRequest(rejectHeaderSyntax, "control character in a header value")
			}
		}
		switch {
		case asciiEqualFold(name, "Content-Length"):
			if h.contentLength >= 0 {
				return h, 0, badRequest(rejectContentLength, "more than one Content-Length")
			}
			if value == "" || len(value) > 18 || strings.Trim(value, "0123456789") != "" {
				return h, 0, badRequest(rejectContentLength, "Content-Length is not a number")
			}
			h.contentLength, _ = strconv.ParseInt(value, 10, 64)
		case asciiEqualFold(name, "Transfer-Encoding"):
			return h, 0, badRequest(rejectTransferEncoding, "Transfer-Encoding is not supported: send a Content-Length")
		case asciiEqualFold(name, "Host"):
			hosts++
			h.host = value
		}
		h.fields = append(h.fields, headerField{name, value})
	}
	h.upgrade = h.lists("Connection", "upgrade")
	h.close = h.lists("Connection", "close") ||
		(h.minor == 0 && !h.lists("Connection", "keep-alive"))
	if hosts > 1 || (hosts == 0 && h.minor == 1) || !validHost(h.host) {
		return h, 0, badRequest(rejectHost, "HTTP/1.1 needs exactly one valid Host header")
	}
	return h, n, nil
}

// parseRequestLine parses "method SP origin-form SP HTTP/1.x" into h.
func (h *requestHead) parseRequestLine(line string) error {
	method, rest, ok1 := strings.Cut(line, " ")
	target, version, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || !isToken(method) {
		return badRequest(rejectRequestLine, "malformed request line")
	}
	switch version {
	case "HTTP/1.1":
		h.minor = 1
	case "HTTP/1.0":
		h.minor = 0
	default:
		return badRequest(rejectRequestLine, "only HTTP/1.1 and HTTP/1.0 are served")
	}
	if target == "" || target[0] != '/' {
		return badRequest(rejectRequestLine, "the request target must be an absolute path")
	}
	for i := 0; i < len(target); i++ {
		if c := target[i]; c <= ' ' || c >= 0x7f || c == '#' {
			return badRequest(rejectRequestLine, "invalid character in the request target")
		}
	}
	if !validEscapes(targetPath(target)) {
		return badRequest(rejectRequestLine, "invalid percent-escape in the request path")
	}
	h.method, h.target = method, target
	return nil
}

// path returns the target without its query.
func (h *requestHead) path() string { return targetPath(h.target) }

// targetPath returns target without its query.
func targetPath(target string) string {
	p, _, _ := strings.Cut(target, "?")
	return p
}

// validEscapes reports whether every '%' in path starts an escape of two
// hex digits: the rule net/http's url.ParseRequestURI applies to a path
// (it leaves the query unchecked), so that tether never routes a target a
// proxy built on net/http would refuse with 400.
func validEscapes(path string) bool {
	for i := 0; i < len(path); i++ {
		if path[i] != '%' {
			continue
		}
		if i+2 >= len(path) || !isHex(path[i+1]) || !isHex(path[i+2]) {
			return false
		}
		i += 2
	}
	return true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// tokenChars marks the bytes of an RFC 9110 token (tchar).
var tokenChars = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !tokenChars[s[i]] {
			return false
		}
	}
	return true
}

// validHost accepts what a Host header may carry: a host name, an IPv4
// address or a bracketed IPv6 address, each with an optional port. It
// refuses what could smuggle a second authority (userinfo, paths, white
// space).
func validHost(host string) bool {
	for i := 0; i < len(host); i++ {
		switch c := host[i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '-', c == '.', c == '_', c == '~', c == '%', c == ':', c == '[', c == ']':
		default:
			return false
		}
	}
	return true
}
