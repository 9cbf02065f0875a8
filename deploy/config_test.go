package deploy_test

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"tether/internal/proto"
	"tether/internal/testutil"
	"tether/internal/wstest"
)

// stockNrOpen is fs.nr_open on a stock Linux kernel: the most descriptors
// one process may be allowed.
const stockNrOpen = 1 << 20

// TestHAProxyFitsAStockHost checks that the shipped maxconn needs no more
// descriptors than a stock kernel allows one process: haproxy started with
// the shipped global section either starts, or (where the test may not
// raise its limit) says how many descriptors it wanted.
func TestHAProxyFitsAStockHost(t *testing.T) {
	t.Parallel()
	cfg := shipped(t, "haproxy.cfg",
		edit{"    bind :80\n", "    bind 127.0.0.1:" + strconv.Itoa(testutil.FreePort(t)) + "\n"})
	dir := t.TempDir()
	path := dir + "/haproxy.cfg"
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := "/usr/sbin/haproxy"
	if p, err := exec.LookPath("haproxy"); err == nil {
		bin = p
	} else if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("haproxy not found on PATH or in /usr/sbin")
		}
		t.Skip("haproxy not found on PATH or in /usr/sbin: install it (Debian: apt-get install haproxy) to run this test")
	}
	// haproxy refuses at once when it cannot raise its limit; 10s leaves
	// room for a busy machine before "it started" is concluded.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, bin, "-db", "-f", path).CombinedOutput()
	if ctx.Err() != nil {
		t.Logf("haproxy started with the shipped maxconn (the test may raise its descriptor limit)")
		return
	}
	m := regexp.MustCompile(`Cannot raise FD limit to (\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("haproxy exited without saying why:\n%s", out)
	}
	want, _ := strconv.Atoi(string(m[1]))
	t.Logf("haproxy wants %d descriptors for the shipped maxconn (stock fs.nr_open: %d)", want, stockNrOpen)
	if want > stockNrOpen {
		t.Fatalf("the shipped maxconn needs %d descriptors, more than a stock host allows one process (%d)", want, stockNrOpen)
	}
}

// TestPublicEdge checks, through each shipped config in front of a node
// that serves everything on its public port (no --api-listen): a browser
// on a page at the load balancer's non-default port can upgrade (the Host
// the node sees keeps the port), a foreign Origin cannot, and neither the
// API nor the metrics are forwarded.
func TestPublicEdge(t *testing.T) {
	t.Parallel()
	for _, lb := range lbKinds {
		t.Run(lb.name, func(t *testing.T) {
			t.Parallel()
			n := startPublicNode(t)
			l := lb.start(t, nil, n)

			origin := http.Header{"Origin": {"http://" + l.Addr()}}
			c, resp, err := wstest.Dial(l.Addr(), "/ws", origin)
			if err != nil {
				t.Fatalf("same-origin upgrade on port %s: %v %v\n%s", l.Addr(), resp, err, l.Output())
			}
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, p, err := c.ReadFrame(); err != nil || !strings.Contains(string(p), `"op":"`+proto.OpWelcome+`"`) {
				t.Fatalf("no welcome after a same-origin upgrade: %q %v", p, err)
			}
			c.Close()

			_, resp, err = wstest.Dial(l.Addr(), "/ws", http.Header{"Origin": {"http://evil.example"}})
			if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
				t.Fatalf("foreign origin: %v %v, want 403", resp, err)
			}

			if code, _ := get(t, "http://"+n.addr+"/metrics"); code != 200 {
				t.Fatalf("the node itself does not serve /metrics (%d): the checks below prove nothing", code)
			}
			for _, path := range []string{"/metrics", "/metrics?x=1", "/api/publish", "/%61pi/publish", "/api/"} {
				code, body := get(t, "http://"+l.Addr()+path)
				if code != http.StatusNotFound || strings.Contains(body, "tether_") {
					t.Errorf("GET %s through %s: %d %.80q, want 404", path, lb.name, code, body)
				}
			}
			resp, err = http.Post("http://"+l.Addr()+"/api/publish", "application/json",
				strings.NewReader(`{"channel":"c","data":1}`))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusNotFound {
				t.Errorf("POST /api/publish through %s: %d, want 404", lb.name, resp.StatusCode)
			}
		})
	}
}

func get(t testing.TB, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
