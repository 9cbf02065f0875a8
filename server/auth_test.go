package server

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"tether/internal/proto"
)

var testSecret = []byte("test-secret-0123456789")

// makeJWT signs claims with HS256 (or leaves them unsigned with alg none).
func makeJWT(secret []byte, alg string, claims map[string]any) string {
	enc := base64.RawURLEncoding
	h, _ := json.Marshal(map[string]string{"alg": alg, "typ": "JWT"})
	p, _ := json.Marshal(claims)
	head := enc.EncodeToString(h) + "." + enc.EncodeToString(p)
	if alg == "none" {
		return head + "."
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(head))
	return head + "." + enc.EncodeToString(mac.Sum(nil))
}

func TestAuthUpgrade(t *testing.T) {
	ts := startServer(t, Config{JWTSecret: testSecret})
	exp := time.Now().Add(time.Hour).Unix()
	f := func(name, token string, header http.Header, wantStatus int) {
		t.Helper()
		path := "/ws"
		if token != "" {
			path += "?token=" + token
		}
		c, resp, err := dialWS(ts.addr, path, header)
		if wantStatus == 101 {
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			c.conn.Close()
			return
		}
		if err == nil || resp == nil || resp.StatusCode != wantStatus {
			t.Fatalf("%s: want %d, got %v %v", name, wantStatus, resp, err)
		}
		var body map[string]map[string]string
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body["error"]["code"] != "unauthorized" {
			t.Fatalf("%s: body %v %v", name, body, err)
		}
	}
	f("valid", makeJWT(testSecret, "HS256", map[string]any{"sub": "u1", "exp": exp}), nil, 101)
	f("bearer", "", http.Header{"Authorization": {"Bearer " + makeJWT(testSecret, "HS256", map[string]any{"sub": "u1", "exp": exp})}}, 101)
	f("missing", "", nil, 401)
	f("expired", makeJWT(testSecret, "HS256", map[string]any{"sub": "u1", "exp": time.Now().Add(-time.Minute).Unix()}), nil, 401)
	f("bad signature", makeJWT([]byte("other"), "HS256", map[string]any{"sub": "u1", "exp": exp}), nil, 401)
	f("alg none", makeJWT(nil, "none", map[string]any{"sub": "u1", "exp": exp}), nil, 401)
	f("HS512", makeJWT(testSecret, "HS512", map[string]any{"sub": "u1", "exp": exp}), nil, 401)
	f("no exp", makeJWT(testSecret, "HS256", map[string]any{"sub": "u1"}), nil, 401)
	f("no sub", makeJWT(testSecret, "HS256", map[string]any{"exp": exp}), nil, 401)
	f("garbage", "a.b.c", nil, 401)
	if n := ts.metric(t, `tether_connections_rejected_total{reason="unauthorized"}`); n != 8 {
		t.Fatalf("rejections counted %v", n)
	}
}

func dialToken(t *testing.T, ts *testServer, claims map[string]any) *testClient {
	t.Helper()
	c, _, err := dialWS(ts.addr, "/ws?token="+makeJWT(testSecret, "HS256", claims), nil)
	if err != nil {
		t.Fatal(err)
	}
	c.t = t
	t.Cleanup(func() { c.conn.Close() })
	c.expect("welcome")
	return c
}

func TestAuthChannels(t *testing.T) {
	ts := startServer(t, Config{JWTSecret: testSecret})
	c := dialToken(t, ts, map[string]any{
		"sub": "42", "exp": time.Now().Add(time.Hour).Unix(),
		"channels": []string{"scores.*", "news"}, "publish": []string{"chat.*"},
	})
	f := func(op, channel, want string) {
		t.Helper()
		msg := map[string]any{"op": op, "channel": channel, "id": 1}
		if op == "publish" {
			msg["data"] = 1
		}
		c.send(msg)
		m := c.expect(want)
		if want == "error" && m["code"] != "forbidden" {
			t.Fatalf("%s %s: %v", op, channel, m)
		}
	}
	f("subscribe", "scores.m1", "subscribed")
	f("subscribe", "news", "subscribed")
	f("subscribe", "user.42", "subscribed")
	f("subscribe", "user.43", "error")
	f("subscribe", "newsroom", "error")
	f("subscribe", "admin", "error")
	f("publish", "chat.r1", "ack")
	f("publish", "scores.m1", "error")
}

func TestTokenExpiryCloses4001(t *testing.T) {
	ts := startServer(t, Config{JWTSecret: testSecret, PingInterval: time.Second})
	c := dialToken(t, ts, map[string]any{"sub": "1", "exp": time.Now().Add(1500 * time.Millisecond).Unix()})
	if code := c.expectClose(5 * time.Second); code != proto.CloseUnauthorized {
		t.Fatalf("close %d, want 4001", code)
	}
	eventually(t, 3*time.Second, func() bool {
		return ts.metric(t, `tether_disconnects_total{reason="token_expired"}`) == 1
	}, "token_expired counted")
}

func TestOrigins(t *testing.T) {
	f := func(allowed []string, origin string, want int) {
		t.Helper()
		ts := startServer(t, Config{AllowedOrigins: allowed})
		c, resp, err := dialWS(ts.addr, "/ws", http.Header{"Origin": {origin}})
		if want == 101 {
			if err != nil {
				t.Fatalf("%v %q: %v", allowed, origin, err)
			}
			c.conn.Close()
			return
		}
		if resp == nil || resp.StatusCode != want {
			t.Fatalf("%v %q: want %d, got %v", allowed, origin, want, err)
		}
	}
	f(nil, "http://evil.example", 403)
	f([]string{"https://app.example"}, "https://app.example", 101)
	f([]string{"https://app.example"}, "https://evil.example", 403)
	f([]string{"*"}, "https://anything.example", 101)
}

func TestGlob(t *testing.T) {
	for _, c := range []struct {
		p, s string
		ok   bool
	}{
		{"scores.*", "scores.m1", true}, {"scores.*", "scores.m1.live", true}, {"scores.*", "scores", false},
		{"*", "", true}, {"a?c", "abc", true}, {"a?c", "ac", false}, {"user.*.feed", "user.1.feed", true},
		{"exact", "exact", true}, {"exact", "exactly", false}, {strings.Repeat("*a", 20), strings.Repeat("a", 30) + "b", false},
	} {
		if got := globMatch(c.p, c.s); got != c.ok {
			t.Errorf("globMatch(%q, %q) = %v", c.p, c.s, got)
		}
	}
}

// TestParseTokenRefuses checks the token rules that are not signature
// checks: a string exp (or nbf, iat), a token over maxTokenLen, a missing
// sub, a missing exp.
func TestParseTokenRefuses(t *testing.T) {
	now := time.Now()
	exp := now.Add(time.Hour).Unix()
	for _, tc := range []struct {
		name   string
		token  string
		accept bool
	}{
		{"valid", makeJWT(testSecret, "HS256", map[string]any{"sub": "u", "exp": exp}), true},
		{"exp as a string", makeJWT(testSecret, "HS256", map[string]any{"sub": "u", "exp": strconv.FormatInt(exp, 10)}), false},
		{"nbf as a string", makeJWT(testSecret, "HS256", map[string]any{"sub": "u", "exp": exp, "nbf": "1"}), false},
		{"iat as a string", makeJWT(testSecret, "HS256", map[string]any{"sub": "u", "exp": exp, "iat": "1"}), false},
		{"no exp", makeJWT(testSecret, "HS256", map[string]any{"sub": "u"}), false},
		{"no sub", makeJWT(testSecret, "HS256", map[string]any{"exp": exp}), false},
		{"alg none", makeJWT(testSecret, "none", map[string]any{"sub": "u", "exp": exp}), false},
		{"over 8 KiB", makeJWT(testSecret, "HS256", map[string]any{"sub": "u", "exp": exp, "pad": strings.Repeat("x", maxTokenLen)}), false},
	} {
		_, err := parseToken(testSecret, tc.token, now)
		if (err == nil) != tc.accept {
			t.Errorf("%s: err = %v, accepted = %v, want accepted = %v", tc.name, err, err == nil, tc.accept)
		}
	}
}

// FuzzParseToken feeds arbitrary claims, signed with the right secret, to
// parseToken: no panic, and an accepted token has a sub and an expiry in
// the future.
func FuzzParseToken(f *testing.F) {
	f.Add([]byte(`{"sub":"u","exp":9999999999,"channels":["a.*"],"publish":["b"]}`))
	f.Add([]byte(`{"sub":"u","exp":"9999999999"}`))
	f.Add([]byte(`{"sub":"","exp":1}`))
	f.Add([]byte(`{"sub":"u","exp":9999999999,"nbf":-1,"iat":1e3}`))
	f.Add([]byte(`[]`))
	now := time.Unix(1_800_000_000, 0)
	f.Fuzz(func(t *testing.T, payload []byte) {
		enc := base64.RawURLEncoding
		head := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc.EncodeToString(payload)
		mac := hmac.New(sha256.New, testSecret)
		mac.Write([]byte(head))
		c, err := parseToken(testSecret, head+"."+enc.EncodeToString(mac.Sum(nil)), now)
		if err != nil {
			return
		}
		if c.sub == "" || !c.expiry.After(now) {
			t.Fatalf("accepted claims %+v from %q", c, payload)
		}
	})
}

// TestUpgradeTokenQueryWins checks the documented precedence: a token in
// the query is used even when an Authorization header carries another.
func TestUpgradeTokenQueryWins(t *testing.T) {
	exp := time.Now().Add(time.Hour).Unix()
	good := makeJWT(testSecret, "HS256", map[string]any{"sub": "u", "exp": exp})
	bad := makeJWT([]byte("other"), "HS256", map[string]any{"sub": "u", "exp": exp})
	head, _, err := parseRequestHead([]byte("GET /ws?token="+good+" HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer "+bad+"\r\n\r\n"), 16<<10)
	if err != nil {
		t.Fatal(err)
	}
	if got := tokenFromHead(&head); got != good {
		t.Fatalf("token = %q, want the query's", got)
	}
}

// FuzzQueryGet checks queryGet against net/url: the token an upgrade
// reads from its query is the one url.Values.Get would read.
func FuzzQueryGet(f *testing.F) {
	for _, q := range []string{"token=a.b.c", "x=1&token=t%2Bu&token=2", "tok%65n=v", "token=a;b&token=c", "token=%zz&token=ok", "token&token=", "+token=1&token+=2", "token=a+b"} {
		f.Add(q)
	}
	f.Fuzz(func(t *testing.T, q string) {
		want, _ := url.ParseQuery(q)
		if got := queryGet(q, "token"); got != want.Get("token") {
			t.Fatalf("queryGet(%q) = %q, net/url reads %q", q, got, want.Get("token"))
		}
	})
}
