package deploy_test

import (
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"tether/bus"
	"tether/internal/testutil"
)

// clusterAnswer is the part of a cluster-wide API answer every command
// has (docs/api.md, "Partial answers").
type clusterAnswer struct {
	Partial bool              `json:"partial"`
	Missing []string          `json:"missing"`
	Nodes   []json.RawMessage `json:"nodes"`
	Error   *struct {
		Code string `json:"code"`
	} `json:"error"`
}

// ask makes a cluster-wide API request to n and returns its status, its
// answer and how long it took; the client gives up after 30 s, which
// fails the test: the answer must come within --cluster-timeout.
func (n *node) ask(method, path, body string) (int, clusterAnswer, time.Duration) {
	n.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, "http://"+n.api+path, rd)
	start := time.Now()
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		n.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	took := time.Since(start)
	var a clusterAnswer
	if err := json.Unmarshal(raw, &a); err != nil {
		n.t.Fatalf("%s %s answered %d with non-JSON %q", method, path, resp.StatusCode, raw)
	}
	return resp.StatusCode, a, took
}

// TestClusterAPINodePaused pauses one of three tether processes with
// SIGSTOP: every cluster-wide command still answers, after
// --cluster-timeout, naming the paused node as missing; past bus.NodeTTL
// the node is no longer expected; once it is resumed, it answers again.
func TestClusterAPINodePaused(t *testing.T) {
	r := testutil.StartRedis(t)
	const timeout = 500 * time.Millisecond
	args := []string{"--redis", r.URL(), "--cluster-timeout", timeout.String()}
	a := startNode(t, append(args, "--node-id", "node-a")...)
	startNode(t, append(args, "--node-id", "node-b")...)
	c := startNode(t, append(args, "--node-id", "node-c")...)
	testutil.Eventually(t, 10*time.Second, func() bool {
		code, ans, _ := a.ask("GET", "/api/info", "")
		return code == 200 && !ans.Partial && len(ans.Nodes) == 3
	}, "node-a's /api/info to list the 3 nodes")

	c.signal(syscall.SIGSTOP, false)
	paused := time.Now()
	t.Cleanup(func() { c.signal(syscall.SIGCONT, false) }) // before startNode's kill
	for _, q := range []struct{ method, path, body string }{
		{"GET", "/api/info", ""},
		{"GET", "/api/channels?pattern=*", ""},
		{"POST", "/api/disconnect", `{"user":"alice"}`},
		{"POST", "/api/subscribe", `{"user":"alice","channel":"news.1"}`},
		{"POST", "/api/unsubscribe", `{"user":"alice","channel":"news.1"}`},
		{"GET", "/admin/data", ""},
	} {
		code, ans, took := a.ask(q.method, q.path, q.body)
		t.Logf("%s %s with node-c paused: %d partial=%v missing=%v after %v (--cluster-timeout %v)",
			q.method, q.path, code, ans.Partial, ans.Missing, took.Round(time.Millisecond), timeout)
		// A user found on no node that answered may be on the missing
		// one: 200 and partial, not 404.
		if code != 200 || !ans.Partial || !slices.Equal(ans.Missing, []string{"node-c"}) {
			t.Fatalf("%s %s with node-c paused: %d %+v, want 200, partial, missing [node-c]", q.method, q.path, code, ans)
		}
		if took < timeout {
			t.Fatalf("%s %s answered partial after %v, before --cluster-timeout %v", q.method, q.path, took, timeout)
		}
	}
	if code, ans, _ := a.ask("GET", "/api/info", ""); code != 200 || len(ans.Nodes) != 2 {
		t.Fatalf("info with node-c paused: %d %+v, want the 2 answering nodes", code, ans)
	}
	if n := a.metric(`tether_api_commands_total{command="info",outcome="partial"}`); n < 2 {
		t.Errorf("partial info answers counted: %v, want at least 2", n)
	}

	// Silent past bus.NodeTTL, the paused node is taken as gone: answers
	// are whole again, from the two nodes that answer, without waiting.
	testutil.Eventually(t, bus.NodeTTL+10*time.Second, func() bool {
		code, ans, _ := a.ask("GET", "/api/info", "")
		return code == 200 && !ans.Partial && len(ans.Nodes) == 2
	}, "node-c forgotten after bus.NodeTTL")
	t.Logf("node-c no longer expected %v after the pause (bus.NodeTTL %v)", time.Since(paused).Round(100*time.Millisecond), bus.NodeTTL)

	c.signal(syscall.SIGCONT, false)
	testutil.Eventually(t, 10*time.Second, func() bool {
		code, ans, _ := a.ask("GET", "/api/info", "")
		return code == 200 && !ans.Partial && len(ans.Nodes) == 3
	}, "whole answers once node-c is resumed")
}
