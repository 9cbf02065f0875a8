package client_test

import (
	"bytes"
	"context"
	"image/png"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"tether/bus"
	"tether/client"
	"tether/internal/testutil"
	"tether/server"
)

// adminState is what the admin page shows, read from its DOM.
type adminState struct {
	Loaded   bool       `json:"loaded"`
	Search   string     `json:"search"`
	Status   string     `json:"status"`
	Nodes    [][]string `json:"nodes"`    // the cells of each row of the nodes table
	Channels [][]string `json:"channels"` // channel, subscribers
	Lines    []int      `json:"lines"`    // points of each polyline of the deliveries chart
	Conns    []int      `json:"conns"`    // points of each polyline of the connections chart
	External int        `json:"external"` // resources loaded from another origin
}

const adminStateJS = `
const rows = (sel) => [...document.querySelectorAll(sel + " tbody tr")].map((tr) => [...tr.cells].map((td) => td.textContent));
const points = (id) => [...document.querySelectorAll("#" + id + " polyline")].map((p) => p.getAttribute("points").trim().split(/\s+/).filter(Boolean).length);
return {
	loaded: document.body.getAttribute("data-loaded") === "1",
	search: location.search,
	status: document.getElementById("status").textContent,
	nodes: rows("#nodes"),
	channels: rows("#channels"),
	lines: points("deliveries"),
	conns: points("conns"),
	external: performance.getEntriesByType("resource").filter((r) => !r.name.startsWith(location.origin)).length,
};`

// TestBrowserAdmin loads /admin with the API key from one of three nodes
// on a real Redis in headless Chromium: the page lists every node with its
// connections, draws a line per node in both inline SVG charts, shows the
// busiest channels, follows changes without a reload, and names a node
// that does not answer. With -update-screenshot it writes docs/admin.png.
func TestBrowserAdmin(t *testing.T) {
	browserTools(t)
	testutil.CheckGoroutines(t)
	wd := startBrowser(t)
	r := testutil.StartRedis(t)
	const key = "admin-test-key"
	var nodes []*server.Server
	for _, id := range []string{"node-a", "node-b", "node-c"} {
		b, err := bus.NewRedis(context.Background(), bus.RedisConfig{URL: r.URL(), Config: bus.Config{HistorySize: 100}}, testLogger(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		nodes = append(nodes, startServer(t, server.Config{NodeID: id, APIKey: key}, b))
	}
	// 3, 2 and 1 connections; scores.m1 has 4 subscribers, chat.lobby 2.
	subscribe := func(n *server.Server, channels ...string) {
		c := dial(t, wsURL(n), client.Options{})
		for _, ch := range channels {
			if _, err := c.Subscribe(ch, func(client.Message) {}); err != nil {
				t.Fatal(err)
			}
		}
	}
	subscribe(nodes[0], "scores.m1", "chat.lobby")
	subscribe(nodes[0], "scores.m1")
	subscribe(nodes[0], "news")
	subscribe(nodes[1], "scores.m1", "chat.lobby")
	subscribe(nodes[1])
	subscribe(nodes[2], "scores.m1")

	// Deliveries for the charts, until the test ends.
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			body := `{"channel":"scores.m1","data":{"n":` + strconv.Itoa(i) + `}}`
			req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+nodes[i%3].Addr().String()+"/api/publish", strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+key)
			if resp, err := httpClient.Do(req); err == nil {
				resp.Body.Close()
			}
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { stop(); wg.Wait() })

	wd.must(t, "POST", "/window/rect", map[string]int{"width": 1100, "height": 900}, nil)
	t.Cleanup(func() { wd.call("POST", "/window/rect", map[string]int{"width": 800, "height": 840}, nil) })
	wd.navigate(t, "http://"+nodes[1].Addr().String()+"/admin?key="+key)
	t.Cleanup(func() { wd.call("POST", "/url", map[string]string{"url": "about:blank"}, nil) })
	var st adminState
	read := func() adminState {
		var s adminState
		wd.exec(t, &s, adminStateJS)
		return s
	}
	// The nodes, the asking one first; a line per node once each node has
	// taken two samples (every 5 s).
	testutil.Eventually(t, 20*time.Second, func() bool {
		st = read()
		return st.Loaded && len(st.Nodes) == 3 && len(st.Lines) == 3 && minOf(st.Lines) >= 2 && minOf(st.Conns) >= 2
	}, "the admin page to show 3 nodes with 2 samples each")
	for i, want := range [][2]string{{"node-b", "2"}, {"node-a", "3"}, {"node-c", "1"}} {
		row := st.Nodes[i]
		if row[0] != want[0] || row[3] != want[1] || row[6] != "healthy" {
			t.Fatalf("nodes row %d: %q, want %s with %s connections, bus healthy", i, row, want[0], want[1])
		}
	}
	if len(st.Channels) < 2 || strings.Join(st.Channels[0], " ") != "scores.m1 4" || strings.Join(st.Channels[1], " ") != "chat.lobby 2" {
		t.Fatalf("busiest channels: %q, want scores.m1 4, chat.lobby 2 first", st.Channels)
	}
	if st.Search != "" || st.External != 0 || !strings.Contains(st.Status, "3 node(s)") {
		t.Fatalf("the key left in the address (%q), %d external resources, status %q", st.Search, st.External, st.Status)
	}

	// Live: a new busiest channel and new connections show up without a
	// reload.
	for range 5 {
		subscribe(nodes[2], "match.final")
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		st = read()
		return len(st.Channels) > 0 && strings.Join(st.Channels[0], " ") == "match.final 5" && len(st.Nodes) == 3 && st.Nodes[2][3] == "6"
	}, "the page to show match.final on top and node-c with 6 connections")
	t.Logf("admin page: nodes %q; busiest channels %q; chart points %v", st.Nodes, st.Channels, st.Lines)

	if *updateScreenshot {
		// Charts worth a picture: a minute of samples.
		testutil.Eventually(t, 2*time.Minute, func() bool { return minOf(read().Lines) >= 12 }, "12 samples per node")
	}
	img := wd.screenshot(t)
	if _, err := png.Decode(bytes.NewReader(img)); err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if *updateScreenshot {
		dst, _ := filepath.Abs("../docs/admin.png")
		if err := os.WriteFile(dst, img, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// A node that does not answer (registered, with no process behind it)
	// is named on the page, which keeps refreshing.
	r.Do(t, "ZADD", "tether:{ctl}:nodes", time.Now().UnixMilli(), "node-ghost")
	testutil.Eventually(t, 15*time.Second, func() bool {
		st = read()
		return strings.HasPrefix(st.Status, "partial: no answer from node-ghost") && len(st.Nodes) == 4 &&
			st.Nodes[3][0] == "node-ghost" && st.Nodes[3][1] == "no answer"
	}, "the page to name node-ghost as not answering")
}

func minOf(v []int) int {
	m := 0
	for i, x := range v {
		if i == 0 || x < m {
			m = x
		}
	}
	return m
}
