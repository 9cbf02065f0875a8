package server

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// claims are the parts of a client's JWT that tether uses.
type claims struct {
	sub      string
	expiry   time.Time
	channels []string // glob patterns the client may subscribe to
	publish  []string // glob patterns the client may publish to
}

type jwtClaims struct {
	jwt.RegisteredClaims
	Channels []string `json:"channels"`
	Publish  []string `json:"publish"`
}

// UnmarshalJSON decodes the claims, refusing a time claim (exp, nbf, iat)
// that is not a JSON number: the jwt package would read "exp":"123" (a
// string) as a number, and RFC 7519 says a NumericDate is a number.
func (c *jwtClaims) UnmarshalJSON(b []byte) error {
	var times struct {
		Exp json.RawMessage `json:"exp"`
		Nbf json.RawMessage `json:"nbf"`
		Iat json.RawMessage `json:"iat"`
	}
	if err := json.Unmarshal(b, &times); err != nil {
		return err
	}
	for _, t := range []json.RawMessage{times.Exp, times.Nbf, times.Iat} {
		if len(t) > 0 && t[0] != '-' && (t[0] < '0' || t[0] > '9') {
			return errors.New("a time claim (exp, nbf, iat) is not a number")
		}
	}
	type plain jwtClaims // without this method
	return json.Unmarshal(b, (*plain)(c))
}

// maxTokenLen bounds a token's length, checked before it is decoded, so a
// forged multi-megabyte token costs nothing but the bytes of its request
// head (which MaxHeaderBytes bounds anyway).
const maxTokenLen = 8 << 10

// parseToken verifies an HS256 token locally (no backend call, so a
// reconnect storm costs no database queries). Refused: a token over
// maxTokenLen bytes, any algorithm but HS256, a bad signature, a missing or
// non-numeric exp (a string "exp" is refused, not read as a number), an
// expired token (or one not yet valid by nbf), a missing sub, and glob
// patterns over 255 bytes.
func parseToken(secret []byte, token string, now time.Time) (*claims, error) {
	if len(token) > maxTokenLen {
		return nil, fmt.Errorf("cannot verify token: longer than %d bytes", maxTokenLen)
	}
	var jc jwtClaims
	p := jwt.NewParser(
		jwt.WithValidMethods([]string{"HS256"}),
		jwt.WithExpirationRequired(),
		jwt.WithTimeFunc(func() time.Time { return now }),
	)
	_, err := p.ParseWithClaims(token, &jc, func(*jwt.Token) (any, error) { return secret, nil })
	if err != nil {
		return nil, fmt.Errorf("cannot verify token: %w", err)
	}
	if jc.Subject == "" {
		return nil, errors.New("cannot verify token: sub claim is required")
	}
	for _, p := range append(jc.Channels, jc.Publish...) {
		if len(p) > 255 {
			return nil, errors.New("cannot verify token: pattern longer than 255 bytes")
		}
	}
	return &claims{
		sub:      jc.Subject,
		expiry:   jc.ExpiresAt.Time,
		channels: jc.Channels,
		publish:  jc.Publish,
	}, nil
}

// tokenFromHead returns the token from the query (token=) or the
// Authorization header. When both carry one, the query's wins: browsers
// cannot set headers on a WebSocket, so the query is the one the client
// chose for this connection (docs/protocol.md).
func tokenFromHead(head *requestHead) string {
	if _, query, ok := strings.Cut(head.target, "?"); ok {
		if t := queryGet(query, "token"); t != "" {
			return t
		}
	}
	return bearerValue(head.get("Authorization"))
}

// queryGet returns the first value of key in query as url.Values.Get
// would after url.ParseQuery: pairs split at '&', keys and values
// unescaped, a pair holding ';' or a bad escape skipped. It allocates only
// for an escaped key or value.
func queryGet(query, key string) string {
	for query != "" {
		var pair string
		pair, query, _ = strings.Cut(query, "&")
		if pair == "" || strings.Contains(pair, ";") {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		if strings.ContainsAny(k, "%+") {
			var err error
			if k, err = url.QueryUnescape(k); err != nil {
				continue
			}
		}
		if k != key {
			continue
		}
		if strings.ContainsAny(v, "%+") {
			var err error
			if v, err = url.QueryUnescape(v); err != nil {
				continue
			}
		}
		return v
	}
	return ""
}

func bearer(r *http.Request) string { return bearerValue(r.Header.Get("Authorization")) }

// bearerValue returns the credentials of an Authorization value of the
// Bearer scheme, or "".
func bearerValue(h string) string {
	const prefix = "Bearer "
	if len(h) > len(prefix) && strings.EqualFold(h[:len(prefix)], prefix) {
		return strings.TrimSpace(h[len(prefix):])
	}
	return ""
}

// mayRead reports whether c may subscribe to channel.
func (c *conn) mayRead(channel string) bool {
	if c.auth == nil {
		return true
	}
	if strings.HasPrefix(channel, "user.") && channel[len("user."):] == c.auth.sub {
		return true
	}
	return matchAny(c.auth.channels, channel)
}

// mayPublish reports whether c may publish to channel.
func (c *conn) mayPublish(channel string) bool {
	if c.auth == nil {
		return c.srv.cfg.AllowClientPublish
	}
	return matchAny(c.auth.publish, channel)
}

func matchAny(patterns []string, s string) bool {
	for _, p := range patterns {
		if globMatch(p, s) {
			return true
		}
	}
	return false
}

// globMatch reports whether s matches pattern, where '*' matches any run of
// bytes (including none) and '?' exactly one byte. It runs in
// O(len(pattern)·len(s)) at worst, with no recursion.
func globMatch(pattern, s string) bool {
	p, i := 0, 0
	star, mark := -1, 0
	for i < len(s) {
		switch {
		// '*' first: a '*' in the pattern is never a literal, even
		// against a '*' in s.
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, i
			p++
		case p < len(pattern) && (pattern[p] == '?' || pattern[p] == s[i]):
			p++
			i++
		case star >= 0:
			p = star + 1
			mark++
			i = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// checkOrigin applies cfg.AllowedOrigins to an upgrade request's Origin
// ("" when it sent none) and Host.
func (s *Server) checkOrigin(origin, host string) bool {
	if origin == "" {
		return true
	}
	for _, o := range s.cfg.AllowedOrigins {
		if o == "*" || strings.EqualFold(o, origin) {
			return true
		}
	}
	if len(s.cfg.AllowedOrigins) > 0 {
		return false
	}
	u, err := url.Parse(origin)
	return err == nil && strings.EqualFold(u.Host, host)
}

// apiAllowed checks the HTTP API's credentials: the API key when one is
// configured (constant-time compare), else a loopback caller. A loopback
// request that carries a proxy's forwarding header (Forwarded,
// X-Forwarded-For, X-Real-IP) is not trusted as loopback: it is a load
// balancer or proxy on the same host relaying someone else's request.
func (s *Server) apiAllowed(r *http.Request) bool {
	if s.cfg.APIKey != "" {
		got := bearer(r)
		return subtle.ConstantTimeCompare([]byte(got), []byte(s.cfg.APIKey)) == 1
	}
	for _, h := range proxyHeaders {
		if _, ok := r.Header[h]; ok {
			return false
		}
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// proxyHeaders are the canonical names of the headers a proxy adds to say
// whom it relays.
var proxyHeaders = []string{"Forwarded", "X-Forwarded-For", "X-Real-Ip"}
