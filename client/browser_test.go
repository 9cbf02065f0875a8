package client_test

// Browser tests: headless Chromium, driven through chromedriver's W3C
// WebDriver HTTP API, loads the demo page from a real tether node. They
// skip without chromium and chromedriver, and fail instead when CI=true.

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"image/png"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"tether/client"
	"tether/internal/testutil"
	"tether/server"
)

var updateScreenshot = flag.Bool("update-screenshot", false, "write the demo page's screenshot to ../docs/demo.png")

// browserTools returns the paths of chromium and chromedriver, or skips the
// test (fails it when CI=true) when either is missing.
func browserTools(t testing.TB) (chromium, driver string) {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			chromium = p
			break
		}
	}
	driver, _ = exec.LookPath("chromedriver")
	if chromium == "" || driver == "" {
		skipOrFail(t, "chromium and chromedriver are needed for browser tests (Debian: apt-get install chromium chromium-driver)")
	}
	return chromium, driver
}

// webDriver is a minimal W3C WebDriver client for one chromedriver session.
type webDriver struct {
	base    string // http://127.0.0.1:port/session/<id>
	httpc   *http.Client
	process *exec.Cmd
}

// startBrowser starts chromedriver and a headless Chromium session; both
// end with the test.
func startBrowser(t testing.TB) *webDriver {
	t.Helper()
	chromium, driverPath := browserTools(t)
	port := testutil.FreePort(t)
	cmd := exec.Command(driverPath, "--port="+strconv.Itoa(port), "--allowed-ips=127.0.0.1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if testing.Verbose() {
		cmd.Stderr = tWriter{t}
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	wd := &webDriver{
		base:    fmt.Sprintf("http://127.0.0.1:%d", port),
		httpc:   &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}},
		process: cmd,
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() {
			cmd.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	testutil.Eventually(t, 10*time.Second, func() bool {
		var st struct {
			Ready bool `json:"ready"`
		}
		return wd.call("GET", "/status", nil, &st) == nil && st.Ready
	}, "chromedriver to start")

	profile := t.TempDir()
	caps := map[string]any{"capabilities": map[string]any{"alwaysMatch": map[string]any{
		"browserName": "chrome",
		"goog:chromeOptions": map[string]any{
			"binary": chromium,
			"args": []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
				"--disable-background-networking", "--disable-component-update", "--disable-sync",
				"--disable-dev-shm-usage", "--user-data-dir=" + profile, "--window-size=800,840",
				// The wss subtest's node has a certificate from a CA made
				// for the test, which this profile cannot be told to trust.
				"--ignore-certificate-errors"},
		},
	}}}
	var sess struct {
		SessionID string `json:"sessionId"`
	}
	if err := wd.call("POST", "/session", caps, &sess); err != nil {
		t.Fatalf("cannot start chromium: %v", err)
	}
	wd.base += "/session/" + sess.SessionID
	t.Cleanup(func() { wd.call("DELETE", "", nil, nil) })
	return wd
}

// call makes one WebDriver request and decodes the response's value into
// out.
func (wd *webDriver) call(method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, wd.base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := wd.httpc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var r struct {
		Value json.RawMessage `json:"value"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return fmt.Errorf("cannot decode webdriver response to %s %s: %w", method, path, err)
	}
	if resp.StatusCode != 200 {
		return fmt.Errorf("webdriver %s %s: HTTP %d: %.500s", method, path, resp.StatusCode, r.Value)
	}
	if out != nil {
		return json.Unmarshal(r.Value, out)
	}
	return nil
}

func (wd *webDriver) must(t testing.TB, method, path string, body, out any) {
	t.Helper()
	if err := wd.call(method, path, body, out); err != nil {
		t.Fatal(err)
	}
}

func (wd *webDriver) navigate(t testing.TB, url string) {
	t.Helper()
	wd.must(t, "POST", "/url", map[string]string{"url": url}, nil)
}

// exec runs script in the page and decodes its return value into out.
func (wd *webDriver) exec(t testing.TB, out any, script string, args ...any) {
	t.Helper()
	if args == nil {
		args = []any{}
	}
	wd.must(t, "POST", "/execute/sync", map[string]any{"script": script, "args": args}, out)
}

// execAsync runs script, which must call its last argument when done.
func (wd *webDriver) execAsync(t testing.TB, out any, script string, args ...any) {
	t.Helper()
	if args == nil {
		args = []any{}
	}
	wd.must(t, "POST", "/execute/async", map[string]any{"script": script, "args": args}, out)
}

// element returns the WebDriver id of the element matching css.
func (wd *webDriver) element(t testing.TB, css string) string {
	t.Helper()
	var el map[string]string
	wd.must(t, "POST", "/element", map[string]string{"using": "css selector", "value": css}, &el)
	for _, id := range el {
		return id
	}
	t.Fatalf("no element %s", css)
	return ""
}

func (wd *webDriver) typeInto(t testing.TB, css, text string) {
	t.Helper()
	id := wd.element(t, css)
	wd.must(t, "POST", "/element/"+id+"/clear", map[string]any{}, nil)
	wd.must(t, "POST", "/element/"+id+"/value", map[string]string{"text": text}, nil)
}

func (wd *webDriver) click(t testing.TB, css string) {
	t.Helper()
	wd.must(t, "POST", "/element/"+wd.element(t, css)+"/click", map[string]any{}, nil)
}

func (wd *webDriver) text(t testing.TB, css string) string {
	t.Helper()
	var s string
	wd.must(t, "GET", "/element/"+wd.element(t, css)+"/text", nil, &s)
	return s
}

func (wd *webDriver) screenshot(t testing.TB) []byte {
	t.Helper()
	var b64 string
	wd.must(t, "GET", "/screenshot", nil, &b64)
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// browserDriver runs the harness in the page loaded from hostport.
type browserDriver struct{ wd *webDriver }

func (d browserDriver) snapshot(t testing.TB) jsState {
	t.Helper()
	var s jsState
	d.wd.exec(t, &s, `return window.__harness.snapshot(window.__state);`)
	return s
}

// startInBrowser loads the demo page from hostport (so the page, the
// library and the WebSocket all take that path) and starts the harness in
// it.
func startInBrowser(wd *webDriver) startJS {
	return func(t *testing.T, hostport, channel string, opts map[string]any) jsDriver {
		wd.navigate(t, "http://"+hostport+"/")
		var ok bool
		wd.execAsync(t, &ok, `
			const [channel, opts, done] = arguments;
			import("/testdata/harness.mjs").then((h) => {
				window.__harness = h;
				window.__state = h.start("/ws", channel, opts);
				done(true);
			}, (err) => done(String(err)));`, channel, opts)
		if !ok {
			t.Fatal("cannot start the harness in the page")
		}
		t.Cleanup(func() {
			// Leave the page so that its connection closes with the test.
			wd.call("POST", "/url", map[string]string{"url": "about:blank"}, nil)
		})
		return browserDriver{wd}
	}
}

func TestBrowser(t *testing.T) {
	browserTools(t)
	testutil.CheckGoroutines(t)
	wd := startBrowser(t)
	t.Run("demo", func(t *testing.T) { browserDemo(t, wd) })
	t.Run("recovery", func(t *testing.T) { jsRecoveryScenario(t, startInBrowser(wd)) })
	t.Run("watchdog", func(t *testing.T) { jsWatchdogScenario(t, startInBrowser(wd)) })
	t.Run("token", func(t *testing.T) { jsTokenScenario(t, startInBrowser(wd)) })
	t.Run("refresh", func(t *testing.T) { jsRefreshScenario(t, startInBrowser(wd)) })
	t.Run("server-subs", func(t *testing.T) { jsServerSubsScenario(t, startInBrowser(wd)) })
	t.Run("idempotent", func(t *testing.T) { jsIdempotentScenario(t, startInBrowser(wd)) })
	t.Run("wss", func(t *testing.T) { browserTLS(t, wd) })
}

// browserTLS loads the demo page over https from a node with --tls-cert:
// the page connects with wss:// and receives what the Go client publishes
// over wss:// too.
func browserTLS(t *testing.T, wd *webDriver) {
	ca := testutil.NewCA(t)
	srv := startServer(t, server.Config{NodeID: "node-tls", TLSCert: ca.CertFile, TLSKey: ca.KeyFile}, newBus(t))
	wd.navigate(t, "https://"+srv.Addr().String()+"/")
	testutil.Eventually(t, 10*time.Second, func() bool { return wd.text(t, "#state") == "connected" }, "demo page to connect over wss")
	wd.typeInto(t, "#channel", "tls.m1")
	wd.click(t, "#sub-btn")
	testutil.Eventually(t, 5*time.Second, func() bool { return wd.text(t, "#sub-info") == "Subscribed to tls.m1." }, "subscription")
	pub := dial(t, "wss://"+srv.Addr().String()+"/ws", client.Options{TLSConfig: &tls.Config{RootCAs: ca.Pool}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := pub.Publish(ctx, "tls.m1", json.RawMessage(`{"over":"wss"}`)); err == nil {
		t.Fatal("an open node without --allow-client-publish accepted a client publish")
	}
	resp, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool}}}).Post(
		"https://"+srv.Addr().String()+"/api/publish", "application/json", strings.NewReader(`{"channel":"tls.m1","data":{"over":"wss"}}`))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("publish over https: %v %v", resp, err)
	}
	resp.Body.Close()
	testutil.Eventually(t, 5*time.Second, func() bool { return wd.text(t, "#count") == "1" }, "the message on the page")

	// Chromium's connections (the page, wss) and Go's ran on the node's
	// own TLS 1.3 record layer; none fell back to crypto/tls's.
	resp, err = (&http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool}}}).Get("https://" + srv.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, line := range strings.Split(string(metrics), "\n") {
		if strings.HasPrefix(line, `tether_tls_record_layer_total{mode="fallback"} `) && !strings.HasSuffix(line, " 0") ||
			strings.HasPrefix(line, `tether_tls_record_layer_total{mode="crypto_tls"} `) && !strings.HasSuffix(line, " 0") {
			t.Fatalf("a TLS connection did not use the own record layer: %s", line)
		}
	}
	if !strings.Contains(string(metrics), `tether_tls_record_layer_total{mode="own"} `) ||
		strings.Contains(string(metrics), `tether_tls_record_layer_total{mode="own"} 0`+"\n") {
		t.Fatal("no TLS connection used the own record layer")
	}
}

// readmeFirstMinute returns the two steps of the README's quick start: the
// path of the page it says to open and the curl that publishes, as the
// request path and body, so that the test checks what the README says.
func readmeFirstMinute(t testing.TB) (page, apiPath, body string) {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	open := regexp.MustCompile(`open <http://localhost:8080(/[^>]*)>`).FindSubmatch(b)
	curl := regexp.MustCompile(`(?m)^curl -d '([^']*)' localhost:8080(/\S*)$`).FindSubmatch(b)
	if open == nil || curl == nil {
		t.Fatal("README.md no longer says to open http://localhost:8080/… and curl -d '…' localhost:8080/api/…")
	}
	return string(open[1]), string(curl[2]), string(curl[1])
}

// browserDemo uses the demo page as a person would. First the README's
// first minute, exactly: open the page, run the README's curl (as the same
// POST), see the message. Then it watches the "N online" badge and a join
// as a second client subscribes, sees messages published elsewhere,
// publishes from the page, and takes the screenshot for docs/demo.png.
func browserDemo(t *testing.T, wd *webDriver) {
	srv := startServer(t, server.Config{AllowClientPublish: true, NodeID: "node-a", JoinLeave: []string{"scores.*"}}, newBus(t))
	page, apiPath, body := readmeFirstMinute(t)
	wd.navigate(t, "http://"+srv.Addr().String()+page)
	testutil.Eventually(t, 10*time.Second, func() bool { return wd.text(t, "#state") == "connected" }, "demo page to connect")
	if node := wd.text(t, "#node"); node != "node-a" {
		t.Fatalf("page shows node %q", node)
	}
	var channel struct {
		Channel string `json:"channel"`
	}
	if err := json.Unmarshal([]byte(body), &channel); err != nil {
		t.Fatalf("the README's curl body %s: %v", body, err)
	}
	// The page says so once the server has confirmed the subscription.
	want := "Subscribed to " + channel.Channel + "."
	testutil.Eventually(t, 5*time.Second, func() bool { return wd.text(t, "#sub-info") == want }, want)
	resp, err := http.Post("http://"+srv.Addr().String()+apiPath, "application/x-www-form-urlencoded", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	reply, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("the README's curl: HTTP %d %s", resp.StatusCode, reply)
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return wd.text(t, "#count") == "1" }, "the README's message on the page")
	var sent struct {
		Data json.RawMessage `json:"data"`
	}
	json.Unmarshal([]byte(body), &sent)
	if got := wd.text(t, "#messages li:first-child .data"); got != string(sent.Data) {
		t.Fatalf("page shows %q, the README published %s", got, sent.Data)
	}

	// Presence: the badge counts the page, then the page and a Go client,
	// whose join the page logs.
	testutil.Eventually(t, 5*time.Second, func() bool { return wd.text(t, "#online") == "1 online" }, "1 online")
	pub := dial(t, wsURL(srv), client.Options{})
	if _, err := pub.Subscribe("scores.m1", func(client.Message) {}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return wd.text(t, "#online") == "2 online" }, "2 online after a join")
	if ev := wd.text(t, "#events li:first-child"); !strings.Contains(ev, "join") {
		t.Fatalf("newest event %q, want the join", ev)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, v := range []string{
		`{"home":"Lyon","away":"Nantes","score":"0-0","minute":1}`,
		`{"home":"Lyon","away":"Nantes","score":"1-0","minute":23}`,
		`{"home":"Lyon","away":"Nantes","score":"1-1","minute":58}`,
	} {
		if _, err := pub.Publish(ctx, "scores.m1", json.RawMessage(v)); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return wd.text(t, "#count") == "4" }, "four messages on the page")

	wd.typeInto(t, "#payload", `{"home":"Lyon","away":"Nantes","score":"2-1","minute":81}`)
	wd.click(t, "#pub-btn")
	testutil.Eventually(t, 5*time.Second, func() bool {
		return wd.text(t, "#pub-result") == "Stored in scores.m1 at offset 5." && wd.text(t, "#count") == "5"
	}, "publish from the page")
	if first := wd.text(t, "#messages li:first-child .data"); !strings.Contains(first, `"score":"2-1"`) {
		t.Fatalf("newest message shown: %q", first)
	}

	img := wd.screenshot(t)
	if _, err := png.Decode(bytes.NewReader(img)); err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	t.Logf("screenshot: %d bytes", len(img))
	if *updateScreenshot {
		dst, _ := filepath.Abs("../docs/demo.png")
		if err := os.WriteFile(dst, img, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
